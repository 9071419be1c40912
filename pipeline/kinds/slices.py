"""Corpus kind ``slices``: CT/MR volumes with masks → 2D slices, boxes and questions.

Pixel configs (written at extraction, reused by regeneration): ``images`` (one row per
slice: PNG, plane, window, spacing, boxes) and ``structures`` (one row per structure per
volume).  Text config: ``qa``.  Questions on a slice are rendered from its image row
without the pixels; closed questions are balanced across the whole corpus
(:mod:`pipeline.qa.balance`), so this kind renders in a second phase.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pyarrow as pa

from pipeline.core import keys
from pipeline.engine.extract import EXTRACT_VERSION, SliceSettings, process_case
from pipeline.engine.ood import OOD_SCHEMA
from pipeline.errors import CaseError
from pipeline.inputs.discovery import CaseSource
from pipeline.kinds.base import VolumeCases
from pipeline.schema.arrow import IMAGES_SCHEMA, QA_SCHEMA, STRUCTURES_SCHEMA
from pipeline.schema.records import CaseResult


class SlicesKind(VolumeCases):
    name = "slices"
    version = EXTRACT_VERSION
    pixel_configs = ("images", "structures")
    payload_configs = ("images", "structures")
    stored_configs = ("images", "structures")
    text_configs = ("qa", "ood")
    configs = ("qa", "images", "structures", "ood")  # the first is the default config
    key_column = {"images": "case_key", "structures": "case_key"}
    stored_columns: dict = {}
    heavy_columns = frozenset({"image", "image_boxed"})
    balanced = True
    schemas = {"images": IMAGES_SCHEMA, "structures": STRUCTURES_SCHEMA, "qa": QA_SCHEMA,
               "ood": OOD_SCHEMA}

    # -- launcher ----------------------------------------------------------------------
    @staticmethod
    def prepare(recipe) -> dict:
        from pipeline.errors import ConfigError
        from pipeline.kinds.base import load_questions

        if not recipe.section("slices"):
            raise ConfigError(f"{recipe.path}: slices: required for recipes of kind slices")
        try:
            settings = SliceSettings.from_recipe(recipe.section("slices"))
        except ValueError as err:
            raise ConfigError(f"{recipe.path}: {err}") from err
        families, pools = load_questions(recipe)
        return {"settings": settings, "families": families, "pools": pools,
                "per_shard": int(recipe.section("shards").get("cases_per_shard", 25))}

    @staticmethod
    def sample_input(output: str, recipe, log) -> str:
        from pipeline.inputs import sample
        from pipeline.kinds.base import phantom_input

        n = int(recipe.section("source").get("sample_patients", 10))
        return phantom_input(output, "sample-input", f"{sample.SAMPLE_VERSION}:{n}", log,
                             lambda root: sample.write_sample(root, n_patients=n))

    @staticmethod
    def discover(root: str, recipe, key: str, seed: int, layout: str, prep: dict):
        from pipeline.kinds.base import discover_volume_cases

        cases, rejects = discover_volume_cases(root, key, layout)
        return cases, rejects, {}

    @staticmethod
    def plan(cases, recipe, seed: int, prep: dict):
        from pipeline.engine.units import plan_split_shards

        fractions = recipe.section("splits")["fractions"]
        return plan_split_shards(cases, lambda c: keys.assign_split(c.patient_key, fractions, seed),
                                 list(fractions), prep["per_shard"])

    @staticmethod
    def before_run(output, recipe, seed, units, cases, prep) -> dict:
        return {}

    finish = None

    @staticmethod
    def manifest_extras(output, receipts, extras) -> tuple[dict, list[str], list[str]]:
        return {}, [], []

    # -- extraction (cases: VolumeCases) ----------------------------------------------
    @staticmethod
    def extract_case(case: CaseSource, split: str, ctx) -> CaseResult:
        from pipeline.inputs.tree import InputTree

        with InputTree(ctx.input_root).local(SlicesKind.case_paths(case)) as root:
            result = process_case(case, split, root, ctx.settings)
        return CaseResult({"images": result.images, "structures": result.structures},
                          result.input_sha256, result.notes)

    @classmethod
    def table(cls, config: str, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=cls.schemas[config])

    @staticmethod
    def sort_table(config: str, table: pa.Table) -> pa.Table:
        by = [("image_id", "ascending")] if config == "images" else [
            ("case_key", "ascending"), ("label", "ascending")]
        return table.sort_by(by)

    @staticmethod
    def records(payload: Mapping[str, pa.Table], split: str, ctx=None) -> list[dict]:
        return payload["images"].to_pylist()

    # -- questions ---------------------------------------------------------------------
    @staticmethod
    def candidates(records: list[dict], ctx) -> list[tuple]:
        from pipeline.qa.candidates import question_candidates

        return question_candidates(records, ctx)

    @staticmethod
    def render(ref, records: list[dict], payload, ctx, rules, report):
        from pipeline.qa.balance import apply
        from pipeline.qa.questions import questions_for

        rows: list[dict] = []
        dead: list[dict] = []
        tasks: Counter = Counter()
        unknown: set = set()
        for record in records:
            try:
                qa = [row for row in (apply(r, rules, ctx.families, ctx.pools)
                                      for r in questions_for(record, ctx)) if row is not None]
            except CaseError as err:
                dead.append(_dead(record, err))
                continue
            except Exception as exc:
                from pipeline.engine.dead_letters import internal_error

                dead.append(_dead(record, internal_error("qa", exc)))
                continue
            for row in qa:
                rows.append(row)
                tasks[row["task"]] += 1
            unknown.update(label for label in record["case_labels"] if not ctx.pools.known(label))
        rows.sort(key=lambda r: r["qa_id"])
        from pipeline.engine.execute import read_pixels
        from pipeline.engine.ood import chosen, image_rows
        from pipeline.qa.audit import partial_counts

        tables = {"qa": pa.Table.from_pylist(rows, schema=QA_SCHEMA)}
        conf = ctx.extras.get("ood")
        if conf and ref.split == conf["split"]:
            ids = [r["image_id"] for r in records]
            wanted = {i for i, _, _ in chosen(ids, conf, ctx.seed)}
            pixels = read_pixels(ctx.output, report, "images", "image_id", "image", wanted)
            tables["ood"] = pa.Table.from_pylist(image_rows(pixels, ref.split, conf, ctx.seed),
                                                 schema=OOD_SCHEMA)

        info = {
            "records": len(records),
            "rows": {"cases": len({r["case_key"] for r in records}), "images": len(records),
                     "structures": payload["structures"].num_rows, "qa": len(rows)},
            "tasks": dict(sorted(tasks.items())),
            "labels_unknown_to_pools": sorted(unknown),
            "audit": partial_counts("qa", rows),
        }
        return tables, info, dead


def _dead(record: Mapping, err: CaseError) -> dict:
    from pipeline.engine.dead_letters import dead_letter

    return dead_letter(record["case_key"], record["case_key"], err)


KIND = SlicesKind()
