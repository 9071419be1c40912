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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import pyarrays

_COLUMNS = ("qa_id", "split", "task", "question_type", "question", "options", "answer")
_TEXT = ("question", "options", "answer")


def _normalised(table: pa.Table) -> pa.Table:
    """The sampled rows' columns under one schema (``choices`` named ``options``)."""
    opt = "choices" if "choices" in table.column_names else "options"
    cols = [table[c] if c in table.column_names else pa.nulls(table.num_rows, pa.string())
            for c in ("qa_id", "split", "task", "question_type", "question")]
    cols += [table[opt].cast(pa.list_(pa.string())), table["answer"]]
    return pa.Table.from_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
                                 for c in cols], names=list(_COLUMNS))


def _digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    part = table.select(list(_TEXT)).combine_chunks()
    with pa.ipc.new_stream(sink, part.schema) as writer:
        writer.write_table(part)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def cached(taken: Sequence[tuple[str, pa.Table]], kept: Mapping[tuple, tuple],
           learn_from: Mapping[str, str], cache: Mapping, store: dict | None, code: str,
           fit: Callable[[list], dict]) -> dict:
    """:func:`pipeline.qa.learned.learned_baseline`'s result over the sampled rows, each
    group's from ``cache`` when its digest is there, else from ``fit(parts)`` (``parts``:
    ``[(config, rows table)]`` of the groups to fit).  ``taken``: per shard in shard order,
    ``(config, its sampled rows in place order)``; ``kept``: ``sample_keys``' groups (their
    third member the rows' places).  Every group's result goes into ``store``."""
    if not taken:
        return {}
    # in place order; one chunk a column: each group's take from it is 1.5x faster (0.07 ->
    # 0.048 s of CPU for the 28 groups of a 10K-image tree, measured), the same rows
    rows = pa.concat_tables([_normalised(t) for _, t in taken]).combine_chunks()
    places = np.sort(np.concatenate([g[2] for g in kept.values()]))
    groups: dict[tuple, pa.Table] = {}
    for key in sorted(kept):
        g = rows.take(pyarrays.from_numpy(np.searchsorted(places, kept[key][2]).astype(np.int64)))
        if g["qa_id"].null_count:  # never learned from (no identity to sample by)
            g = g.filter(pc.is_valid(g["qa_id"]))
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
