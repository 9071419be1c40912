"""Corpus kind ``tree``: RadImageNet-style labelled 2D images → RadImageNet-VQA configs.

One image is one case.  Extraction reads its stored PNG bytes and checks them (never
decoded or re-encoded); regeneration keeps a unit's ``alignment`` shard as it is when its
makings did not change (:mod:`pipeline.engine.kept_text`), else copies the images from it.
Rendering writes, per unit, the
``alignment`` shard (image + caption conversation + metadata) and the ``instruct`` shard
(nine questions per image), built column by column (:mod:`pipeline.kinds.tree_tables`).
The stratified ``benchmark`` is written once every unit is done, from the launcher's
plan and the accepted images' stored bytes (:mod:`pipeline.kinds.tree_benchmark`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config.recipes import pool_paths
from pipeline.core import keys
from pipeline.core.imaging import strip_png_metadata
from pipeline.engine import kept_text, ood
from pipeline.engine.units import plan_split_shards
from pipeline.errors import CaseError
from pipeline.inputs.layouts.tree import TreeImage, check_png, discover_tree
from pipeline.inputs.sample_tree import write_tree
from pipeline.inputs.tree import InputTree
from pipeline.io import shards
from pipeline.kinds import tree_blocks, tree_plans
from pipeline.kinds.base import BaseKind, Planned, load_questions, phantom_input
from pipeline.kinds.tree_benchmark import benchmark_images, plan_strata
from pipeline.kinds.tree_tables import (
    CAPTION_TASK,
    ImagesById,
    image_array,
    image_record,
    read_buffer,
    release_read_buffer,
    render_tree_images,
)
from pipeline.qa.audit import partial_counts_columns
from pipeline.qa.benchmark import left_out_regions, select_benchmark
from pipeline.qa.label_pools import load_label_pools
from pipeline.schema import kernels
from pipeline.schema.arrow import (
    ALIGNMENT_SCHEMA,
    BENCHMARK_SCHEMA,
    INSTRUCT_SCHEMA,
    OOD_SCHEMA,
    TREE_PAYLOAD_SCHEMA,
)
from pipeline.schema.layout import BENCHMARK_RECEIPT, PLAN_DIR
from pipeline.schema.records import CaseResult, FileReceipt

TREE_VERSION = "4"  # 4: the benchmark's images dictionary-encoded (io/shards.WRITER)
BENCHMARK_PLAN = f"{PLAN_DIR}/benchmark.json"
BENCHMARK_SHARD = "benchmark/test-00000-of-00001.parquet"
_KEEP_CODE = tuple(Path(__file__).resolve().parent.parent / p for p in (  # alignment's code
    "kinds/tree.py", "kinds/tree_tables.py", "schema/arrow.py", "io/shards.py"))


@dataclass(frozen=True)
class TreeSettings:
    """Extraction settings of the tree kind (the recipe's ``source`` section)."""

    max_pixels: int = 50_000_000


class TreeKind(BaseKind):
    name = "tree"
    version = TREE_VERSION
    pixel_configs = ()
    keep_configs = ("alignment",)
    payload_configs = ("alignment",)
    stored_configs = ("alignment",)
    text_configs = ("alignment", "instruct", "ood")
    configs = ("instruct", "alignment", "benchmark", "ood")
    key_column = {"alignment": "image_id"}
    audit_defaults = {"learn_from": {"benchmark": "instruct"}}
    stored_columns = {"alignment": list(TREE_PAYLOAD_SCHEMA.names)}
    heavy_columns = frozenset({"image"})
    case_noun = "images"
    schemas = {"alignment": ALIGNMENT_SCHEMA, "instruct": INSTRUCT_SCHEMA,
               "benchmark": BENCHMARK_SCHEMA, "ood": OOD_SCHEMA}

    # -- launcher ----------------------------------------------------------------------
    def prepare(self, recipe) -> dict:
        families, pools = load_questions(recipe, pools_loader=load_label_pools)
        source = recipe.section("source")
        return {"settings": TreeSettings(max_pixels=int(source.get("max_pixels", 50_000_000))),
                "families": families, "pools": pools,
                "per_shard": int(recipe.section("shards").get("images_per_shard", 10_000))}

    def sample_input(self, output: str, recipe, log) -> str:
        n = int(recipe.section("source").get("sample_images", 2000))
        pools = load_label_pools(pool_paths(recipe))
        return phantom_input(output, "sample-tree", f"tree:{n}", log,
                             lambda root: write_tree(root, n, pools))

    def discover(self, root, recipe, key: str, seed: int, layout: str, prep: dict):
        source = recipe.section("source")
        images, rejects, stats = discover_tree(
            root, modalities=source.get("modalities", ["CT", "MR"]), pools=prep["pools"],
            pseudonym_key=key, fractions=recipe.section("splits")["fractions"], seed=seed)
        prep["pools"] = prep["pools"].with_observed((i.modality, i.region, i.label) for i in images)
        rejects = [{"case_key": keys.pseudonym(key, "image", r["source"]), "error_type": "CaseError",
                    "unit": "", **r} for r in rejects]
        return images, rejects, stats

    def plan(self, cases, recipe, seed: int, prep: dict) -> Planned:
        return plan_split_shards(cases, lambda i: i.split,
                                 list(recipe.section("splits")["fractions"]), prep["per_shard"])

    def before_run(self, output, recipe, seed, units, cases, prep) -> dict:
        """Balanced question choices for every image (:mod:`pipeline.qa.tree_balance`) and the
        stratified benchmark plan — all from the file list, independent of workers."""
        settings = dict(recipe.section("questions").get("settings") or {})
        # the plan of the last build into this output when made of the same (kinds/tree_plans)
        key, plans = tree_plans.planned_with_key(output, cases, prep["families"], prep["pools"],
                                                 seed, settings, workers=prep.get("workers", 1))
        extras = {"case_extras": plans, tree_blocks.PLANS_KEY: key}  # (the key: tree_blocks)
        normal = prep["pools"].normal_label
        plan = select_benchmark(cases, int(recipe.section("benchmark").get("images", 1000)), seed,
                                normal=normal)
        left_out = left_out_regions(cases, normal=normal)
        if not plan:
            return extras | {"benchmark": False, "benchmark_left_out": left_out}
        unit_of = {}
        for ref, members in units:  # a unit's id made once, not once per image
            unit_of.update(dict.fromkeys([c.key for c in members], ref.unit_id))
        write_benchmark_plan(output, plan, unit_of)
        return extras | {"benchmark": True, "benchmark_left_out": left_out}

    def finish(self, ctx, receipts):
        """Worker, after every unit: the stratified ``benchmark`` (when one was planned)."""
        release_read_buffer()  # this worker's units are done
        return run_benchmark(ctx, receipts) if ctx.extras.get("benchmark") else None

    @staticmethod
    def finish_input(receipt: dict) -> dict:
        """What :func:`run_benchmark` reads of a receipt: the test units' accepted images."""
        return {"unit": receipt["unit"], "cases": receipt["cases"] if receipt["split"] == "test" else {}}

    def manifest_extras(self, output, receipts, extras) -> tuple[dict, list[str], list[str]]:
        out, card, lines = {}, [], []
        bench = extras.get("finish")
        left_out = extras.get("benchmark_left_out") or {}
        if bench:
            info = {"images": bench["rows"]["benchmark_images"], "rows": bench["rows"]["benchmark"],
                    "composition": bench["composition"], "strata": bench["strata"],
                    "strata_short": bench["strata_short"], "balance": bench.get("balance", {}),
                    "regions_left_out": left_out}
            out["benchmark"] = info
            card = ["", "## Benchmark", "",
                    f"{info['images']} test images stratified by modality x region x pathology "
                    f"({info['strata']} strata), half normal and half abnormal in every region, "
                    "up to 9 questions each: "
                    + ", ".join(f"{v} {k}" for k, v in info["composition"].items())
                    + ". Benchmark images come from the test split only (disjoint from train). "
                    "The pathology multiple choice is asked of every abnormal image and of a third "
                    "as many normal ones, so that no answer is correct in more than a quarter of a "
                    f"region's questions ({info['balance'].get('mc_skipped', 0)} multiple-choice "
                    "questions skipped)."]
            lines = [f"benchmark: {info['images']} images, {info['rows']} QA {info['composition']}"]
        if left_out:
            card += ["", "Regions left out of the benchmark: "
                     + "; ".join(f"{r}: {why}" for r, why in left_out.items()) + "."]
            lines.append("benchmark: regions left out: "
                         + "; ".join(f"{r} ({why})" for r, why in left_out.items()))
        added = extras.get("pools_added") or []
        if added:
            card += ["", "Labels found in the tree but not in the pools (added to their region): "
                     + ", ".join("/".join(t) for t in added[:50])]
        return out, card, lines

    # -- cases -------------------------------------------------------------------------
    def case_json(self, case: TreeImage) -> list:
        return [case.key, case.source, case.modality, case.region, case.label, case.split]

    def case_from_json(self, data) -> TreeImage:
        return TreeImage(*data)

    def case_paths(self, case: TreeImage) -> list[str]:
        return [case.source]

    def extract_case(self, case: TreeImage, split: str, ctx) -> CaseResult:
        source, data = read_image(ctx.input_root, case, ctx.settings.max_pixels)
        row = {"image_id": case.key, "image": {"bytes": data, "path": f"{case.key}.png"},
               "modality": case.modality, "region": case.region, "label": case.label,
               "split": split}
        return CaseResult({"alignment": [row]}, keys.digest(case.key, source), {})

    def extract_cases(self, cases: list[TreeImage], split: str, ctx, progress):
        """A unit's images (local trees) read straight into one buffer, end to end, and
        checked there: the ``alignment`` table's image bytes are that buffer, never copied
        per image nor joined (a 10K-image unit's ~470 MB at 224 px).  An image whose size
        changed since it was stat'ed, or whose PNG carries metadata to strip, is read
        again by :meth:`extract_case`'s reader and the column joined as before; the
        outcomes and the table are :meth:`extract_case`'s and :meth:`table`'s."""
        root = InputTree(ctx.input_root)
        if root.remote or not cases:
            return None
        sizes = []
        for case in cases:
            try:
                sizes.append(os.stat(root.path(case.source)).st_size)
            except OSError:
                sizes.append(0)  # read_image names the error
        buffer = read_buffer(sum(sizes))  # (reused from unit to unit)
        view = memoryview(buffer)
        max_pixels = ctx.settings.max_pixels
        outcomes: list = []
        kept: list[int] = []
        data: list = []
        in_place = True
        offset = 0
        opened = root.opened_ahead(c.source for c in cases)
        for n, (case, size, f) in enumerate(zip(cases, sizes, opened)):
            progress(n)
            here = view[offset:offset + size]
            offset += size
            try:
                if _read_into(f, here) and size:  # (reads and closes f, whatever its size)
                    source = stored = here
                    try:
                        check_png(source, max_pixels=max_pixels)
                    except CaseError as err:
                        raise err.with_path(case.source) from None
                    stored = strip_png_metadata(source)
                else:
                    source, stored = read_image(ctx.input_root, case, max_pixels)
            except Exception as exc:  # CaseError: a dead letter; anything else an internal error
                outcomes.append(exc)
                in_place = False
                continue
            in_place = in_place and stored is here
            outcomes.append(CaseResult({}, keys.digest(case.key, source), {}))
            kept.append(n)
            data.append(stored)
        keep = [cases[n] for n in kept]
        images = image_array(data, [f"{c.key}.png" for c in keep],
                             joined=buffer if in_place else None)
        s = pa.string()
        table = pa.Table.from_arrays(
            [pa.array([c.key for c in keep], s), images,
             *(pa.array([getattr(c, f) for c in keep], s) for f in ("modality", "region", "label")),
             pa.array([split] * len(keep), s)], schema=TREE_PAYLOAD_SCHEMA)
        return {"alignment": table}, outcomes

    def table(self, config: str, rows: list[dict]) -> pa.Table:
        """The rows sorted by key (here, so that :meth:`sort_table` has nothing left to move),
        column by column: each image's bytes are copied once, into the Arrow buffer."""
        rows = sorted(rows, key=lambda r: r["image_id"])
        s = pa.string()
        return pa.Table.from_arrays(
            [pa.array([r["image_id"] for r in rows], s),
             image_array([r["image"]["bytes"] for r in rows], [r["image"]["path"] for r in rows]),
             *(pa.array([r[c] for r in rows], s) for c in ("modality", "region", "label", "split"))],
            schema=TREE_PAYLOAD_SCHEMA)

    def sort_table(self, config: str, table: pa.Table) -> pa.Table:
        ids = table["image_id"]
        if ids.num_chunks == 1 and all(a < b for a, b in zip(ids.to_pylist(), ids[1:].to_pylist())):
            return table  # built sorted by :meth:`table`: no copy of the images
        return kernels.sort_by(table, [("image_id", "ascending")])

    def records(self, payload: Mapping[str, pa.Table], split: str, ctx=None) -> list[dict]:
        t = payload["alignment"]
        return [image_record(k, split, m, r, lab)
                for k, m, r, lab in zip(t["image_id"].to_pylist(), t["modality"].to_pylist(),
                                        t["region"].to_pylist(), t["label"].to_pylist())]

    def keep_digest(self, ctx) -> str | None:
        """``alignment``'s makings besides the plan: the caption families' digests and code."""
        fams = ctx.extras.get("qa_families") or {}
        caps = [(n, fams.get(n)) for n, f in sorted(ctx.families.items()) if f.task == CAPTION_TASK]
        return keys.digest(json.dumps(caps), *(p.read_bytes() for p in _KEEP_CODE)) if fams else None

    def render(self, ref, records: list[dict], payload, ctx, rules, report):
        kept = report.get("kept_text")  # alignment stands (engine/kept_text); stored families
        # are read, not rendered (kinds/tree_blocks)
        blocks, stored, qctx = tree_blocks.context(ref.unit_id, records, ctx, bool(kept))
        column = None if kept else payload["alignment"]["image"]  # (no empty table: pandas)
        images = image_array([], []) if kept else (
            column.chunk(0) if column.num_chunks == 1 else column.combine_chunks())
        align, inst, tasks, families = render_tree_images(records, images, qctx)
        audit = tree_blocks.audit(tree_blocks.write(blocks, ref.unit_id, inst, families), stored)
        inst = tree_blocks.merged(inst, stored, tasks)
        if kept:
            (rel, f), = kept.items()
            align = FileReceipt(rel, f["sha256"], f["bytes"], f["rows"])
            tasks[CAPTION_TASK] += f["rows"]
        n_align = align.rows if kept else align.num_rows
        info = {
            "records": len(records),
            "rows": {"cases": len(records), "images": len(records),
                     "alignment": n_align, "instruct": inst.num_rows, "qa": n_align + inst.num_rows},
            "tasks": dict(sorted(tasks.items())),
            "labels_unknown_to_pools": [], "audit": audit,
        } | kept_text.receipt_key(ref, ctx, self, report, n_align, len(records))
        tables = {"alignment": align, "instruct": inst}
        by_id = None if kept else ImagesById([r["image_id"] for r in records], images)  # kept:
        table, inputs = ood.ood_output(  # the chosen images read from it; a stored ood shard
            ood.TREE, ref, records, ctx, report | {"pixel_files": kept or {}}, by_id,  # kept
            ood.planned_inputs_digest(ood.TREE, ref, ctx, report["planned"]))  # as it is
        if table is not None:
            tables["ood"], info["ood_inputs"] = table, inputs
        return tables, info, []


KIND = TreeKind()

def _read_into(f, out: memoryview) -> bool:
    """Read the opened file ``f`` into ``out`` and close it; whether it filled ``out``
    exactly (``False`` for a file that could not be opened, ``None``, or whose size changed)."""
    if f is None:
        return False
    try:
        with f:
            return f.readinto(out) == len(out) and not f.read(1)
    except OSError:
        return False


def read_image(root: str, img: TreeImage, max_pixels: int) -> tuple[bytes, bytes]:
    """``(source bytes, stored bytes)``: the PNG checked, its metadata chunks removed."""
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


# ----------------------------------------------------------------------- benchmark


def write_benchmark_plan(output: str, plan, unit_of: Mapping[str, str]) -> None:
    """The launcher's stratified plan (:func:`pipeline.kinds.tree_benchmark.plan_strata`)."""
    shards.write_json(output, BENCHMARK_PLAN, {"strata": plan_strata(plan, unit_of)})


def run_benchmark(ctx, reports: list[dict]) -> dict:
    """Take each stratum's first ``quota`` accepted candidates; write ``benchmark``."""
    plan = json.loads(shards.read_bytes(ctx.output, BENCHMARK_PLAN))
    picked, short = benchmark_images(ctx, plan["strata"], reports)
    # The benchmark is balanced as a population of its own: its questions are planned over
    # its images (not the test split's), so they get ids of their own.
    population = [TreeImage(r["image_id"], "", r["modality"], r["region"], r["label"], "test")
                  for r, _ in picked]
    key, assign = tree_plans.planned_with_key(ctx.output, population, ctx.families, ctx.pools,
                                              ctx.seed, ctx.qa_settings, population="benchmark")
    # families whose rows are stored (as blocks) under the same makings are not generated
    table, composition = tree_blocks.benchmark(picked, assign, key, ctx)
    skipped = sum(1 for a in assign.values() for p in a.values() if p.get("skip"))
    receipt = shards.write_table(ctx.output, BENCHMARK_SHARD, table)
    report = {
        "unit": "benchmark", "split": "test", "files": {receipt.path: receipt.as_dict()},
        "rows": {"benchmark": table.num_rows, "benchmark_images": len(picked)},
        "composition": dict(sorted(composition.items())), "strata": len(plan["strata"]),
        "strata_short": short, "qa_fp": ctx.qa_fp, "balance": {"mc_skipped": skipped},
        "audit": partial_counts_columns("benchmark", table),
    }
    shards.write_json(ctx.output, BENCHMARK_RECEIPT, report)
    return report
