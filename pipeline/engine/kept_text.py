"""A unit's stored text shard kept as it is, its pixel column never read.

The tree kind writes each image's PNG into its ``alignment`` shard beside the image's
caption conversation.  A question template's edit cannot change that shard, yet a
regenerate read every image back and wrote it again (at RadImageNet's 750K images, ~37 GB
of PNG bytes for a one-word edit).  A kind lists such configs in ``keep_configs`` and
says what else their shard is made from (``keep_digest(ctx)``: for the tree, the caption
families' digests and its rendering code).  :func:`key` adds the unit's plan (every
case's key and fingerprint: the input file's identity, the kind's version and settings,
the shard writer's options), its id and split.  The unit's receipt records the key
(``text_key``) when the shard holds a row for every planned case.

On the next build, a unit whose key is the same and whose every case is stored in that
very shard (checked as every kept shard is: its stat receipt, else its sha256,
:mod:`pipeline.io.kept_files`) keeps it: :func:`extracted` reads
its columns but the pixel ones (the records' source) and the kind's ``render`` returns
the shard's :class:`~pipeline.schema.records.FileReceipt` instead of a table.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow.parquet as pq

from pipeline.core import keys
from pipeline.engine.dead_letters import jsonl, stage_counts
from pipeline.io import kept_files, shards


@functools.cache
def _code() -> str:
    return keys.source_digest([__file__], dists=("pyarrow",))


def key(ref, ctx, kind, planned: str) -> str | None:
    """Everything the unit's kept configs are made from (``None``: never kept)."""
    kept = kind.keep_digest(ctx) if kind.keep_configs else None
    if not kept:
        return None
    return keys.digest(_code(), kind.name, kind.version, ref.unit_id, ref.split, planned, kept,
                       shards.writer_digest())


def stored(receipts: Mapping[str, Mapping], refs, kind) -> dict[str, dict]:
    """``{unit id: {"key": …, "files": {path: file info}}}`` of the keepable shards the last
    build's receipts record (launcher, before the run; ``ctx.extras["text_stored"]``)."""
    out = {}
    if not kind.keep_configs:
        return out
    for ref in refs:
        full = receipts.get(f"{ref.unit_id}.json") or {}
        files = full.get("files") or {}
        wanted = {ref.shard(c): files.get(ref.shard(c)) for c in kind.keep_configs}
        if full.get("text_key") and all(wanted.values()):
            stat = full.get("stat") or {}
            out[ref.unit_id] = {"key": full["text_key"], "files": wanted,
                                "stat": {rel: stat[rel] for rel in wanted if rel in stat}}
    return out


def extracted(ref, ctx, kind, plan: Sequence, digest: str):
    """``(extraction report, payload without pixel columns)`` of a unit whose kept configs'
    shards stand (see the module docstring), or ``None``.  Writes the unit's (empty)
    extraction dead-letter part, as an extraction would."""
    held = (ctx.extras.get("text_stored") or {}).get(ref.unit_id)
    if not held or not plan or held["key"] != key(ref, ctx, kind, digest):
        return None
    files = held["files"]
    for pc in plan:
        if not pc.stored or any(pc.stored.get(c) != (ref.shard(c), files[ref.shard(c)]["sha256"])
                                for c in kind.keep_configs):
            return None
    payload = {}
    stat = held.get("stat") or {}
    for config in kind.keep_configs:
        rel = ref.shard(config)
        path = shards.join(ctx.output, rel)
        try:
            if "://" in path:  # remote: read once, hashed (no stat identity)
                source = io.BytesIO(shards.read_bytes(ctx.output, rel))
                if hashlib.sha256(source.getbuffer()).hexdigest() != files[rel]["sha256"]:
                    return None
            # local: trusted by its stat receipt, else hashed as it streams
            # (io/kept_files); then memory-mapped: never held whole
            elif kept_files.unchanged(ctx.output, rel, files[rel]["sha256"], stat.get(rel),
                                      bool(ctx.extras.get("verify_shards"))):
                source = path
            else:
                return None
            pf = pq.ParquetFile(source, memory_map=True)
        except OSError:
            return None
        columns = payload_columns(kind, config, pf.schema_arrow.names)
        if columns is None:
            return None
        payload[config] = pf.read(columns=columns)
        if payload[config].num_rows != len(plan):
            return None
    n = len(plan)
    report = {
        "unit": ref.unit_id, "split": ref.split, "kind": ctx.kind, "planned": digest,
        "cases": dict(sorted((kind.case_key(pc.case), [pc.fp, pc.content]) for pc in plan)),
        "pixel_files": {},
        "counts": {"read": stage_counts(n, Counter()), "extract": stage_counts(n, Counter())},
        "notes": {}, "reuse": {"stored_cases": n, "extracted_cases": 0}, "dead_letters": 0,
        "kept_text": {rel: dict(info) for rel, info in sorted(files.items())},
    }
    shards.write_bytes(ctx.output, ref.dead_part("extract"), jsonl([]))
    return report, payload


def payload_columns(kind, config: str, names: Sequence[str]) -> list[str] | None:
    """The columns of a kept ``config`` shard (its columns ``names``) that make the payload:
    the kind's ``stored_columns`` of the config, the columns an extraction's payload has
    (all of them when it names none), without the pixel ones; ``None`` when the shard lacks
    one.  The rendered text beside them (the tree's caption conversations and metadata,
    0.01-0.04 s of a 10K-image regenerate's CPU to decode, measured) is never read."""
    wanted = [c for c in kind.stored_columns.get(config) or names if c not in kind.heavy_columns]
    return wanted if set(wanted) <= set(names) else None


def receipt_key(ref, ctx, kind, report: Mapping, rows: int, records: int) -> dict:
    """``{"text_key": …}`` for a unit's receipt when its kept configs hold a row for each
    of its ``records`` and no case was rejected; else ``{}``."""
    if report.get("dead_letters") or rows != records or not records:
        return {}
    k = key(ref, ctx, kind, report["planned"])
    return {"text_key": k} if k else {}
