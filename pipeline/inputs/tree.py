"""The input folder, local or remote: what discovery lists and what extraction reads.

``--input`` is a local folder or any Beam filesystem URL (``gs://``, ``s3://``,
``hdfs://``).  :class:`InputTree` gives discovery one view of either — entries of a folder,
file sizes and modification times, small files read whole — and gives extraction local
files: readers such as SimpleITK and pydicom need paths, so on a remote tree
:meth:`InputTree.local` copies a case's files into a temporary folder (and removes it
after), while a local tree is read in place.  Relative paths use ``/`` whatever the
filesystem; nothing outside the root is ever read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_module
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator

#: Files :meth:`InputTree.opened_ahead` keeps open ahead of the one being read.  Measured on
#: a 30K-image 224 px tree out of the page cache, read one file after another: 0.27 ms of
#: waiting per image (vs 0.07 ms of CPU), more than a third of a unit's time.
READ_AHEAD = 64
_FADVISE = hasattr(os, "posix_fadvise")


def is_remote(path: str) -> bool:
    return "://" in path


class InputTree:
    """A read-only view of an input root (local folder or filesystem URL)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if is_remote(root) else os.path.abspath(root)
        self.remote = is_remote(root)
        self._index: dict[str, tuple[int, int]] | None = None
        #: ``(size, mtime_ns)`` of the local files a ``walk_files(…, stat=True)`` listed
        self._stats: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ remote index
    def _files(self) -> dict[str, tuple[int, int]]:
        """``{relative path: (size, mtime_ns)}`` of every file below a remote root."""
        if self._index is None:
            # Beam's FileSystems: 1.3 s to import (measured); only remote trees use it
            from apache_beam.io.filesystems import FileSystems

            found = FileSystems.match([self.root + "/**"])[0].metadata_list
            prefix = self.root + "/"
            self._index = {
                m.path[len(prefix):]: (int(m.size_in_bytes), int((m.last_updated_in_seconds or 0) * 1e9))
                for m in found if m.path.startswith(prefix)}
        return self._index

    def _url(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel not in ("", ".") else self.root

    def path(self, rel: str) -> str:
        """The local path (local trees) or URL (remote trees) of ``rel``."""
        if self.remote:
            return self._url(rel)
        return os.path.join(self.root, rel) if rel not in ("", ".") else self.root

    # --------------------------------------------------------------------- listing
    def exists(self) -> bool:
        return bool(self._files()) if self.remote else os.path.isdir(self.root)

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly inside folder ``rel`` (files and folders), sorted."""
        if not self.remote:
            return sorted(os.listdir(self.path(rel)))
        prefix = "" if rel in ("", ".") else rel.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/", 1)[0] for p in self._files() if p.startswith(prefix)})

    def isdir(self, rel: str) -> bool:
        if not self.remote:
            return os.path.isdir(self.path(rel))
        prefix = rel.rstrip("/") + "/"
        return any(p.startswith(prefix) for p in self._files())

    def isfile(self, rel: str) -> bool:
        return rel in self._files() if self.remote else os.path.isfile(self.path(rel))

    def walk_files(self, rel: str = "", *, stat: bool = False) -> list[str]:
        """Every file at or below ``rel`` (relative to the root, sorted; dotfiles skipped).

        ``stat``: also remember each file's size and modification time for :meth:`stat` and
        :meth:`identity` (a local tree stats each file relative to its folder's descriptor,
        about a third cheaper than a stat of its path — a 750K-image tree's fingerprints);
        a remote tree's listing has them anyway."""
        if self.remote:
            if rel in self._files():
                return [rel]
            prefix = "" if rel in ("", ".") else rel.rstrip("/") + "/"
            return sorted(p for p in self._files() if p.startswith(prefix)
                          and not any(part.startswith(".") for part in p[len(prefix):].split("/")))
        base = self.path(rel)
        if os.path.isfile(base):
            return [rel]
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            folder = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            prefix = "" if folder == "." else folder + "/"
            names = sorted(name for name in filenames if not name.startswith("."))
            rels = [prefix + name for name in names]
            out += rels
            if stat and names:
                self._remember_stats(dirpath, names, rels)
        return out

    def _remember_stats(self, dirpath: str, names: list[str], rels: list[str]) -> None:
        """``(size, mtime_ns)`` of ``names`` in ``dirpath`` into the stat cache under their
        relative paths ``rels`` (the listing's own strings); files that cannot be stat'ed
        are left out (:meth:`stat` stats them again)."""
        fd = None
        if os.stat in os.supports_dir_fd:
            with contextlib.suppress(OSError):
                fd = os.open(dirpath, os.O_RDONLY)
        try:
            for name, rel in zip(names, rels):
                try:
                    st = (os.stat(name, dir_fd=fd) if fd is not None
                          else os.stat(os.path.join(dirpath, name)))
                except OSError:
                    continue
                if stat_module.S_ISREG(st.st_mode):
                    self._stats[rel] = (st.st_size, st.st_mtime_ns)
        finally:
            if fd is not None:
                os.close(fd)

    def stat(self, rel: str) -> tuple[int, int]:
        """``(size, mtime_ns)``; ``(-1, -1)`` for a missing file."""
        if self.remote:
            return self._files().get(rel, (-1, -1))
        if rel in self._stats:
            return self._stats[rel]
        try:
            st = os.stat(self.path(rel))
        except OSError:
            return -1, -1
        return st.st_size, st.st_mtime_ns

    def identity(self, rels: Iterable[str]) -> list[tuple[str, int, int]]:
        """``(relative path, size, mtime_ns)`` of every file at or below ``rels`` (sorted):
        cheap — no file is read — and what decides whether a stored extraction is valid."""
        out = []
        for rel in rels:
            if not self.remote:  # one stat for a file (a tree's image), a walk for a folder
                known = self._stats.get(rel)
                if known is not None:  # stat'ed when it was listed
                    out.append((rel, *known))
                    continue
                try:
                    st = os.stat(self.path(rel))
                except OSError:
                    out.append((rel, -1, -1))
                    continue
                if stat_module.S_ISREG(st.st_mode):
                    out.append((rel, st.st_size, st.st_mtime_ns))
                    continue
            files = self.walk_files(rel)
            if not files:
                out.append((rel, -1, -1))
            out += [(f, *self.stat(f)) for f in files]
        return sorted(set(out)) if len(out) > 1 else out

    # ---------------------------------------------------------------------- reading
    def read_bytes(self, rel: str) -> bytes:
        if self.remote:
            # Beam's FileSystems: 1.3 s to import (measured); only remote trees use it
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(self._url(rel)) as f:
                return f.read()
        with open(self.path(rel), "rb") as f:
            return f.read()

    def opened_ahead(self, rels: Iterable[str], ahead: int = READ_AHEAD) -> Iterator:
        """Each local file of ``rels`` opened (unbuffered binary; ``None`` when it cannot be
        opened), in order; the caller reads and closes it.  The files are opened ``ahead``
        of the one handed out and each asked of the kernel as it is opened
        (``posix_fadvise(WILLNEED)``): on a tree that is not in the page cache (a 750K-image
        tree is ~35 GB) the next files' reads overlap the caller's work on this one, rather
        than each read waiting for the disk in turn.  Files still open when the caller stops
        are closed."""
        window: deque = deque()
        try:
            for rel in rels:
                window.append(self._open_ahead(rel))
                if len(window) > ahead:
                    yield window.popleft()
            while window:
                yield window.popleft()
        finally:
            for f in window:
                if f is not None:
                    f.close()

    def _open_ahead(self, rel: str):
        try:
            f = open(self.path(rel), "rb", buffering=0)
        except OSError:
            return None
        if _FADVISE:
            try:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # a hint only
        return f

    @contextlib.contextmanager
    def local(self, rels: Iterable[str]) -> Iterator[str]:
        """A local root under which the files at or below ``rels`` are readable at their
        relative paths: the root itself for a local tree; a temporary copy (removed on
        exit) for a remote one."""
        if not self.remote:
            yield self.root
            return
        # Beam's FileSystems: 1.3 s to import (measured); only remote trees use it
        from apache_beam.io.filesystems import FileSystems

        tmp = tempfile.mkdtemp(prefix="radvqa-case-")
        try:
            for rel in rels:
                prefix = "" if rel in ("", ".") else rel.rstrip("/") + "/"
                found = FileSystems.match([self._url(rel), self._url(rel) + "/**"])
                paths = {m.path for result in found for m in result.metadata_list}
                for url in sorted(paths):
                    sub = url[len(self.root) + 1:]
                    if not (sub == rel or sub.startswith(prefix)):
                        continue
                    target = os.path.join(tmp, *sub.split("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with FileSystems.open(url) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
