"""Work units for labelled 2D trees (RadImageNet style): plan, execute, write.

The launcher writes one plan file per unit (``.radvqa/plan/<unit>.jsonl``:
the unit's images sorted by key) and a benchmark plan; Beam only sees small
unit descriptors, so a 750K-image build never puts the file list into the
pipeline graph.  A unit reads its images (stored bytes, checked, never
re-encoded), renders nine questions and a caption per image, and writes its
``alignment`` and ``instruct`` shards column by column (Arrow arrays built
from Python lists: no per-row dicts on the 7.5M-row path).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import keys, shards
from pipeline.arrow import ALIGNMENT_SCHEMA, BENCHMARK_SCHEMA, INSTRUCT_SCHEMA, METADATA, TURN
from pipeline.errors import CaseError
from pipeline.questions import LETTERS, generate_questions
from pipeline.radimagenet import TreeImage, check_png

PLAN_DIR = ".radvqa/plan"
BENCHMARK_PLAN = f"{PLAN_DIR}/benchmark.json"
TREE_CONFIGS = ("alignment", "instruct", "benchmark")
CAPTION_TASK = "caption"


@dataclass(frozen=True)
class TreeUnit:
    split: str
    index: int
    count: int
    n_images: int

    @property
    def unit_id(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

    @property
    def plan(self) -> str:
        return f"{PLAN_DIR}/{self.unit_id}.jsonl"

    def shard(self, config: str) -> str:
        return f"{config}/{keys.shard_name(self.split, self.index, self.count)}"


@dataclass(frozen=True)
class TreeContext:
    output: str
    input_root: str
    families: Mapping
    pools: object
    seed: int
    qa_settings: Mapping = field(default_factory=dict)
    fingerprint: str = ""
    max_pixels: int = 50_000_000


def plan_tree_units(images: list[TreeImage], splits, per_shard: int) -> dict[TreeUnit, list[TreeImage]]:
    """Range-partition each split's images (sorted by key) into units."""
    out = {}
    for split in splits:
        members = {i.key: i for i in images if i.split == split}
        groups = keys.plan_shards(members, per_shard)
        for index, group in enumerate(groups):
            out[TreeUnit(split, index, len(groups), len(group))] = [members[k] for k in group]
    return out


def plan_lines(images: list[TreeImage]) -> bytes:
    return "".join(
        json.dumps([i.key, i.source, i.modality, i.region, i.label, i.split]) + "\n" for i in images
    ).encode()


def read_plan(output: str, rel: str) -> list[TreeImage]:
    return [TreeImage(*json.loads(line)) for line in shards.read_bytes(output, rel).decode().splitlines()]


def _record(img: TreeImage) -> dict:
    return {"image_id": img.key, "case_key": img.key, "split": img.split, "modality": img.modality,
            "region": img.region, "label": img.label}


def _read_image(ctx: TreeContext, img: TreeImage) -> bytes:
    import os

    path = os.path.join(ctx.input_root, img.source)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CaseError("read", "image.unreadable", f"cannot read: {err.strerror}", img.source) from err
    try:
        check_png(data, max_pixels=ctx.max_pixels)
    except CaseError as err:
        raise err.with_path(img.source) from None
    return data


def _dead(img: TreeImage, err: CaseError) -> dict:
    return {"case_key": img.key, "source": err.path or img.source, "stage": err.stage,
            "reason": err.reason, "error_type": type(err.__cause__).__name__ if err.__cause__ else "CaseError",
            "message": err.message}


def _human(row: Mapping) -> str:
    text = "<image>\n" + row["question"]
    if row["question_type"] == "multiple_choice":
        text += "\n" + "\n".join(f"{LETTERS[n]}. {o}" for n, o in enumerate(row["options"]))
    return text


def _gpt(row: Mapping) -> str:
    if row["question_type"] == "multiple_choice":
        return f"{row['answer']}. {row['answer_text']}"
    return row["answer"]


class _Columns:
    """Column buffers for one table; ``table()`` builds Arrow arrays in one go."""

    def __init__(self):
        self.cols: dict[str, list] = {}

    def add(self, **values):
        for k, v in values.items():
            self.cols.setdefault(k, []).append(v)

    def __len__(self):
        return len(next(iter(self.cols.values()), []))


def _conversations(humans: list[str], gpts: list[str]) -> pa.Array:
    n = len(humans)
    values = [None] * (2 * n)
    values[0::2], values[1::2] = humans, gpts
    turns = pa.StructArray.from_arrays(
        [pa.array(["human", "gpt"] * n, pa.string()), pa.array(values, pa.string())], fields=list(TURN)
    )
    return pa.ListArray.from_arrays(pa.array(range(0, 2 * n + 1, 2), pa.int32()), turns)


def _metadata(c: dict) -> pa.Array:
    return pa.StructArray.from_arrays(
        [pa.array(c["m_content_type"], pa.string()), pa.array(c["m_correct_text"], pa.string()),
         pa.array(c["m_is_abnormal"], pa.bool_()), pa.array(c["m_location"], pa.string()),
         pa.array(c["m_modality"], pa.string()), pa.array(c["m_pathology"], pa.string()),
         pa.array(c["m_question_id"], pa.string())],
        fields=list(METADATA),
    )


def _meta_values(row, img: TreeImage, pools) -> dict:
    return {
        "m_content_type": row["task"], "m_correct_text": row["answer_text"],
        "m_is_abnormal": pools.is_abnormal(img.label),
        "m_location": pools.region_display(img.modality, img.region),
        "m_modality": pools.modality_metadata(img.modality), "m_pathology": pools.display(img.label),
        "m_question_id": row["qa_id"],
    }


def _choices(row):
    return row["options"] if row["question_type"] == "multiple_choice" else None


def render_tree_images(images: list[tuple[TreeImage, bytes]], ctx: TreeContext):
    """Alignment and instruct tables for ``images`` (already sorted by key)."""
    align, inst = _Columns(), _Columns()
    tasks: Counter = Counter()
    for img, data in images:
        rows = generate_questions(_record(img), ctx.families, ctx.pools, seed=ctx.seed,
                                  settings=ctx.qa_settings)
        for row in rows:
            tasks[row["task"]] += 1
            meta = _meta_values(row, img, ctx.pools)
            if row["task"] == CAPTION_TASK:
                align.add(image_id=img.key, image_bytes=data, human=_human(row), gpt=_gpt(row),
                          split=img.split, **meta)
            else:
                inst.add(qa_id=row["qa_id"], image_id=img.key, human=_human(row), gpt=_gpt(row),
                         question=row["question"], choices=_choices(row), answer=row["answer"],
                         answer_text=row["answer_text"], question_type=row["question_type"],
                         task=row["task"], template_id=row["template_id"], split=img.split, **meta)
    return _alignment_table(align), _instruct_table(inst), tasks


def _alignment_table(c: _Columns) -> pa.Table:
    cols = c.cols
    if not len(c):
        return ALIGNMENT_SCHEMA.empty_table()
    image = pa.StructArray.from_arrays(
        [pa.array(cols["image_bytes"], pa.binary()), pa.array([f"{k}.png" for k in cols["image_id"]], pa.string())],
        names=["bytes", "path"])
    return pa.Table.from_arrays(
        [pa.array(cols["image_id"], pa.string()), image, _conversations(cols["human"], cols["gpt"]),
         _metadata(cols), pa.array(cols["split"], pa.string())], schema=ALIGNMENT_SCHEMA)


def _instruct_table(c: _Columns) -> pa.Table:
    cols = c.cols
    if not len(c):
        return INSTRUCT_SCHEMA.empty_table()
    s = pa.string()
    return pa.Table.from_arrays(
        [pa.array(cols["qa_id"], s), pa.array(cols["image_id"], s),
         _conversations(cols["human"], cols["gpt"]), pa.array(cols["question"], s),
         pa.array(cols["choices"], pa.list_(s)), pa.array(cols["answer"], s),
         pa.array(cols["answer_text"], s), pa.array(cols["question_type"], s),
         pa.array(cols["task"], s), pa.array(cols["template_id"], s), _metadata(cols),
         pa.array(cols["split"], s)], schema=INSTRUCT_SCHEMA)


def run_tree_unit(unit: TreeUnit, ctx: TreeContext):
    """Read, check, render and write one unit; returns ``(report, dead letters)``."""
    images = read_plan(ctx.output, unit.plan)
    good, dead = [], []
    rejected: Counter = Counter()
    digest = hashlib.sha256()
    for img in images:
        try:
            data = _read_image(ctx, img)
            digest.update(img.key.encode() + hashlib.sha256(data).digest())
            good.append((img, data))
        except CaseError as err:
            dead.append(_dead(img, err))
            rejected[err.reason] += 1
    alignment, instruct, tasks = render_tree_images(good, ctx)
    files = {}
    for config, table in (("alignment", alignment), ("instruct", instruct)):
        receipt = shards.write_table(ctx.output, unit.shard(config), table)
        files[receipt.path] = receipt.as_dict()
    n = len(images)
    report = {
        "unit": unit.unit_id, "split": unit.split, "files": files,
        "counts": {"read": {"inputs": n, "accepted": n - len(dead), "rejected": len(dead),
                            "rejected_by_reason": dict(sorted(rejected.items()))},
                   "qa": {"inputs": len(good), "accepted": len(good), "rejected": 0,
                          "rejected_by_reason": {}}},
        "rows": {"cases": len(good), "alignment": alignment.num_rows, "instruct": instruct.num_rows},
        "tasks": dict(sorted(tasks.items())),
        "inputs_digest": digest.hexdigest(),
        "fingerprint": ctx.fingerprint,
    }
    return report, dead


def run_benchmark_unit(ctx: TreeContext):
    """Take each stratum's first ``quota`` readable candidates; write ``benchmark``."""
    plan = json.loads(shards.read_bytes(ctx.output, BENCHMARK_PLAN))
    chosen: list[tuple[TreeImage, bytes]] = []
    short = {}
    for stratum, quota, candidates in plan["strata"]:
        taken = 0
        for cand in candidates:
            if taken == quota:
                break
            img = TreeImage(*cand)
            try:
                chosen.append((img, _read_image(ctx, img)))
                taken += 1
            except CaseError:
                continue  # unreadable: already a dead letter of its own unit
        if taken < quota:
            short[stratum] = quota - taken
    chosen.sort(key=lambda x: x[0].key)
    c = _Columns()
    composition: Counter = Counter()
    for img, data in chosen:
        for row in generate_questions(_record(img), ctx.families, ctx.pools, seed=ctx.seed,
                                      settings=ctx.qa_settings):
            if row["task"] == CAPTION_TASK:
                continue
            composition[row["question_type"]] += 1
            c.add(qa_id=row["qa_id"], image_id=img.key, image_bytes=data, question=row["question"],
                  choices=_choices(row), answer=row["answer"], question_type=row["question_type"],
                  task=row["task"], template_id=row["template_id"], split="test",
                  **_meta_values(row, img, ctx.pools))
    cols, s = c.cols, pa.string()
    if len(c):
        image = pa.StructArray.from_arrays(
            [pa.array(cols["image_bytes"], pa.binary()),
             pa.array([f"{k}.png" for k in cols["image_id"]], s)], names=["bytes", "path"])
        table = pa.Table.from_arrays(
            [pa.array(cols["qa_id"], s), pa.array(cols["image_id"], s), image,
             pa.array(cols["question"], s), pa.array(cols["choices"], pa.list_(s)),
             pa.array(cols["answer"], s), pa.array(cols["question_type"], s),
             pa.array(cols["task"], s), pa.array(cols["template_id"], s), _metadata(cols),
             pa.array(cols["split"], s)], schema=BENCHMARK_SCHEMA)
    else:
        table = BENCHMARK_SCHEMA.empty_table()
    receipt = shards.write_table(ctx.output, "benchmark/test-00000-of-00001.parquet", table)
    return {
        "unit": "benchmark", "split": "test", "files": {receipt.path: receipt.as_dict()},
        "rows": {"benchmark": table.num_rows, "benchmark_images": len(chosen)},
        "composition": dict(sorted(composition.items())), "strata": len(plan["strata"]),
        "strata_short": short, "fingerprint": ctx.fingerprint,
    }
