"""The tree kind's finished ``instruct`` rows, kept per unit and template family.

A wording edit of one of RadImageNet-VQA's nine question templates used to generate all
nine families again for every image (at 10K images, 2.4 of a regenerate's profiled 11 s).
A tree image's questions of one family are a function of the family (its digest,
:func:`pipeline.qa.stored_rows.family_digests`: the family, pools, seed, question settings,
QA version and the ``qa``/``core`` code) and of the image's record — its key, split,
modality, region, label and the launcher's planned choices for it (``assign``,
:func:`pipeline.qa.tree_balance.plan_tree_questions`: derangements, option quotas,
polarities, made from the whole file list).  So a unit's rows of a family are named by
the family's digest and the digest of the unit's records with their plans
(:func:`records_digest`, with this module's and the tree tables' code; the planned choices
named by the key of the whole plan, :func:`pipeline.kinds.tree_plans.plan_key`): while
both hold, the family is neither generated nor worded again, its block is read and merged
in (:class:`pipeline.engine.qa_blocks.Blocks`, Arrow IPC files under ``.radvqa/rows/``; the
rows carry their family in an extra column).  A plan made of anything else (a variant
added to a paired family, an image added to the tree) changes the records' digest and
every family is generated again.  Captions live in ``alignment``, beside the
images (:mod:`pipeline.engine.kept_text`), and have no block.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pipeline.core import keys
from pipeline.engine import qa_blocks
from pipeline.kinds.tree_tables import (
    BENCHMARK_ROWS_SCHEMA,
    CAPTION_TASK,
    benchmark_rows,
    benchmark_table,
)
from pipeline.qa.audit import merge, partial_counts_columns
from pipeline.qa.stored_rows import code_digest
from pipeline.schema import kernels, pyarrays
from pipeline.schema.arrow import INSTRUCT_SCHEMA

FAMILY = "family"
#: The launcher's extra (``BuildContext.extras``) naming the units' planned choices by their
#: plan's key (:func:`records_digest`).
PLANS_KEY = "question_plans"
#: a block's table: the unit's ``instruct`` rows of one family, with that family's name
SCHEMA = INSTRUCT_SCHEMA.append(pa.field(FAMILY, pa.string()))
_CODE = ("kinds/tree.py", "kinds/tree_tables.py", "kinds/tree_blocks.py", "schema/arrow.py")


@functools.cache
def _code() -> str:
    root = Path(__file__).resolve().parent.parent
    return keys.digest(code_digest(), keys.source_digest([root / p for p in _CODE], root=root,
                                                         dists=("pyarrow",)))


def records_digest(records: list[dict], plans: str | None = None) -> str:
    """What a unit's rows of any family are made from besides the family: its records
    (planned choices included) and the code that turns rows into ``instruct`` columns.
    ``plans``: the key of the plan the records' choices (``assign``) were taken from
    (:func:`pipeline.kinds.tree_plans.plan_key`, everything that plan is made of): it names
    them, and they are left out of the JSON digested (10K images: 4.2 MB of JSON for the
    choices, 0.05-0.07 s of a regenerate's CPU; 1.1 MB without them, measured)."""
    if plans is None:
        return keys.digest(_code(), json.dumps(records, sort_keys=True, default=str))
    fields = sorted({k for r in records for k in r} - {"assign"})
    rows = [[r.get(k) for k in fields] for r in records]
    return keys.digest(_code(), "plans", plans, json.dumps(fields), json.dumps(rows, default=str))


def blocks_for(unit: str, records: list[dict], ctx, families) -> qa_blocks.Blocks | None:
    """The blocks of ``families`` (names) for the unit, ``None`` when the launcher gave no
    family digests or the unit has no records."""
    digests = ctx.extras.get("qa_families")
    if not digests or not records or not families:
        return None
    wanted = {f: digests[f] for f in families if f in digests}
    return qa_blocks.Blocks(ctx.output, wanted, records_digest(records, ctx.extras.get(PLANS_KEY)),
                            [unit])


def context(unit: str, records: list[dict], ctx, kept: bool):
    """``(blocks or None, the stored families' rows, the context to render the rest)``;
    ``kept``: the unit's ``alignment`` shard stands, its captions are not rendered either
    (the images never read)."""
    blocks = blocks_for(unit, records, ctx,
                        [n for n, f in sorted(ctx.families.items()) if f.task != CAPTION_TASK])
    stored = read(blocks, unit) if blocks is not None else []
    skip = {n for n, f in ctx.families.items() if kept and f.task == CAPTION_TASK}
    skip |= blocks.reused if blocks is not None else set()
    if not skip:
        return blocks, stored, ctx
    return blocks, stored, dataclasses.replace(
        ctx, qa_fp=keys.digest(ctx.qa_fp, "without", *sorted(skip)),
        families={n: f for n, f in ctx.families.items() if n not in skip})


def read(blocks: qa_blocks.Blocks, unit: str) -> list[tuple[pa.Table, dict]]:
    """The reused families' ``(instruct rows, {"tasks": …})``; an unreadable block leaves
    every family to be rendered (``blocks.reused`` emptied)."""
    return [(t.drop_columns([FAMILY]).replace_schema_metadata(INSTRUCT_SCHEMA.metadata), meta)
            for t, meta in _read_or_forget(blocks, unit, SCHEMA)]


def _read_or_forget(blocks: qa_blocks.Blocks, unit: str, schema: pa.Schema) -> list:
    """``blocks.read(unit, schema)``; ``[]`` with ``blocks.reused`` emptied (every family to
    be generated again) when a block is unreadable."""
    if not blocks.reused:
        return []
    try:
        return blocks.read(unit, schema)
    except qa_blocks.Unreadable:
        blocks.reused = frozenset()
        return []


def write(blocks: qa_blocks.Blocks | None, unit: str, inst: pa.Table, families: list[str]) -> dict:
    """``{family: {"tasks", "audit"}}`` of the families rendered now (``families``: each
    ``inst`` row's), their blocks written when there are ``blocks``."""
    names = pyarrays.array(families, pa.string())
    meta = {}
    for f in sorted(set(families)):
        part = kernels.filter(inst, kernels.equal(names, pyarrays.scalar(f, pa.string())))
        meta[f] = {"tasks": dict(sorted(Counter(part["task"].to_pylist()).items())),
                   "audit": partial_counts_columns("instruct", part)}
    if blocks is not None:
        blocks.write(unit, inst.append_column(FAMILY, names), meta)
    return meta


def audit(meta: dict, stored: list[tuple[pa.Table, dict]]) -> dict:
    """The unit's ``instruct`` audit counts: its families' partial counts summed (counts add
    up; every use of them is order-free, :mod:`pipeline.qa.audit`)."""
    return merge([m["audit"] for _, m in sorted(meta.items())] + [m["audit"] for _, m in stored])


def merged(inst: pa.Table, stored: list[tuple[pa.Table, dict]], tasks: Counter) -> pa.Table:
    """``inst`` (rows rendered now) with the stored families' rows, in the order a full
    rendering gives (by image, then ``qa_id``); their task counts added to ``tasks``."""
    for _, meta in stored:
        tasks.update(meta.get("tasks") or {})
    if not stored:
        return inst
    table = pa.concat_tables([inst, *(t for t, _ in stored)])
    return kernels.sort_by(table, [("image_id", "ascending"), ("qa_id", "ascending")]).combine_chunks()


#: The benchmark's blocks are named as a unit's, under this name (``.radvqa/rows/benchmark.*``).
BENCHMARK = "benchmark"


def benchmark(picked: list[tuple[dict, bytes]], assign: dict, plans: str, ctx):
    """:func:`~pipeline.kinds.tree_tables.benchmark_table` of the picked ``(record, PNG
    bytes)`` (sorted by image id) with their planned ``assign`` (the benchmark population's
    plan, named by its key ``plans``): ``(table, rows per question type)``.

    The benchmark's rows of a family are named as a unit's are (the family's digest; the
    picked records with their plan, :func:`records_digest`): a family whose block is
    current is read, not generated; the others are generated and their blocks written.
    The images are never in a block: the column is made from ``picked`` every time."""
    records = [r | {"assign": assign.get(r["image_id"])} for r, _ in picked]
    names = [n for n, f in sorted(ctx.families.items()) if f.task != CAPTION_TASK]
    digests = ctx.extras.get("qa_families")
    blocks = qa_blocks.Blocks(
        ctx.output, {f: digests[f] for f in names if f in digests},
        keys.digest(BENCHMARK, records_digest(records, plans)), [BENCHMARK]
    ) if digests and records else None
    stored = ([t for t, _ in _read_or_forget(blocks, BENCHMARK, BENCHMARK_ROWS_SCHEMA)]
              if blocks is not None else [])
    todo = [n for n in names if blocks is None or n not in blocks.reused]
    rows = benchmark_rows(records, {n: ctx.families[n] for n in todo}, ctx)
    if blocks is not None:
        blocks.write(BENCHMARK, rows, {f: {} for f in todo})
    if stored:
        rows = pa.concat_tables([rows, *(t.replace_schema_metadata(None) for t in stored)])
    return benchmark_table(rows, {r["image_id"]: png for r, png in picked})
