"""An object store in this process's memory, registered as a Beam filesystem for
``radvqamem://`` paths: flat keys (no directories), an object exists once its upload is
closed, missing objects are errors — like GCS or S3.  Builds against it use the
in-process runner.  Used by the packaging (output) and input tests."""

from __future__ import annotations

import hashlib
import io
import threading
import time

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "radvqamem"
PREFIX = f"{SCHEME}://"


class _Upload(io.BytesIO):
    """A write channel: the object appears, whole, when it is closed."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self):
        if not self.closed:
            MemoryFileSystem.put(self._path, self.getvalue())
        super().close()


class MemoryFileSystem(FileSystem):
    """An object store in this process's memory, registered for ``radvqamem://``.

    Like GCS or S3: flat keys (no directories, ``mkdirs`` does nothing), an
    object exists once its upload is closed, missing objects are errors.  It
    lives in the test process, so builds against it use the in-process runner.
    """

    objects: dict[str, tuple[bytes, float]] = {}
    created: list[str] = []
    _lock = threading.Lock()

    @classmethod
    def scheme(cls):
        return SCHEME

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls.objects.clear()
            cls.created.clear()

    @classmethod
    def put(cls, path: str, data: bytes) -> None:
        with cls._lock:
            cls.objects[path] = (bytes(data), time.time())

    def _get(self, path: str) -> tuple[bytes, float]:
        with self._lock:
            if path not in self.objects:
                raise BeamIOError(f"{path}: no such object", {path: FileNotFoundError(path)})
            return self.objects[path]

    def join(self, basepath, *paths):
        if not basepath.startswith(PREFIX):
            raise ValueError(f"{basepath!r} is not a {PREFIX} path")
        path = basepath
        for p in paths:
            path = path + p if path.endswith("/") else f"{path}/{p}"
        return path

    def split(self, path):
        path = path.strip()
        if not path.startswith(PREFIX):
            raise ValueError(f"{path!r} is not a {PREFIX} path")
        head, sep, tail = path[len(PREFIX):].rpartition("/")
        return (PREFIX + head, tail) if sep else (path, "")

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        with self._lock:
            items = sorted(self.objects.items())
        for path, (data, mtime) in items:
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data), mtime)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        if FileSystem._get_compression_type(path, compression_type) != CompressionTypes.UNCOMPRESSED:
            raise NotImplementedError(f"{path}: compressed channels are not needed here")
        with self._lock:
            self.created.append(path)
        return _Upload(path)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        return io.BytesIO(self._get(path)[0])

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            self.put(dst, self._get(src)[0])

    def rename(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names):
            with self._lock:
                if src in self.objects:
                    self.objects[dst] = self.objects.pop(src)
                    continue
            errors[(src, dst)] = FileNotFoundError(src)
        if errors:
            raise BeamIOError("Rename operation failed", errors)

    def exists(self, path):
        with self._lock:
            return path in self.objects

    def size(self, path):
        return len(self._get(path)[0])

    def last_updated(self, path):
        return self._get(path)[1]

    def checksum(self, path):
        return hashlib.sha256(self._get(path)[0]).hexdigest()

    def metadata(self, path):
        data, mtime = self._get(path)
        return FileMetadata(path, len(data), mtime)

    def delete(self, paths):
        errors = {}
        for path in paths:
            with self._lock:
                if self.objects.pop(path, None) is not None:
                    continue
            errors[path] = FileNotFoundError(path)
        if errors:
            raise BeamIOError("Delete operation failed", errors)


def upload_folder(local, prefix: str) -> int:
    """Put every file below ``local`` (a pathlib.Path) under ``prefix`` (a radvqamem:// URL)."""
    n = 0
    for p in sorted(local.rglob("*")):
        if p.is_file():
            MemoryFileSystem.put(f"{prefix.rstrip('/')}/{p.relative_to(local).as_posix()}", p.read_bytes())
            n += 1
    return n
