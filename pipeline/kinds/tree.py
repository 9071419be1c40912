"""Corpus kind ``tree``: RadImageNet-style labelled 2D images → RadImageNet-VQA configs.

One image is one case.  Extraction reads its stored PNG bytes and checks them (never
decoded or re-encoded); regeneration copies them from the ``alignment`` shard that holds
them instead of reading the input tree again.  Rendering writes, per unit, the
``alignment`` shard (image + caption conversation + metadata) and the ``instruct`` shard
(nine questions per image, column by column: no per-row dicts on the 7.5M-row path).
The stratified ``benchmark`` is written once every unit is done, from the launcher's
plan and the accepted images' stored bytes.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import keys
from pipeline.core.imaging import strip_png_metadata
from pipeline.engine.ood import OOD_SCHEMA
from pipeline.errors import CaseError
from pipeline.inputs.layouts.tree import TreeImage, check_png
from pipeline.io import shards
from pipeline.qa.options import LETTERS
from pipeline.qa.questions import generate_questions
from pipeline.schema.arrow import (
    ALIGNMENT_SCHEMA,
    BENCHMARK_SCHEMA,
    IMAGE_STRUCT,
    INSTRUCT_SCHEMA,
    METADATA,
    TURN,
)
from pipeline.schema.layout import PLAN_DIR, UNITS_DIR
from pipeline.schema.records import CaseResult

TREE_VERSION = "1"
BENCHMARK_PLAN = f"{PLAN_DIR}/benchmark.json"
BENCHMARK_RECEIPT = f"{UNITS_DIR}/benchmark.json"
BENCHMARK_SHARD = "benchmark/test-00000-of-00001.parquet"
CAPTION_TASK = "caption"
PAYLOAD_SCHEMA = pa.schema([("image_id", pa.string()), ("image", IMAGE_STRUCT),
                            ("modality", pa.string()), ("region", pa.string()),
                            ("label", pa.string()), ("split", pa.string())])


@dataclass(frozen=True)
class TreeSettings:
    """Extraction settings of the tree kind (the recipe's ``source`` section)."""

    max_pixels: int = 50_000_000


class TreeKind:
    name = "tree"
    version = TREE_VERSION
    pixel_configs = ()
    payload_configs = ("alignment",)
    stored_configs = ("alignment",)
    text_configs = ("alignment", "instruct", "ood")
    configs = ("instruct", "alignment", "benchmark", "ood")
    key_column = {"alignment": "image_id"}
    audit_defaults = {"learn_from": {"benchmark": "instruct"}}
    stored_columns = {"alignment": list(PAYLOAD_SCHEMA.names)}
    heavy_columns = frozenset({"image"})
    case_noun = "images"
    balanced = False
    schemas = {"alignment": ALIGNMENT_SCHEMA, "instruct": INSTRUCT_SCHEMA,
               "benchmark": BENCHMARK_SCHEMA, "ood": OOD_SCHEMA}

    # -- launcher ----------------------------------------------------------------------
    @staticmethod
    def prepare(recipe) -> dict:
        from pipeline.kinds.base import load_questions
        from pipeline.qa.label_pools import load_label_pools

        families, pools = load_questions(recipe, pools_loader=load_label_pools)
        source = recipe.section("source")
        return {"settings": TreeSettings(max_pixels=int(source.get("max_pixels", 50_000_000))),
                "families": families, "pools": pools,
                "per_shard": int(recipe.section("shards").get("images_per_shard", 10_000))}

    @staticmethod
    def sample_input(output: str, recipe, log) -> str:
        from pipeline.config.recipes import pool_paths
        from pipeline.inputs.sample_tree import write_tree
        from pipeline.kinds.base import phantom_input
        from pipeline.qa.label_pools import load_label_pools

        n = int(recipe.section("source").get("sample_images", 2000))
        pools = load_label_pools(pool_paths(recipe))
        return phantom_input(output, "sample-tree", f"tree:{n}", log,
                             lambda root: write_tree(root, n, pools))

    @staticmethod
    def discover(root: str, recipe, key: str, seed: int, layout: str, prep: dict):
        from pipeline.inputs.layouts.tree import discover_tree

        source = recipe.section("source")
        images, rejects, stats = discover_tree(
            root, modalities=source.get("modalities", ["CT", "MR"]), pools=prep["pools"],
            pseudonym_key=key, fractions=recipe.section("splits")["fractions"], seed=seed)
        prep["pools"] = prep["pools"].with_observed((i.modality, i.region, i.label) for i in images)
        rejects = [{"case_key": keys.pseudonym(key, "image", r["source"]), "error_type": "CaseError",
                    "unit": "", **r} for r in rejects]
        return images, rejects, stats

    @staticmethod
    def plan(cases, recipe, seed: int, prep: dict):
        from pipeline.engine.units import plan_split_shards

        return plan_split_shards(cases, lambda i: i.split,
                                 list(recipe.section("splits")["fractions"]), prep["per_shard"])

    @staticmethod
    def before_run(output, recipe, seed, units, cases, prep) -> dict:
        """Balanced question choices for every image (:mod:`pipeline.qa.tree_balance`) and the
        stratified benchmark plan — all from the file list, independent of workers."""
        from pipeline.qa.benchmark import select_benchmark
        from pipeline.qa.tree_balance import plan_tree_questions

        settings = dict(recipe.section("questions").get("settings") or {})
        extras = {"case_extras": plan_tree_questions(cases, prep["families"], prep["pools"],
                                                     seed, settings)}
        plan = select_benchmark(cases, int(recipe.section("benchmark").get("images", 1000)), seed)
        if not plan:
            return extras | {"benchmark": False}
        unit_of = {c.key: ref.unit_id for ref, members in units for c in members}
        write_benchmark_plan(output, plan, unit_of)
        return extras | {"benchmark": True}

    @staticmethod
    def finish(ctx, receipts):
        if not ctx.extras.get("benchmark"):
            return None
        return run_benchmark(ctx, receipts)

    @staticmethod
    def manifest_extras(output, receipts, extras) -> tuple[dict, list[str], list[str]]:
        out, card, lines = {}, [], []
        bench = extras.get("finish")
        if bench:
            info = {"images": bench["rows"]["benchmark_images"], "rows": bench["rows"]["benchmark"],
                    "composition": bench["composition"], "strata": bench["strata"],
                    "strata_short": bench["strata_short"]}
            out["benchmark"] = info
            card = ["", "## Benchmark", "",
                    f"{info['images']} test images stratified by modality x region x pathology "
                    f"({info['strata']} strata), 9 questions each: "
                    + ", ".join(f"{v} {k}" for k, v in info["composition"].items())
                    + ". Benchmark images come from the test split only (disjoint from train)."]
            lines = [f"benchmark: {info['images']} images, {info['rows']} QA {info['composition']}"]
        added = extras.get("pools_added") or []
        if added:
            card += ["", "Labels found in the tree but not in the pools (added to their region): "
                     + ", ".join("/".join(t) for t in added[:50])]
        return out, card, lines

    # -- cases -------------------------------------------------------------------------
    @staticmethod
    def case_key(case: TreeImage) -> str:
        return case.key

    @staticmethod
    def case_source(case: TreeImage) -> str:
        return case.source

    @staticmethod
    def case_json(case: TreeImage) -> list:
        return [case.key, case.source, case.modality, case.region, case.label, case.split]

    @staticmethod
    def case_from_json(d) -> TreeImage:
        return TreeImage(*d)

    @staticmethod
    def case_paths(case: TreeImage) -> list[str]:
        return [case.source]

    @staticmethod
    def settings_digest(settings: TreeSettings) -> str:
        return keys.digest(repr(settings))

    @staticmethod
    def extract_case(case: TreeImage, split: str, ctx) -> CaseResult:
        source, data = read_image(ctx.input_root, case, ctx.settings.max_pixels)
        row = {"image_id": case.key, "image": {"bytes": data, "path": f"{case.key}.png"},
               "modality": case.modality, "region": case.region, "label": case.label,
               "split": split}
        return CaseResult({"alignment": [row]}, keys.digest(case.key, source), {})

    @staticmethod
    def table(config: str, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=PAYLOAD_SCHEMA)

    @staticmethod
    def sort_table(config: str, table: pa.Table) -> pa.Table:
        return table.sort_by([("image_id", "ascending")])

    @staticmethod
    def records(payload: Mapping[str, pa.Table], split: str, ctx=None) -> list[dict]:
        t = payload["alignment"]
        return [{"image_id": k, "case_key": k, "split": split, "modality": m, "region": r,
                 "label": lab}
                for k, m, r, lab in zip(t["image_id"].to_pylist(), t["modality"].to_pylist(),
                                        t["region"].to_pylist(), t["label"].to_pylist())]

    @staticmethod
    def candidates(records, ctx) -> list:
        return []

    @staticmethod
    def render(ref, records: list[dict], payload, ctx, rules, report):
        images = [i["bytes"] for i in payload["alignment"]["image"].to_pylist()]
        align, inst, tasks = render_tree_images(records, images, ctx)
        from pipeline.qa.audit import partial_counts_columns

        info = {
            "records": len(records),
            "rows": {"cases": len(records), "images": len(records),
                     "alignment": align.num_rows, "instruct": inst.num_rows,
                     "qa": align.num_rows + inst.num_rows},
            "tasks": dict(sorted(tasks.items())),
            "labels_unknown_to_pools": [],
            "audit": partial_counts_columns("instruct", inst),
        }
        tables = {"alignment": align, "instruct": inst}
        conf = ctx.extras.get("ood")
        if conf and ref.split == conf["split"]:
            from pipeline.engine.ood import image_rows

            by_id = {r["image_id"]: png for r, png in zip(records, images)}
            tables["ood"] = pa.Table.from_pylist(image_rows(by_id, ref.split, conf, ctx.seed),
                                                 schema=OOD_SCHEMA)
        return tables, info, []


KIND = TreeKind()


def read_image(root: str, img: TreeImage, max_pixels: int) -> tuple[bytes, bytes]:
    """``(source bytes, stored bytes)``: the PNG checked, its metadata chunks removed."""
    from pipeline.inputs.tree import InputTree

    try:
        data = InputTree(root).read_bytes(img.source)
    except OSError as err:
        raise CaseError("read", "image.unreadable",
                        f"cannot read: {err.strerror or type(err).__name__}", img.source) from err
    try:
        check_png(data, max_pixels=max_pixels)
    except CaseError as err:
        raise err.with_path(img.source) from None
    return data, strip_png_metadata(data)


# ----------------------------------------------------------------------- rendering


def human_turn(question: str, question_type: str, options) -> str:
    """The user turn: ``<image>`` + question, multiple-choice options as ``A. …`` lines."""
    text = "<image>\n" + question
    if question_type == "multiple_choice":
        text += "\n" + "\n".join(f"{LETTERS[n]}. {o}" for n, o in enumerate(options))
    return text


def gpt_turn(answer: str, answer_text: str, question_type: str) -> str:
    """The assistant turn: ``A. text`` for multiple choice, the answer otherwise."""
    if question_type == "multiple_choice":
        return f"{answer}. {answer_text}"
    return answer


class _Columns:
    """Column buffers for one table."""

    def __init__(self):
        self.cols: dict[str, list] = defaultdict(list)

    def add(self, **values):
        cols = self.cols
        for k, v in values.items():
            cols[k].append(v)

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


def _meta_values(row, record, pools) -> dict:
    m, r, label = record["modality"], record["region"], record["label"]
    return {
        "m_content_type": row["task"], "m_correct_text": row["answer_text"],
        "m_is_abnormal": pools.is_abnormal(label),
        "m_location": pools.region_display(m, r), "m_modality": pools.modality_metadata(m),
        "m_pathology": pools.display(label), "m_question_id": row["qa_id"],
    }


def _choices(row):
    return row["options"] if row["question_type"] == "multiple_choice" else None


def _image_array(keys_: list[str], data: list[bytes]) -> pa.Array:
    return pa.StructArray.from_arrays(
        [pa.array(data, pa.binary()), pa.array([f"{k}.png" for k in keys_], pa.string())],
        fields=list(IMAGE_STRUCT))


def render_tree_images(records: list[dict], data: list[bytes], ctx):
    """Alignment and instruct tables for ``records`` (sorted by key) and their PNG bytes."""
    align, inst = _Columns(), _Columns()
    tasks: Counter = Counter()
    for record, png in zip(records, data):
        rows = generate_questions(record, ctx.families, ctx.pools, seed=ctx.seed,
                                  settings=ctx.qa_settings)
        for row in rows:
            tasks[row["task"]] += 1
            meta = _meta_values(row, record, ctx.pools)
            human = human_turn(row["question"], row["question_type"], row["options"])
            gpt = gpt_turn(row["answer"], row["answer_text"], row["question_type"])
            if row["task"] == CAPTION_TASK:
                align.add(image_id=record["image_id"], image_bytes=png, human=human, gpt=gpt,
                          modality=record["modality"], region=record["region"],
                          label=record["label"], split=record["split"], **meta)
            else:
                inst.add(qa_id=row["qa_id"], image_id=record["image_id"], human=human, gpt=gpt,
                         question=row["question"], choices=_choices(row), answer=row["answer"],
                         answer_text=row["answer_text"], question_type=row["question_type"],
                         task=row["task"], template_id=row["template_id"],
                         split=record["split"], **meta)
    return _alignment_table(align), _instruct_table(inst), tasks


def _alignment_table(c: _Columns) -> pa.Table:
    cols = c.cols
    if not len(c):
        return ALIGNMENT_SCHEMA.empty_table()
    s = pa.string()
    return pa.Table.from_arrays(
        [pa.array(cols["image_id"], s), _image_array(cols["image_id"], cols["image_bytes"]),
         _conversations(cols["human"], cols["gpt"]), _metadata(cols),
         pa.array(cols["modality"], s), pa.array(cols["region"], s), pa.array(cols["label"], s),
         pa.array(cols["split"], s)], schema=ALIGNMENT_SCHEMA)


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


# ----------------------------------------------------------------------- benchmark


def write_benchmark_plan(output: str, plan, unit_of: Mapping[str, str]) -> None:
    """The launcher's stratified plan: ``[(stratum, quota, [[key, unit], …])]``; names
    no source file (the images are read back from the alignment shards)."""
    strata = [[s, q, [[i.key, unit_of[i.key]] for i in cands]] for s, q, cands in plan]
    shards.write_json(output, BENCHMARK_PLAN, {"strata": strata})


def run_benchmark(ctx, reports: list[dict]) -> dict:
    """Take each stratum's first ``quota`` accepted candidates; write ``benchmark``."""
    plan = json.loads(shards.read_bytes(ctx.output, BENCHMARK_PLAN))
    accepted = {r["unit"]: set(r["cases"]) for r in reports}
    chosen: dict[str, set[str]] = {}
    short = {}
    for stratum, quota, candidates in plan["strata"]:
        taken = 0
        for key, unit in candidates:
            if taken == quota:
                break
            if key in accepted.get(unit, ()):
                chosen.setdefault(unit, set()).add(key)
                taken += 1
        if taken < quota:
            short[stratum] = quota - taken
    picked: list[tuple[dict, bytes]] = []
    for unit, wanted in sorted(chosen.items()):
        rel = f"alignment/{unit}.parquet"
        table = pq.read_table(io.BytesIO(shards.read_bytes(ctx.output, rel)),
                              columns=list(PAYLOAD_SCHEMA.names))
        table = table.filter(pa.compute.is_in(table["image_id"], value_set=pa.array(sorted(wanted))))
        recs = TreeKind.records({"alignment": table}, "test")
        picked.extend(zip(recs, [i["bytes"] for i in table["image"].to_pylist()]))
    picked.sort(key=lambda x: x[0]["image_id"])
    from pipeline.inputs.layouts.tree import TreeImage as _Image
    from pipeline.qa.tree_balance import plan_tree_questions

    # The benchmark is balanced as a population of its own: its questions are planned over
    # its images (not the test split's), so they get ids of their own.
    population = [_Image(r["image_id"], "", r["modality"], r["region"], r["label"], "test")
                  for r, _ in picked]
    assign = plan_tree_questions(population, ctx.families, ctx.pools, ctx.seed, ctx.qa_settings,
                                 population="benchmark")
    c = _Columns()
    composition: Counter = Counter()
    for record, png in picked:
        record = record | {"assign": assign.get(record["image_id"])}
        for row in generate_questions(record, ctx.families, ctx.pools, seed=ctx.seed,
                                      settings=ctx.qa_settings):
            if row["task"] == CAPTION_TASK:
                continue
            row["qa_id"] = keys.stable_key("benchmark", row["qa_id"])
            composition[row["question_type"]] += 1
            c.add(qa_id=row["qa_id"], image_id=record["image_id"], image_bytes=png,
                  question=row["question"], choices=_choices(row), answer=row["answer"],
                  question_type=row["question_type"], task=row["task"],
                  template_id=row["template_id"], split="test",
                  **_meta_values(row, record, ctx.pools))
    cols, s = c.cols, pa.string()
    if len(c):
        table = pa.Table.from_arrays(
            [pa.array(cols["qa_id"], s), pa.array(cols["image_id"], s),
             _image_array(cols["image_id"], cols["image_bytes"]),
             pa.array(cols["question"], s), pa.array(cols["choices"], pa.list_(s)),
             pa.array(cols["answer"], s), pa.array(cols["question_type"], s),
             pa.array(cols["task"], s), pa.array(cols["template_id"], s), _metadata(cols),
             pa.array(cols["split"], s)], schema=BENCHMARK_SCHEMA)
    else:
        table = BENCHMARK_SCHEMA.empty_table()
    receipt = shards.write_table(ctx.output, BENCHMARK_SHARD, table)
    from pipeline.qa.audit import partial_counts_columns

    report = {
        "unit": "benchmark", "split": "test", "files": {receipt.path: receipt.as_dict()},
        "rows": {"benchmark": table.num_rows, "benchmark_images": len(picked)},
        "composition": dict(sorted(composition.items())), "strata": len(plan["strata"]),
        "strata_short": short, "qa_fp": ctx.qa_fp,
        "audit": partial_counts_columns("benchmark", table),
    }
    shards.write_json(ctx.output, BENCHMARK_RECEIPT, report)
    return report
