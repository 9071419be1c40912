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

from pipeline.engine import ood, qa_blocks
from pipeline.engine.extract import EXTRACT_VERSION, SliceSettings, process_case
from pipeline.errors import ConfigError
from pipeline.inputs import sample
from pipeline.inputs.discovery import CaseSource
from pipeline.inputs.tree import InputTree
from pipeline.kinds.base import VolumeKind
from pipeline.qa.audit import merge, partial_counts, partial_counts_columns
from pipeline.schema import kernels, pyarrays
from pipeline.schema.arrow import IMAGES_SCHEMA, OOD_SCHEMA, QA_SCHEMA, STRUCTURES_SCHEMA
from pipeline.schema.records import CaseResult


class SlicesKind(VolumeKind):
    name = "slices"
    version = EXTRACT_VERSION
    pixel_configs = ("images", "structures")
    payload_configs = ("images", "structures")
    stored_configs = ("images", "structures")
    configs = ("qa", "images", "structures", "ood")  # the first is the default config
    key_column = {"images": "case_key", "structures": "case_key"}
    heavy_columns = frozenset({"image", "image_boxed", "image_boxed_easy"})
    schemas = {"images": IMAGES_SCHEMA, "structures": STRUCTURES_SCHEMA, "qa": QA_SCHEMA,
               "ood": OOD_SCHEMA}
    ood_source = ood.IMAGES
    sample_folder = "sample-input"
    sample_patients = 10
    shard_size = ("cases_per_shard", 25)
    # finished rows kept per family (pipeline.engine.qa_blocks; no planned per-case choices,
    # which the blocks' key would not cover)
    qa_blocks = True

    # -- launcher ----------------------------------------------------------------------
    def prepare(self, recipe) -> dict:
        if not recipe.section("slices"):
            raise ConfigError(f"{recipe.path}: slices: required for recipes of kind slices")
        return super().prepare(recipe)

    def read_settings(self, recipe) -> SliceSettings:
        return SliceSettings.from_recipe(recipe.section("slices"))

    def write_sample(self, root: str, n_patients: int) -> None:
        sample.write_sample(root, n_patients=n_patients)

    # -- extraction --------------------------------------------------------------------
    def extract_case(self, case: CaseSource, split: str, ctx) -> CaseResult:
        with InputTree(ctx.input_root).local(self.case_paths(case)) as root:
            result = process_case(case, split, root, ctx.settings)
        return CaseResult({"images": result.images, "structures": result.structures},
                          result.input_sha256, result.notes)

    def sort_table(self, config: str, table: pa.Table) -> pa.Table:
        by = [("image_id", "ascending")] if config == "images" else [
            ("case_key", "ascending"), ("label", "ascending")]
        return kernels.sort_by(table, by)

    def records(self, payload: Mapping[str, pa.Table], split: str, ctx=None) -> list[dict]:
        return payload["images"].to_pylist()

    # -- questions ---------------------------------------------------------------------
    def render(self, ref, records: list[dict], payload, ctx, rules, report, blocks=()):
        """``blocks``: finished rows of families not rendered here, with their counts
        (:mod:`pipeline.engine.qa_blocks`), merged in by ``qa_id``; the info's ``_blocks``
        gives the rendered families' counts for their blocks."""
        made, dead = self.questions(records, ctx, rules)
        rows: list[dict] = []
        unknown: set = set()
        by_family: dict[str, list[dict]] = {f: [] for f in ctx.families}
        for record, qa in made:
            for row in qa:
                rows.append(row)
                by_family[row["family"]].append(row)
            unknown.update(label for label in record["case_labels"] if not ctx.pools.known(label))
        rows.sort(key=lambda r: r["qa_id"])
        counts = {f: {"tasks": dict(Counter(r["task"] for r in fr)), "audit": partial_counts("qa", fr)}
                  for f, fr in by_family.items()}
        table, stored = qa_blocks.merged(
            pyarrays.table(rows, QA_SCHEMA), blocks,
            None if len(made) == len(records) else [r["image_id"] for r, _ in made], "image_id",
            lambda b: {"tasks": dict(Counter(b["task"].to_pylist())),
                       "audit": partial_counts_columns("qa", b)})
        parts = [*counts.values(), *stored]
        tasks: Counter = Counter()
        for part in parts:
            tasks.update(part["tasks"])
        tables = {"qa": table}
        ood_tables, ood_info = self.ood_tables(ref, records, ctx, report)
        tables |= ood_tables
        info = {
            "records": len(records),
            "rows": {"cases": len({r["case_key"] for r in records}), "images": len(records),
                     "structures": payload["structures"].num_rows, "qa": table.num_rows},
            "tasks": dict(sorted(tasks.items())),
            "labels_unknown_to_pools": sorted(unknown),
            "audit": merge([part["audit"] for part in parts]),
            "_blocks": None if dead else counts,
        } | ood_info
        return tables, info, dead


KIND = SlicesKind()
