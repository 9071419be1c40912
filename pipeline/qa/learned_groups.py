"""The learned baseline's groups taken from the last build's results when their rows are
unchanged, decided on Arrow columns (:func:`cached`).

A regenerate after a template edit changes the rows of one or two of the learned
baseline's groups (:mod:`pipeline.qa.learned`).  Deciding that the others are unchanged
used to cost what fitting them had been spared: every sampled row turned into a Python
dict (93K rows at 10K RadImageNet images), sorted again by its keyed hash and dumped to
JSON for the group's digest — 0.5-0.8 s of CPU of a 5 s regenerate.  Here a group's rows
stay Arrow columns: its sample (:func:`pipeline.qa.learned.sample_keys`, already in
keyed-hash order) is taken from the shards' sampled rows, and its digest is the sha256 of
its question, options and answer columns in that order (an Arrow IPC stream); only the
groups whose digest the cache does not hold become rows and are fitted.  The results are
:func:`pipeline.qa.learned.learned_baseline`'s over the same rows (``tests/test_learned.py``).

Every group's sampled rows are taken from the shards' columns by one take, in group order,
and each group is a slice of it (no copy): a take per shard, one again per group (28 at
10K images) copied the sampled text three times — 0.07 -> 0.03 s of CPU of a 10K-image
regenerate (measured).  A slice's Arrow IPC stream is not a function of its values alone
(one at offset 0 carries its parent's whole text buffer), so a group's digest hashes its
columns' values, lengths and validity themselves (:func:`_digest`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.schema import kernels, pyarrays

_COLUMNS = ("qa_id", "split", "task", "question_type", "question", "options", "answer")
_TEXT = ("question", "options", "answer")


def _normalised(table: pa.Table) -> pa.Table:
    """The shard's columns under one schema (``choices`` named ``options``), chunked as read."""
    opt = "choices" if "choices" in table.column_names else "options"
    cols = [table[c] if c in table.column_names else pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
            for c in ("qa_id", "split", "task", "question_type", "question")]
    cols += [kernels.cast(table[opt], pa.list_(pa.string())), table["answer"]]
    return pa.Table.from_arrays(cols, names=list(_COLUMNS))


def _digest(table: pa.Table) -> str:
    """The sha256 of the question, options and answer columns' values in row order: per
    column, its rows' validity, their lengths and their text, each hashed on its own over
    the column's chunks (an option list's lengths, then its options' as a text column's):
    the same values give the same digest however they are chunked, sliced or buffered."""
    h = hashlib.sha256(b"%d" % table.num_rows)
    for name in _TEXT:
        column = table[name]
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        if pa.types.is_list(column.type):
            items = []
            for chunk in chunks:
                ends = _ends(chunk)
                items.append(chunk.values.slice(int(ends[0]), int(ends[-1] - ends[0])))
            _hash_column(h, chunks, _ends, None)
            _hash_column(h, items, _text_ends, _text_bytes)
        else:
            _hash_column(h, chunks, _text_ends, _text_bytes)
    return h.hexdigest()


def _hash_column(h, chunks: Sequence[pa.Array], ends, data) -> None:
    """Into ``h``: the sha256 of the chunks' validity (a byte a row), of their values'
    lengths (``ends(chunk)``: ``len + 1`` offsets) and of their bytes (``data(chunk, ends)``)."""
    parts = [hashlib.sha256(), hashlib.sha256(), hashlib.sha256()]
    for chunk in chunks:
        if not len(chunk):
            continue
        if chunk.null_count:  # (the bitmap read as it lies: to_numpy() would import pandas)
            bits = np.frombuffer(chunk.buffers()[0], np.uint8)
            valid = np.unpackbits(bits, bitorder="little")[chunk.offset:chunk.offset + len(chunk)]
        else:
            valid = np.ones(len(chunk), np.uint8)
        parts[0].update(valid.tobytes())
        e = ends(chunk)
        parts[1].update(np.diff(e).astype(np.int64).tobytes())
        if data is not None:
            parts[2].update(data(chunk, e))
    h.update(b"".join(p.digest() for p in parts))


def _ends(array: pa.Array) -> np.ndarray:
    """A string or list array's ``len + 1`` offsets, as they lie in its buffer."""
    return np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, 4 * array.offset)


def _text_ends(array: pa.Array) -> np.ndarray:
    if pa.types.is_null(array.type):
        return np.zeros(len(array) + 1, np.int64)
    if not pa.types.is_string(array.type):
        raise TypeError(f"learned groups: a text column of type {array.type}, expected string")
    return _ends(array)


def _text_bytes(array: pa.Array, ends: np.ndarray):
    data = None if pa.types.is_null(array.type) else array.buffers()[2]
    return b"" if data is None else memoryview(data)[int(ends[0]):int(ends[-1])]


def cached(tables: Sequence[tuple[str, pa.Table | None]], kept: Mapping[tuple, tuple],
           learn_from: Mapping[str, str], cache: Mapping, store: dict | None, code: str,
           fit: Callable[[list], dict]) -> dict:
    """:func:`pipeline.qa.learned.learned_baseline`'s result over the sampled rows, each
    group's from ``cache`` when its digest is there, else from ``fit(parts)`` (``parts``:
    ``[(config, rows table)]`` of the groups to fit).  ``tables``: per shard in shard order,
    ``(config, its rows)`` — ``None`` for a shard none of whose rows was sampled; ``kept``:
    ``sample_keys``' groups (their third member the rows' places, ``shard << 32 | row``).
    Every group's result goes into ``store``."""
    read = [t for _, t in tables if t is not None]
    if not read or not kept:
        return {}
    starts = np.cumsum([0] + [0 if t is None else t.num_rows for _, t in tables])
    order = sorted(kept)
    where = np.concatenate([starts[kept[k][2] >> 32] + (kept[k][2] & 0xFFFFFFFF) for k in order])
    # one take, in group order, from the shards' columns as they are (chunked): each group a
    # slice of it (see the module docstring)
    rows = kernels.take(pa.concat_tables([_normalised(t) for t in read]),
                        pyarrays.from_numpy(where.astype(np.int64)))
    groups: dict[tuple, pa.Table] = {}
    start = 0
    for key in order:
        g = rows.slice(start, len(kept[key][2]))
        start += g.num_rows
        if g["qa_id"].null_count:  # never learned from (no identity to sample by)
            g = kernels.filter(g, kernels.is_valid(g["qa_id"]))
        if g.num_rows:
            groups[key] = g
    by_source: dict[tuple, list[tuple]] = {}
    for key in groups:
        if key[1] != "train":
            by_source.setdefault((learn_from.get(key[0], key[0]), key[2], key[3]), []).append(key)
    digests, out, misses = {}, {}, []
    for source in sorted(by_source):
        train = (source[0], "train", source[1], source[2])
        parts = [list(source), _digest(groups[train]) if train in groups else ""]
        parts += [[list(k), groups[k].num_rows, _digest(groups[k])] for k in by_source[source]]
        digest = digests[source] = hashlib.sha256(json.dumps([code, "arrow", parts]).encode()).hexdigest()
        hit = cache.get(digest)
        if hit is None:
            misses.append(source)
        else:
            out.update((tuple(k), dict(v)) for k, v in hit)
    if misses:
        wanted = []
        for source in misses:
            train = (source[0], "train", source[1], source[2])
            wanted += [train] if train in groups else []
            wanted += by_source[source]
        out.update(fit([(k[0], groups[k]) for k in wanted]))
    out = {key: out[key] for source in sorted(by_source) for key in by_source[source]}
    if store is not None:
        for source in sorted(by_source):
            store[digests[source]] = [[list(key), dict(out[key])] for key in by_source[source]]
    return out
