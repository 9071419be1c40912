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

What the file holds has no ``qa_id`` (the rows are found by their place): two equal
hashes among a merge's candidates, which :func:`pipeline.qa.learned.sample_keys` orders
by ``qa_id``, make the merge give up (:class:`NeedIds`) and the launcher draw every
shard's sample itself.  With 64-bit hashes this is never expected.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter

import numpy as np

VERSION = 1  # of the file's format


class NeedIds(Exception):
    """Equal hashes among a merge's candidates: only the ``qa_id``s can order them."""


def encode(groups: dict, sizes: Counter, sha256: str) -> bytes:
    """A shard's sample — :func:`pipeline.qa.learned.sample_keys` of its rows alone, made
    with ``shard=0`` (its places are its rows), and ``sizes`` its groups' row counts — as
    an ``.npz`` file naming the shard's ``sha256``."""
    keys = sorted(groups)
    meta = {"version": VERSION, "sha256": sha256,
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
