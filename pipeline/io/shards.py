"""Deterministic Parquet shards and small files, written through Beam's FileSystems.

Every file is written to a temporary name beside its final name, then renamed,
so a retried or killed worker never leaves a partial file under a final name;
``gs://``, ``s3://`` and ``hdfs://`` outputs work wherever Beam's filesystems
do.  Parquet options are fixed (codec, level, row-group size, page version,
statistics), rows are given sorted by key, and the bytes are hashed in memory:
the same rows give the same file, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema.records import FileReceipt

PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=True,
    write_statistics=True,
    version="2.6",
    data_page_version="1.0",
)
ROW_GROUP_BYTES = 64 << 20
TMP_MARK = ".tmp-"


def _filesystems():
    """Beam's ``FileSystems``.  Imported on first use: ``apache_beam.io.filesystems`` takes
    1.0 s to import (measured), and ``radvqa lint`` reaches this module through the kinds
    without ever touching a file here."""
    from apache_beam.io.filesystems import FileSystems  # 1.0 s; see the docstring

    return FileSystems


def join(root: str, rel: str) -> str:
    """``root/rel`` for any filesystem Beam knows (``rel`` uses ``/``)."""
    return _filesystems().join(root, *rel.split("/"))


def write_bytes(root: str, rel: str, data: bytes) -> FileReceipt:
    """Write ``data`` to ``root/rel`` atomically (temporary name, then rename).

    The atomic writer of files that may be remote: every shard, receipt and manifest a
    build writes goes through it (or :func:`write_text_atomic` / :func:`write_json`).
    Local files streamed by a reader of the corpus (exports, the report) go through
    :class:`pipeline.io.atomic.AtomicFile`, the same rule with ``os.replace``.
    """
    fs = _filesystems()
    final = join(root, rel)
    parent = final.rsplit("/", 1)[0]
    if "://" not in final:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex}"
    with fs.create(tmp) as f:
        f.write(data)
    if fs.exists(final):
        fs.delete([final])
    fs.rename([tmp], [final])
    return FileReceipt(rel, hashlib.sha256(data).hexdigest(), len(data))


def write_text_atomic(root: str, rel: str, text: str) -> FileReceipt:
    """Write ``text`` (UTF-8) to ``root/rel`` atomically; see :func:`write_bytes`."""
    return write_bytes(root, rel, text.encode("utf-8"))


def read_bytes(root: str, rel: str) -> bytes:
    with _filesystems().open(join(root, rel)) as f:
        return f.read()


def exists(root: str, rel: str) -> bool:
    return _filesystems().exists(join(root, rel))


def parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    """Serialise ``rows`` (already in their final order) with the fixed options."""
    return table_bytes(pa.Table.from_pylist(rows, schema=schema))


def table_bytes(table: pa.Table) -> bytes:
    """Serialise an Arrow table (rows in their final order) with the fixed options."""
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    row_group = max(1, min(table.num_rows, ROW_GROUP_BYTES // row_bytes)) if table.num_rows else 1
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group, **PARQUET_OPTIONS)
    return buf.getvalue()


def write_parquet(root: str, rel: str, rows: list[dict], schema: pa.Schema) -> FileReceipt:
    return write_table(root, rel, pa.Table.from_pylist(rows, schema=schema))


def write_table(root: str, rel: str, table: pa.Table) -> FileReceipt:
    receipt = write_bytes(root, rel, table_bytes(table))
    return FileReceipt(receipt.path, receipt.sha256, receipt.bytes, table.num_rows)


def canonical_json(obj) -> bytes:
    """JSON with sorted keys and fixed separators (stable bytes)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(root: str, rel: str, obj) -> FileReceipt:
    return write_bytes(root, rel, canonical_json(obj))


def read_parquet(root: str, rel: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(root, rel)), columns=columns)
