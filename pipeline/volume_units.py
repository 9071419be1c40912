"""Work units for volume-level (3D-RAD-style) corpora.

A unit holds whole patients — every study of a patient lands in the same
unit, so temporal questions see the patient's history without a shuffle.
Extraction reads each case (the same readers as slice extraction), computes
volume facts (:mod:`pipeline.volume_qa`), and writes the unit's ``volumes``
shard: each volume resampled to the recipe's target shape, windowed to
[0, 1], stored as ``.npy`` bytes with its original and target spacing and
its 3D boxes on the target grid.  Only the small facts leave the worker.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline import keys, shards
from pipeline.boxes import mask_box
from pipeline.errors import CaseError
from pipeline.extract import load_case
from pipeline.slices import apply_window, ct_window, mr_window, resample
from pipeline.sources import CaseSource
from pipeline.volume_qa import keep_existence, lesion_facts

VOLUME_QA_VERSION = "1"
BOX3D = pa.struct([("label", pa.string()), ("box", pa.list_(pa.int32()))])
VOLUME_FIELDS = [
    ("volume_id", pa.string()),
    ("case_key", pa.string()),
    ("patient_key", pa.string()),
    ("split", pa.string()),
    ("study_order", pa.int32()),
    ("modality", pa.string()),
    ("npy", pa.binary()),
    ("shape", pa.list_(pa.int32())),
    ("original_spacing_mm", pa.list_(pa.float64())),
    ("target_spacing_mm", pa.list_(pa.float64())),
    ("window", pa.string()),
    ("boxes3d", pa.list_(BOX3D)),
]
QA3D_FIELDS = [
    ("qa_id", pa.string()),
    ("volume_id", pa.string()),
    ("case_key", pa.string()),
    ("split", pa.string()),
    ("task", pa.string()),
    ("subtask", pa.string()),
    ("family", pa.string()),
    ("question_type", pa.string()),
    ("question", pa.string()),
    ("options", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_text", pa.string()),
    ("answer_value", pa.float64()),
    ("answer_unit", pa.string()),
    ("answer_tolerance", pa.float64()),
    ("template_id", pa.string()),
]


@dataclass(frozen=True)
class VolumeUnit:
    split: str
    index: int
    count: int
    cases: tuple[CaseSource, ...]  # sorted by (patient key, study order, case key)

    @property
    def unit_id(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

    def shard(self, config: str) -> str:
        return f"{config}/{keys.shard_name(self.split, self.index, self.count)}"


@dataclass(frozen=True)
class VolumeContext:
    output: str
    input_root: str
    families: Mapping
    pools: object
    seed: int
    findings: tuple[str, ...]
    target_shape: tuple[int, int, int]  # stored array (k, j, i)
    window: str = "soft_tissue"
    dtype: str = "float16"
    qa_settings: Mapping = field(default_factory=dict)
    fingerprint: str = ""
    max_voxels: int = 64_000_000


def plan_patient_units(cases, fractions, seed, patients_per_shard) -> list[VolumeUnit]:
    """Split by patient; range-partition each split's patients; keep a patient's studies together."""
    by_split: dict[str, dict[str, list[CaseSource]]] = {s: {} for s in fractions}
    for case in cases:
        split = keys.assign_split(case.patient_key, fractions, seed)
        by_split[split].setdefault(case.patient_key, []).append(case)
    units = []
    for split, patients in by_split.items():
        groups = keys.plan_shards(patients, patients_per_shard)
        for index, group in enumerate(groups):
            members = sorted((c for p in group for c in patients[p]),
                             key=lambda c: (c.patient_key, c.study_order, c.key))
            units.append(VolumeUnit(split, index, len(groups), tuple(members)))
    return units


def volume_array(image: np.ndarray, masks: Mapping[str, np.ndarray], spacing, target_shape,
                 window_name: str, modality: str, dtype: str):
    """Resample to ``target_shape`` (stored ``[k, j, i]``), window to [0, 1]; boxes on that grid."""
    tk, tj, ti = target_shape
    target = [image.shape[0] * spacing[0] / ti, image.shape[1] * spacing[1] / tj,
              image.shape[2] * spacing[2] / tk]
    vol = resample(image, spacing, target, nearest=False)[:ti, :tj, :tk]
    window = ct_window(window_name) if modality == "CT" else mr_window(image)
    scaled = apply_window(vol, window).astype(np.float32) / 255.0
    arr = np.ascontiguousarray(np.transpose(scaled, (2, 1, 0))).astype(dtype)
    boxes = []
    for label in sorted(masks):
        m = resample(masks[label], spacing, target, nearest=True)[:ti, :tj, :tk]
        box = mask_box(m)
        if box is not None:
            i0, j0, k0, i1, j1, k1 = box
            boxes.append({"label": label, "box": [k0, j0, i0, k1, j1, i1]})
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue(), [float(t) for t in (target[2], target[1], target[0])], boxes, window


def volume_record(case: CaseSource, split: str, volume, masks, pools, findings) -> dict:
    """Facts of one volume for question generation (small; no pixels)."""
    image, geometry = volume.array, volume.geometry
    organs = [label for label in sorted(masks) if not pools.is_lesion(label)]
    structures = []
    for label in organs:
        m = masks[label]
        structures.append({"label": label,
                           "volume_ml": round(int(m.sum()) * geometry.voxel_volume_mm3 / 1000.0, 6),
                           "mean_hu": round(float(image[m].mean()), 3)})
    lesions = [lesion_facts(label, masks[label], image, masks, geometry, organs)
               for label in sorted(masks) if pools.is_lesion(label)]
    return {
        "volume_id": keys.stable_key("volume", case.key),
        "case_key": case.key, "patient_key": case.patient_key, "split": split,
        "study_order": case.study_order, "modality": volume.modality,
        "spacing_mm": [float(s) for s in geometry.spacing],
        "structures": structures, "lesions": lesions,
        "findings": list(findings), "present": sorted({les["label"] for les in lesions} & set(findings)),
    }


def attach_history(records: list[dict]) -> None:
    """Give each record its patient's earlier presence per finding (records sorted by patient, order)."""
    seen: dict[str, list[dict]] = {}
    for r in records:
        earlier = [p for p in seen.get(r["patient_key"], []) if p["study_order"] < r["study_order"]]
        r["history_orders"] = [p["study_order"] for p in earlier]
        r["history"] = {f: [int(f in p["present"]) for p in earlier] for f in r["findings"]}
        seen.setdefault(r["patient_key"], []).append(r)


def extract_volume_unit(unit: VolumeUnit, ctx: VolumeContext):
    """Read every case of ``unit``; write its ``volumes`` shard; return facts, report, dead letters."""
    from pipeline.units import _internal, _stage_counts, dead_letter

    rows, records, dead = [], [], []
    rejected: Counter = Counter()
    inputs = {}
    for case in unit.cases:
        try:
            volume, masks, digest, _ = load_case(case, ctx.input_root, ctx.max_voxels)
            record = volume_record(case, unit.split, volume, masks, ctx.pools, ctx.findings)
            npy, target_spacing, boxes, window = volume_array(
                volume.array, masks, volume.geometry.spacing, ctx.target_shape, ctx.window,
                volume.modality, ctx.dtype)
        except CaseError as err:
            dead.append(dead_letter(case, err))
            rejected[err.reason] += 1
            continue
        except Exception as exc:  # never crash the build on one case
            err = _internal("extract", exc)
            dead.append(dead_letter(case, err))
            rejected[err.reason] += 1
            continue
        inputs[case.key] = digest
        records.append(record)
        rows.append({
            "volume_id": record["volume_id"], "case_key": case.key, "patient_key": case.patient_key,
            "split": unit.split, "study_order": case.study_order, "modality": volume.modality,
            "npy": npy, "shape": list(ctx.target_shape),
            "original_spacing_mm": [float(s) for s in reversed(volume.geometry.spacing)],
            "target_spacing_mm": target_spacing, "window": window.name, "boxes3d": boxes,
        })
    attach_history(records)
    rows.sort(key=lambda r: r["volume_id"])
    receipt = shards.write_parquet(ctx.output, unit.shard("volumes"), rows, VOLUMES_SCHEMA)
    report = {
        "unit": unit.unit_id, "split": unit.split, "files": {receipt.path: receipt.as_dict()},
        "inputs": dict(sorted(inputs.items())),
        "counts": {"read": _stage_counts(len(unit.cases), rejected)},
        "rows": {"cases": len(records), "volumes": len(rows)},
    }
    return records, report, dead


def existence_candidates(records: list[dict], families, pools, seed, settings):
    """``(split, finding, answer, u)`` of every existence question the records would get."""
    from pipeline.questions import generate_questions

    out = []
    wanted = {k: f for k, f in families.items() if f.generator == "existence3d"}
    for r in records:
        for row in generate_questions(r, wanted, pools, seed=seed, settings=settings):
            finding, u = row["balance"]
            out.append((r["split"], finding, row["answer"], u))
    return out


def render_volume_unit(unit: VolumeUnit, records: list[dict], report: dict, ctx: VolumeContext,
                       thresholds: Mapping):
    """All six tasks for the unit's volumes, existence balanced; writes the ``qa`` shard."""
    from pipeline.questions import generate_questions

    rows = []
    for r in records:
        for row in generate_questions(r, ctx.families, ctx.pools, seed=ctx.seed, settings=ctx.qa_settings):
            if "balance" in row:
                finding, u = row["balance"]
                if not keep_existence(r["split"], finding, row["answer"], u, thresholds):
                    continue
            rows.append({
                "qa_id": row["qa_id"], "volume_id": r["volume_id"], "case_key": r["case_key"],
                "split": r["split"], "task": row["task"], "subtask": row.get("subtask", ""),
                "family": row["family"], "question_type": row["question_type"],
                "question": row["question"], "options": row["options"], "answer": row["answer"],
                "answer_text": row["answer_text"], "answer_value": row.get("answer_value"),
                "answer_unit": row.get("answer_unit"), "answer_tolerance": row.get("answer_tolerance"),
                "template_id": row["template_id"],
            })
    rows.sort(key=lambda x: x["qa_id"])
    receipt = shards.write_parquet(ctx.output, unit.shard("qa"), rows, QA3D_SCHEMA)
    report = dict(report)
    report["files"] = dict(report["files"]) | {receipt.path: receipt.as_dict()}
    report["rows"] = dict(report["rows"]) | {"qa": len(rows)}
    tasks = Counter()
    dist: dict[str, Counter] = {}
    for row in rows:
        tasks[row["task"]] += 1
        answer = "<numeric>" if row["answer_value"] is not None else row["answer_text"]
        dist.setdefault(row["task"], Counter())[answer] += 1
    report["tasks"] = dict(sorted(tasks.items()))
    report["answers"] = {t: dict(sorted(c.items())) for t, c in sorted(dist.items())}
    report["fingerprint"] = ctx.fingerprint
    return report


def _schema(fields):
    from pipeline.arrow import with_hf_metadata

    return with_hf_metadata(fields)


VOLUMES_SCHEMA = _schema(VOLUME_FIELDS)
QA3D_SCHEMA = _schema(QA3D_FIELDS)
