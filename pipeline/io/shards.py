"""Deterministic Parquet shards and small files: local files directly, remote ones
through Beam's FileSystems.

Every file is written to a temporary name beside its final name, then renamed,
so a retried or killed worker never leaves a partial file under a final name;
``gs://``, ``s3://`` and ``hdfs://`` outputs work wherever Beam's filesystems
do.  The Parquet writer's options (codec per column, dictionary use, statistics,
row-group size, format and page versions) are declared once, in :data:`WRITER`; rows
are given sorted by key, and the bytes are hashed (a small local shard is written to its
file page by page by Arrow, then read back from the page cache and hashed; a large one,
an image shard, built in a reused buffer, hashed there and written around the page cache,
:data:`DIRECT_MIN_BYTES`; a remote one built in memory, then uploaded): the same rows
give the same file, byte for byte.  :func:`writer_digest` enters every case fingerprint
(``pipeline.launch.build``), so a build with other writer options
rewrites every shard instead of keeping old-format shards beside new ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
import shutil
import threading
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

try:  # POSIX: the O_DIRECT writer clears O_DIRECT for a shard's last partial block
    import fcntl
except ImportError:  # pragma: no cover - Windows: shards go through the page cache
    fcntl = None

from pipeline.schema import pyarrays
from pipeline.schema.records import FileReceipt

#: Every option of the Parquet writer, in one place.  Encoded images (the ``bytes`` of
#: the Hugging Face ``Image`` structs: PNG) are stored without a codec: PNG does not
#: shrink (zstd saved under 1 % of a 224 px shard) and ``datasets`` reads the bytes as
#: they are.  ``.npy`` arrays keep zstd: measured on the 3d-rad build, zstd stores them
#: 2.1-6.7x smaller.  No binary column gets a dictionary or min/max statistics (every
#: value is unique; statistics of image bytes are only footer weight).  Text, ids and
#: labels keep zstd and dictionaries.  ``question_images``: in a table of questions that
#: carry their image (a ``qa_id`` column beside an image: the tree's ``benchmark``, each
#: image asked up to nine times) the image bytes are dictionary-encoded, each distinct
#: image stored once per row group (the dictionary page may then hold a whole row group:
#: ``dictionary_pagesize_limit`` = ``row_group_bytes``).  Measured on the 10K tree's
#: benchmark (2,770 questions on 320 images): 130 MB -> 15 MB, 0.25 -> 0.02 s of CPU to
#: encode; pyarrow and ``datasets`` read the same column back.
WRITER = {
    "codec": "zstd",
    "codec_level": 3,
    "image_codec": "none",
    "dictionary": "non-binary",
    "question_images": "dictionary",
    "statistics": "non-binary",
    "row_group_bytes": 64 << 20,
    "version": "2.6",
    "data_page_version": "1.0",
}
TMP_MARK = ".tmp-"


def writer_digest(writer: dict | None = None) -> str:
    """The digest of the writer options (:data:`WRITER` unless given)."""
    return hashlib.sha256(json.dumps(WRITER if writer is None else writer,
                                     sort_keys=True).encode()).hexdigest()[:16]


def _leaves(fields, prefix=""):
    """``(dotted column path, arrow type)`` of every leaf column of a schema."""
    for f in fields:
        path = f"{prefix}{f.name}"
        if pa.types.is_struct(f.type):
            yield from _leaves(list(f.type), path + ".")
        else:
            yield path, f.type


def _is_binary(t) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_image(path: str, t) -> bool:
    """The ``bytes`` of an image struct (``{bytes, path}``, Hugging Face's ``Image``)."""
    return _is_binary(t) and path.endswith(".bytes")


def write_options(schema: pa.Schema, writer: dict | None = None) -> dict:
    """``pyarrow.parquet.write_table`` keyword arguments for ``schema`` under ``writer``."""
    w = WRITER if writer is None else writer
    leaves = list(_leaves(schema))
    binary = {p for p, t in leaves if _is_binary(t)}
    other = [p for p, _ in leaves if p not in binary]
    compression = {p: (w["image_codec"] if _is_image(p, t) else w["codec"]) for p, t in leaves}
    levels = {p: w["codec_level"] for p, c in compression.items() if c == "zstd"}

    def pick(rule):
        return {"all": True, "none": False, "non-binary": other}[rule]
    dictionary = pick(w["dictionary"])
    extra = {}
    if w.get("question_images") == "dictionary" and "qa_id" in schema.names and isinstance(dictionary, list):
        images = [p for p, t in leaves if _is_image(p, t)]
        if images:
            encoded = {*other, *images}
            dictionary = [p for p, _ in leaves if p in encoded]
            extra["dictionary_pagesize_limit"] = w["row_group_bytes"]
    return dict(compression=compression or w["codec"], compression_level=levels or None,
                use_dictionary=dictionary, write_statistics=pick(w["statistics"]),
                version=w["version"], data_page_version=w["data_page_version"], **extra)
TMP_MARK = ".tmp-"


def _filesystems():
    """Beam's ``FileSystems``, for remote outputs only.  Imported on first use:
    ``apache_beam.io.filesystems`` takes 1.0 s to import (measured), and a local build
    run without Beam (``radvqa regenerate``, ``radvqa lint``) never needs it."""
    from apache_beam.io.filesystems import FileSystems  # 1.0 s; see the docstring

    return FileSystems


def _remote(path: str) -> bool:
    return "://" in path


def join(root: str, rel: str) -> str:
    """``root/rel`` for any filesystem Beam knows (``rel`` uses ``/``)."""
    if _remote(root):
        return _filesystems().join(root, *rel.split("/"))
    return os.path.join(root, *rel.split("/"))


def _pattern(pattern: str) -> re.Pattern:
    """Beam's match syntax: ``*`` within a folder, ``**`` across folders, ``?`` one character."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def match(root: str, pattern: str) -> list[str]:
    """Sorted paths of the files under ``root`` matching ``pattern`` (Beam's syntax)."""
    full = join(root, pattern)
    if _remote(full):
        return sorted(m.path for m in _filesystems().match([full])[0].metadata_list)
    prefix = re.match(r"^[^[*?]*", full).group(0)
    if prefix == full:
        return [full] if os.path.exists(full) else []
    rx = _pattern(full)
    # a file directly in the folder must start with the prefix's last part (a unit's files
    # among a build's ~500 in .radvqa/rows: the regex run on those only)
    top, head = os.path.split(prefix)
    return sorted(p for d, _, files in os.walk(top)
                  for p in (os.path.join(d, f) for f in files if d != top or f.startswith(head))
                  if rx.match(p))


def delete(paths: list[str]) -> None:
    """Delete files and folders (recursively) at full ``paths``."""
    remote = [p for p in paths if _remote(p)]
    if remote:
        _filesystems().delete(remote)
    for p in paths:
        if not _remote(p):
            if os.path.isdir(p):
                shutil.rmtree(p)
            else:
                os.remove(p)


def path_exists(path: str) -> bool:
    return _filesystems().exists(path) if _remote(path) else os.path.exists(path)


def rename(src: str, dst: str) -> None:
    """Move the file or folder ``src`` to ``dst`` (full paths; ``dst`` must not exist)."""
    if _remote(src):
        _filesystems().rename([src], [dst])
    else:
        os.rename(src, dst)


def write_bytes(root: str, rel: str, data: bytes | memoryview) -> FileReceipt:
    """Write ``data`` to ``root/rel`` atomically (temporary name, then rename).

    The atomic writer of files that may be remote: every shard, receipt and manifest a
    build writes goes through it (or :func:`write_text_atomic` / :func:`write_json`).
    Local files streamed by a reader of the corpus (exports, the report) go through
    :class:`pipeline.io.atomic.AtomicFile`, the same rule with ``os.replace``.
    """
    final = join(root, rel)
    tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
    if _remote(final):
        fs = _filesystems()
        with fs.create(tmp) as f:
            f.write(bytes(data))
        if fs.exists(final):
            fs.delete([final])
        fs.rename([tmp], [final])
    else:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    return FileReceipt(rel, hashlib.sha256(data).hexdigest(), len(data))


def write_text_atomic(root: str, rel: str, text: str) -> FileReceipt:
    """Write ``text`` (UTF-8) to ``root/rel`` atomically; see :func:`write_bytes`."""
    return write_bytes(root, rel, text.encode("utf-8"))


def read_bytes(root: str, rel: str) -> bytes:
    path = join(root, rel)
    with (_filesystems().open(path) if _remote(path) else open(path, "rb")) as f:
        return f.read()


def exists(root: str, rel: str) -> bool:
    return path_exists(join(root, rel))


def parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    """Serialise ``rows`` (already in their final order) with the :data:`WRITER` options."""
    return table_bytes(pyarrays.table(rows, schema))


def table_bytes(table: pa.Table) -> bytes:
    """Serialise an Arrow table (rows in their final order) with the :data:`WRITER` options."""
    return _table_buffer(table).to_pybytes()


def _row_group(table: pa.Table) -> int:
    """Rows per row group: about :data:`WRITER`'s ``row_group_bytes`` of the table."""
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    return (max(1, min(table.num_rows, WRITER["row_group_bytes"] // row_bytes))
            if table.num_rows else 1)


def _table_buffer(table: pa.Table) -> pa.Buffer:
    """:func:`table_bytes` as an Arrow buffer: written by Arrow's own output stream, never
    copied into Python (a 224 px unit's shard is ~150 MB)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=_row_group(table), **write_options(table.schema))
    return sink.getvalue()


#: The read-back buffer of :func:`local_sha256` (a shard is hashed in pieces of this size).
_HASH_CHUNK = 8 << 20


def local_sha256(path: str) -> str:
    """SHA-256 of a local file, read in :data:`_HASH_CHUNK` pieces into one reused buffer."""
    # a small file's buffer no larger than the file (a zeroed 8 MB one cost 0.7 ms a file)
    h, buf = hashlib.sha256(), bytearray(max(1, min(_HASH_CHUNK, os.path.getsize(path) + 1)))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def _write_table_local(final: str, rel: str, table: pa.Table) -> FileReceipt:
    """:func:`write_table` for a local ``final`` path: the same bytes, written by Arrow's own
    file (its pages go straight to the file, never gathered into one buffer of the whole
    shard, a 224 px unit's ~470 MB) to a temporary name, hashed by reading the file back
    (just written: from the page cache), then renamed.  Measured on a 10K-image 224 px
    unit: a Python sink that hashed each page as it went costs ~2x the CPU — Arrow hands
    it every page as a new ``bytes`` object, one page fault per 4 KB written."""
    tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
    os.makedirs(os.path.dirname(final), exist_ok=True)
    try:
        with pa.OSFile(tmp, "wb") as sink, pq.ParquetWriter(
                sink, table.schema, **write_options(table.schema)) as writer:
            writer.write_table(table, row_group_size=_row_group(table))
        sha256, size = local_sha256(tmp), os.path.getsize(tmp)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return FileReceipt(rel, sha256, size, table.num_rows)


def write_parquet(root: str, rel: str, rows: list[dict], schema: pa.Schema) -> FileReceipt:
    return write_table(root, rel, pyarrays.table(rows, schema))


#: A local shard of at least this many bytes (an image shard: a 10K-image unit's 224 px
#: ``alignment`` is ~470 MB) is built in one reused page-aligned buffer and written around
#: the page cache (``O_DIRECT``); smaller ones (text, receipts) go through the page cache.
#: Measured on this VM (2 vCPU, virtio disk), a 380 MB shard: 0.9 s of system CPU through
#: the page cache (a fresh page per 4 KB written), 0.02 s with ``O_DIRECT``, same bytes.
DIRECT_MIN_BYTES = 64 << 20
_DIRECT = {"buffer": None}  # the reused buffer of this process (one shard at a time)
#: Held while a thread uses the buffer: a worker process that runs bundles on several
#: threads (Beam's ``multi_threading`` mode, a Flink/Spark SDK harness) never shares it;
#: a thread that finds it taken writes through the page cache instead of waiting.
_DIRECT_LOCK = threading.Lock()
_ALIGN = 4096


def _write_table_direct(final: str, rel: str, table: pa.Table) -> FileReceipt | None:
    """:func:`write_table` of a large local table (see :data:`DIRECT_MIN_BYTES`): the Parquet
    bytes built in this process's buffer (grown when a table needs more, never shrunk),
    hashed there, written to a temporary name with ``O_DIRECT`` (the last partial block
    without), then renamed.  ``None`` when this cannot be done here (no ``O_DIRECT``, a
    file system that refuses it, a table that outgrew its buffer): the caller writes the
    shard through the page cache instead."""
    if fcntl is None or not hasattr(os, "O_DIRECT"):
        return None
    need = int(table.nbytes * 1.1) + (16 << 20)
    if _DIRECT["buffer"] is None or len(_DIRECT["buffer"]) < need:
        _DIRECT["buffer"] = None
        size = int(need * 1.25) >> 21 << 21 or 1 << 21  # headroom: units differ in size
        _DIRECT["buffer"] = mmap.mmap(-1, size + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # 2 MB pages: a page fault per 2 MB, not per 4 KB
            _DIRECT["buffer"].madvise(mmap.MADV_HUGEPAGE)
    buf = _DIRECT["buffer"]
    try:
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(buf))
        with pq.ParquetWriter(sink, table.schema, **write_options(table.schema)) as writer:
            writer.write_table(table, row_group_size=_row_group(table))
        size = sink.tell()
    except (pa.ArrowException, OSError):  # outgrew the buffer (never seen): the page cache
        return None
    tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with memoryview(buf) as whole:
        data = whole[:size]
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o666)
        except OSError:  # e.g. tmpfs: no O_DIRECT
            return None
        try:
            aligned, pos = size - size % _ALIGN, 0
            while pos < aligned:
                pos += os.write(fd, data[pos:aligned])
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            while pos < size:
                pos += os.write(fd, data[pos:size])
            os.close(fd)
            fd = None
            os.replace(tmp, final)
        except BaseException as err:
            if fd is not None:
                os.close(fd)
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(err, OSError):  # O_DIRECT refused at write time: the page cache
                return None
            raise
        finally:
            data.release()
    return FileReceipt(rel, sha256, size, table.num_rows)


def write_table(root: str, rel: str, table: pa.Table) -> FileReceipt:
    final = join(root, rel)
    if not _remote(final):
        if table.nbytes >= DIRECT_MIN_BYTES and _DIRECT_LOCK.acquire(blocking=False):
            try:
                receipt = _write_table_direct(final, rel, table)
            finally:
                _DIRECT_LOCK.release()
            if receipt is not None:
                return receipt
        return _write_table_local(final, rel, table)
    receipt = write_bytes(root, rel, memoryview(_table_buffer(table)))
    return FileReceipt(receipt.path, receipt.sha256, receipt.bytes, table.num_rows)


def canonical_json(obj) -> bytes:
    """JSON with sorted keys and fixed separators (stable bytes)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(root: str, rel: str, obj, compact: bool = False) -> FileReceipt:
    """``compact``: one line (build state only), by Python's C encoder: an 8K-case unit
    receipt in 0.009 s of CPU instead of 0.024 s indented (measured); the same sorted keys."""
    return write_bytes(root, rel, canonical_json(obj) if not compact else json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def read_parquet(root: str, rel: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(root, rel)), columns=columns)
