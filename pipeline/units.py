"""Work units: planning (pure) and execution (one shard per unit, no Beam).

A *unit* is the sorted cases of one output shard: ``images``, ``structures``
and ``qa`` files ``<config>/<split>-SSSSS-of-NNNNN.parquet`` share the unit's
index.  Planning is a pure function of the case keys, the split fractions and
the seed (see :mod:`pipeline.keys`), so the same inputs always give the same
units whatever the runner or worker count.  Executing a unit reads its cases,
writes its Parquet files (temporary name, then rename) and returns small
records only: image bytes never leave the worker that encoded them.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline import keys
from pipeline.arrow import IMAGES_SCHEMA, QA_SCHEMA, STRUCTURES_SCHEMA
from pipeline.errors import CaseError
from pipeline.extract import SliceSettings, process_case
from pipeline.sources import CaseSource

STATE_DIR = ".radvqa"
UNITS_DIR = f"{STATE_DIR}/units"
CONFIGS = ("images", "structures", "qa")


@dataclass(frozen=True)
class Unit:
    """One shard's worth of cases (sorted by key) in one split."""

    split: str
    index: int
    count: int
    cases: tuple[CaseSource, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"Unit index {self.index} outside 0..{self.count - 1}")
        ordered = [c.key for c in self.cases]
        if ordered != sorted(ordered):
            raise ValueError("Unit.cases must be sorted by key")

    @property
    def unit_id(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

    def shard(self, config: str) -> str:
        return f"{config}/{keys.shard_name(self.split, self.index, self.count)}"


@dataclass(frozen=True)
class BuildContext:
    """Everything a worker needs, validated on the launcher and pickled to workers."""

    output: str
    input_root: str
    settings: SliceSettings
    families: Mapping
    pools: object
    seed: int
    qa_settings: Mapping = field(default_factory=dict)
    fingerprint: str = ""


def plan_units(
    cases: list[CaseSource], fractions: Mapping[str, float], seed: int, cases_per_shard: int
) -> list[Unit]:
    """Assign cases to splits by patient and range-partition each split into units."""
    by_split: dict[str, dict[str, CaseSource]] = {name: {} for name in fractions}
    for case in cases:
        split = keys.assign_split(case.patient_key, fractions, seed)
        by_split[split][case.key] = case
    units = []
    for split, members in by_split.items():
        shards = keys.plan_shards(members, cases_per_shard)
        for index, shard_keys in enumerate(shards):
            units.append(Unit(split, index, len(shards), tuple(members[k] for k in shard_keys)))
    return units


def dead_letter(case: CaseSource | None, err: CaseError, *, source: str = "") -> dict:
    """A dead-letter record: the one place a source path (relative to the input) appears."""
    return {
        "case_key": case.key if case else "",
        "source": err.path or (case.source if case else source),
        "stage": err.stage,
        "reason": err.reason,
        "error_type": type(err.__cause__).__name__ if err.__cause__ else "CaseError",
        "message": err.message,
    }


def _internal(stage: str, exc: Exception) -> CaseError:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].name}:{tb[-1].lineno}" if tb else ""
    err = CaseError(stage, f"internal.{type(exc).__name__}", f"{type(exc).__name__}: {exc}{where}")
    err.__cause__ = exc
    return err


def _stage_counts(inputs: int, rejected: Counter) -> dict:
    n_rejected = sum(rejected.values())
    return {
        "inputs": inputs,
        "accepted": inputs - n_rejected,
        "rejected": n_rejected,
        "rejected_by_reason": dict(sorted(rejected.items())),
    }


def extract_unit(unit: Unit, ctx: BuildContext):
    """Read and extract every case of ``unit``; write its images and structures shards.

    Returns ``(records, report, dead_letters)``: ``records`` are the image rows
    without pixels (what question rendering needs), ``report`` the unit's
    counts, input digests and file receipts.
    """
    images: list[dict] = []
    structures: list[dict] = []
    dead: list[dict] = []
    by_stage: dict[str, Counter] = {"read": Counter(), "extract": Counter()}
    inputs: dict[str, str] = {}
    notes: Counter = Counter()
    for case in unit.cases:
        try:
            result = process_case(case, unit.split, ctx.input_root, ctx.settings)
        except CaseError as err:
            dead.append(dead_letter(case, err))
            by_stage.setdefault(err.stage, Counter())[err.reason] += 1
            continue
        except Exception as exc:  # a bug or an unforeseen input: never crash the build
            err = _internal("extract", exc)
            dead.append(dead_letter(case, err))
            by_stage["extract"][err.reason] += 1
            continue
        inputs[case.key] = result.input_sha256
        images.extend(result.images)
        structures.extend(result.structures)
        for name, values in sorted(result.notes.items()):
            notes[name] += len(values)
    images.sort(key=lambda r: r["image_id"])
    structures.sort(key=lambda r: (r["case_key"], r["label"]))
    files = {}
    from pipeline import shards

    for config, rows, schema in (
        ("images", images, IMAGES_SCHEMA),
        ("structures", structures, STRUCTURES_SCHEMA),
    ):
        receipt = shards.write_parquet(ctx.output, unit.shard(config), rows, schema)
        files[receipt.path] = receipt.as_dict()
    n_read_rejected = sum(by_stage["read"].values())
    report = {
        "unit": unit.unit_id,
        "split": unit.split,
        "files": files,
        "inputs": dict(sorted(inputs.items())),
        "counts": {
            "read": _stage_counts(len(unit.cases), by_stage["read"]),
            "extract": _stage_counts(len(unit.cases) - n_read_rejected, by_stage["extract"]),
        },
        "rows": {"cases": len(inputs), "images": len(images), "structures": len(structures)},
        "notes": dict(sorted(notes.items())),
    }
    records = [{k: v for k, v in row.items() if k != "image"} for row in images]
    return records, report, dead


def render_unit(unit: Unit, records: list[dict], report: dict, ctx: BuildContext):
    """Render the questions of ``records`` and write the unit's ``qa`` shard.

    Returns ``(report, dead_letters)`` with the qa counts and file added.
    """
    from pipeline import shards
    from pipeline.questions import generate_questions

    rows: list[dict] = []
    dead: list[dict] = []
    rejected: Counter = Counter()
    tasks: Counter = Counter()
    unknown: Counter = Counter()
    for record in records:
        try:
            qa = generate_questions(
                record, ctx.families, ctx.pools, seed=ctx.seed, settings=ctx.qa_settings
            )
        except CaseError as err:
            dead.append(dead_letter(None, err, source=record["case_key"]) | {"case_key": record["case_key"]})
            rejected[err.reason] += 1
            continue
        except Exception as exc:
            err = _internal("qa", exc)
            dead.append(dead_letter(None, err) | {"case_key": record["case_key"]})
            rejected[err.reason] += 1
            continue
        rows.extend(qa)
        for row in qa:
            tasks[row["task"]] += 1
        for label in record["case_labels"]:
            if not ctx.pools.known(label):
                unknown[label] += 1
    rows.sort(key=lambda r: r["qa_id"])
    receipt = shards.write_parquet(ctx.output, unit.shard("qa"), rows, QA_SCHEMA)
    report = dict(report)
    report["files"] = dict(report["files"]) | {receipt.path: receipt.as_dict()}
    report["counts"] = dict(report["counts"]) | {"qa": _stage_counts(len(records), rejected)}
    report["rows"] = dict(report["rows"]) | {"qa": len(rows)}
    report["tasks"] = dict(sorted(tasks.items()))
    report["labels_unknown_to_pools"] = sorted(unknown)
    report["fingerprint"] = ctx.fingerprint
    return report, dead
