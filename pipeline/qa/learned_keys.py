"""The learned baseline's sample keys of one QA shard, made by the worker that wrote it.

The learned text-only baseline (:mod:`pipeline.qa.learned`) draws its rows by a keyed hash
of every ``qa_id`` (:func:`pipeline.qa.learned.sample_keys`).  On the launcher, after
every unit, that was a serial step that grew with the corpus: every QA shard's key columns
read back and every ``qa_id`` hashed (1.0-1.3 s of launcher CPU at 100K RadImageNet
images, 7.5M hashes at 750K).  A worker holds the table it has just written: it draws the
shard's own sample there (:func:`encode`: per group the keyed hashes and rows of the rows
the baseline could use, at most its cap) and stores it beside the shard's receipt, with
the shard's sha256.  The launcher merges the shards' samples
(:func:`merged`, by the rule :func:`~pipeline.qa.learned.sample_keys` adds a shard's
rows with) instead of hashing: taking the smallest hashes of each shard's smallest is the
same as taking them of all rows.  A sample that is missing, unreadable or made for other bytes of the shard
(a killed worker, a shard from an older build) is made on the launcher as before, so
the result never depends on which way it was made (``tests/test_learned_keys.py``).

A shard written again with the same key columns (a template's wording edit rewrites the
QA shards, never their ``qa_id``s, splits, tasks or question types) keeps its sample: the
file names the digest of those columns (:func:`columns_digest`) and is restamped with the
new sha256 (:func:`restamped`) instead of drawn again.

What the file holds has no ``qa_id`` (the rows are found by their place): two equal
hashes among a merge's candidates, which :func:`pipeline.qa.learned.sample_keys` orders
by ``qa_id``, make the merge give up (:class:`NeedIds`) and the launcher draw every
shard's sample itself.  With 64-bit hashes this is never expected.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core import keys
from pipeline.schema import kernels, pyarrays

VERSION = 1  # of the file's format
#: The columns a shard's sample is drawn from (:func:`pipeline.qa.learned.sample_keys`).
KEY_COLUMNS = ("qa_id", "split", "task", "question_type")


class NeedIds(Exception):
    """Equal hashes among a merge's candidates: only the ``qa_id``s can order them."""


def encode(groups: dict, sizes: Counter, sha256: str, columns: str = "") -> bytes:
    """A shard's sample — :func:`pipeline.qa.learned.sample_keys` of its rows alone, made
    with ``shard=0`` (its places are its rows), and ``sizes`` its groups' row counts — as
    an ``.npz`` file naming the shard's ``sha256`` and the digest of the ``columns`` it
    was drawn from (:func:`restamped`)."""
    keys = sorted(groups)
    meta = {"version": VERSION, "sha256": sha256, "columns": columns,
            "groups": [[list(key[1:]), sizes[key]] for key in keys]}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
    for i, key in enumerate(keys):
        hashes, _, places = groups[key]
        arrays[f"h{i}"] = hashes.astype(np.uint64)
        arrays[f"r{i}"] = (places & 0xFFFFFFFF).astype(np.uint32)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def decode(data: bytes | None, config: str, sha256: str) -> dict | None:
    """``{(config, split, task, question_type): (rows, hashes, shard rows)}`` of an
    :func:`encode` file, or ``None`` when it is missing, unreadable or not of the shard
    whose sha256 is ``sha256``."""
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            meta = json.loads(f["meta"].tobytes().decode("utf-8"))
            if meta.get("version") != VERSION or meta.get("sha256") != sha256:
                return None
            return {(config, *key): (int(n), f[f"h{i}"], f[f"r{i}"])
                    for i, (key, n) in enumerate(meta["groups"])}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


def columns_digest(table, config: str) -> str:
    """The digest of everything :func:`pipeline.qa.learned.sample_keys` draws a shard's
    sample from: the config, the :data:`KEY_COLUMNS` (their values' bytes: a few ms for 90K
    rows, against 0.05 s to hash every ``qa_id``) and the sampling code."""
    return keys.digest(_sampling_code(), config, table.num_rows,
                       *(part for c in KEY_COLUMNS for part in _value_bytes(table[c])))


@functools.cache
def _sampling_code() -> str:
    here = Path(__file__).resolve().parent
    return keys.source_digest([here / "learned.py", here / "learned_keys.py"])


def _value_bytes(column) -> list:
    """A string column's values as bytes that its values alone make (offsets from 0, the
    characters, which rows are null), never a buffer's slack or unset bits."""
    arr = column.combine_chunks()
    if not pa.types.is_string(arr.type) or arr.buffers()[1] is None:
        return [json.dumps(arr.to_pylist())]
    _, offsets, data = arr.buffers()
    at = np.frombuffer(offsets, np.int32)[arr.offset:arr.offset + len(arr) + 1]
    chars = memoryview(data)[at[0]:at[-1]] if data is not None else b""
    nulls = pyarrays.to_numpy(kernels.cast(kernels.is_null(arr), pa.uint8())) if arr.null_count else np.zeros(0, bool)
    return [(at - at[0]).astype(np.int64).tobytes(), chars, nulls.tobytes()]


def restamped(data: bytes | None, columns: str, sha256: str) -> bytes | None:
    """An :func:`encode` file drawn from the same ``columns`` (:func:`columns_digest`: the
    sample is a function of them alone), made to name the shard's new ``sha256``; ``None``
    when it is missing, unreadable or drawn from other columns.  A template's wording edit
    rewrites a QA shard without changing any ``qa_id``, split, task or question type: its
    sample is the earlier one (10K tree: 90K keyed hashes, 0.05 s of CPU, saved).

    Only the ``meta`` array is decoded and written again: the others' ``.npy`` members are
    copied as they are (an ``.npz`` is a zip of one ``.npy`` file per array; the sample's
    five files, 6.9 -> 2.5 ms of CPU, measured)."""
    if not data or not columns:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            with z.open("meta.npy") as f:
                meta = json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes().decode("utf-8"))
            if meta.get("version") != VERSION or meta.get("columns") != columns:
                return None
            members = [(name, z.read(name)) for name in z.namelist() if name != "meta.npy"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    new_meta = io.BytesIO()
    np.lib.format.write_array(new_meta, np.frombuffer(
        json.dumps(meta | {"sha256": sha256}).encode("utf-8"), np.uint8), allow_pickle=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr("meta.npy", new_meta.getvalue())
        for name, member in members:
            z.writestr(name, member)
    return out.getvalue()


def merged(kept: dict, sizes: Counter, got: dict, shard: int, keep) -> dict:
    """``kept`` (:func:`pipeline.qa.learned.sample_keys`' result so far) with a shard's
    decoded sample added, the shard numbered ``shard``; ``keep(groups, key, got)`` adds a
    group's rows as ``sample_keys`` does (``pipeline.qa.learned._keep``).  These rows carry
    no ``qa_id``, so equal hashes among a group's candidates raise :class:`NeedIds`."""
    groups = dict(kept)
    for key, (n, hashes, rows) in got.items():
        sizes[key] += n
        keep(groups, key, [hashes, np.full(len(hashes), None, dtype=object),
                           (np.int64(shard) << 32) | rows.astype(np.int64)])
    return groups
