"""Corpus kind ``volumes`` (3D-RAD style): whole CT volumes → volume-level questions.

A unit holds whole patients — every study of a patient lands in the same unit, so the
temporal questions see the patient's history without a shuffle.  Extraction reads each
case (the same readers as slice extraction), computes its facts (:mod:`pipeline.core.volume_facts`:
structure volumes and mean HU, lesion host organ, size, diameter and density) and writes
the ``volumes`` shard: each volume resampled to the recipe's target shape, windowed to
[0, 1] and stored as ``.npy`` bytes, with its original and target spacing, its 3D boxes on
the target grid and its facts.  Questions are rendered from the facts (the rows without
``npy``), existence balanced across the corpus.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core import keys
from pipeline.core.boxes import mask_box
from pipeline.core.masks import as_mask
from pipeline.core.slices import apply_window, ct_window, mr_window, resample
from pipeline.core.volume_facts import lesion_facts
from pipeline.engine import ood, qa_blocks
from pipeline.engine.extract import load_case
from pipeline.engine.units import plan_split_shards
from pipeline.inputs import sample
from pipeline.inputs.discovery import CaseSource
from pipeline.inputs.layouts import ctrate, get_layout
from pipeline.inputs.sample_ctrate import SAMPLE_VERSION as CTRATE_SAMPLE_VERSION
from pipeline.inputs.sample_ctrate import write_ctrate_sample
from pipeline.inputs.tree import InputTree
from pipeline.kinds.base import Planned, VolumeKind, phantom_input
from pipeline.qa.audit import merge, partial_counts
from pipeline.schema import kernels, pyarrays
from pipeline.schema.arrow import OOD3D_SCHEMA, QA3D_SCHEMA, VOLUMES_SCHEMA
from pipeline.schema.records import CaseResult

VOLUME_QA_VERSION = "3"  # cropped masks, CT-RATE findings, order-free options


@dataclass(frozen=True)
class VolumeSettings:
    """How volumes are stored (the recipe's ``volumes`` section)."""

    target_shape: tuple[int, int, int] = (32, 128, 128)  # stored array (k, j, i)
    window: str = "soft_tissue"
    dtype: str = "float16"
    max_voxels: int = 64_000_000

    def __post_init__(self) -> None:
        if len(self.target_shape) != 3 or min(self.target_shape) < 1:
            raise ValueError(f"volumes.target_shape: found {self.target_shape}, expected 3 sizes >= 1")
        ct_window(self.window)
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"volumes.dtype: found {self.dtype!r}, expected float16 or float32")


class VolumesKind(VolumeKind):
    name = "volumes"
    version = VOLUME_QA_VERSION
    pixel_configs = ("volumes",)
    payload_configs = ("volumes",)
    stored_configs = ("volumes",)
    configs = ("qa", "volumes", "ood")
    key_column = {"volumes": "case_key"}
    heavy_columns = frozenset({"npy"})
    schemas = {"volumes": VOLUMES_SCHEMA, "qa": QA3D_SCHEMA, "ood": OOD3D_SCHEMA}
    ood_source = ood.VOLUMES
    sample_folder = "sample-longitudinal"
    sample_patients = 4
    shard_size = ("patients_per_shard", 8)
    # finished rows kept per family (pipeline.engine.qa_blocks): every balancing rule is
    # keyed by its family and a record's questions see only its unit's records (the
    # patient's history), so an unedited family's rows stand while the units' shards do
    qa_blocks = True

    # -- launcher ----------------------------------------------------------------------
    def read_settings(self, recipe) -> VolumeSettings:
        vol, source = recipe.section("volumes"), recipe.section("source")
        return VolumeSettings(
            target_shape=tuple(int(x) for x in vol.get("target_shape", (32, 128, 128))),
            window=vol.get("window", "soft_tissue"), dtype=vol.get("dtype", "float16"),
            max_voxels=int(source.get("max_voxels", 64_000_000)))

    def write_sample(self, root: str, n_patients: int) -> None:
        sample.write_longitudinal_sample(root, n_patients=n_patients)

    def sample_input(self, output: str, recipe, log) -> str:
        """The CT-RATE-shaped sample for a ``ct-rate`` recipe, else the longitudinal phantom."""
        if recipe.section("source").get("layout") != ctrate.LAYOUT.name:
            return super().sample_input(output, recipe, log)
        n = int(recipe.section("source").get("sample_patients", self.sample_patients))
        return phantom_input(output, "sample-ct-rate", f"{sample.SAMPLE_VERSION}:ct-rate-{CTRATE_SAMPLE_VERSION}:{n}", log,
                             lambda root: write_ctrate_sample(root, n_patients=n))

    def discover_stats(self, cases: list[CaseSource]) -> dict:
        return {"patients": len({c.patient_key for c in cases})}

    def plan(self, cases, recipe, seed: int, prep: dict) -> Planned:
        """By patient: all studies of a patient in one unit, ordered by study; an official
        split (``meta.csv``, or CT-RATE's ``train``/``valid`` prefix) wins over the keyed draw."""
        chosen, _ = self.patient_splits(cases, recipe, seed)
        return plan_split_shards(
            cases, lambda c: chosen[c.patient_key], list(recipe.section("splits")["fractions"]),
            prep["per_shard"], group_of=lambda c: c.patient_key,
            order=lambda c: (c.patient_key, c.study_order, c.key))

    def manifest_extras(self, output, receipts, extras) -> tuple[dict, list[str], list[str]]:
        """The per-task answer distribution: in the manifest, the card and the summary."""
        answers: dict[str, Counter] = {}
        for r in receipts:
            for task, dist in r.get("answers", {}).items():
                answers.setdefault(task, Counter()).update(dist)
        out = {t: dict(sorted(c.items())) for t, c in sorted(answers.items())}
        card = ["", "## Answer distribution per task", "", "| task | answers |", "|---|---|"]
        card += [f"| {t} | " + ", ".join(f"{a}: {n}" for a, n in d.items()) + " |"
                 for t, d in out.items()]
        card += ["", "`volumes` rows hold `.npy` bytes (`numpy.load(io.BytesIO(row['npy']))`), "
                 "shape `[k, j, i]` (axial slices inferior to superior, each in display "
                 "orientation), windowed to [0, 1]; `boxes3d` are `[k0, j0, i0, k1, j1, i1]` on "
                 "that grid, maxima exclusive; `structures` and `lesions` hold the facts the "
                 "answers were computed from (mL, mm, HU). Numeric answers carry `answer_value`, "
                 "`answer_unit` and `answer_tolerance` for grading."]
        return {"answers": out}, card, answer_lines(out)

    # -- extraction --------------------------------------------------------------------
    def extract_case(self, case: CaseSource, split: str, ctx) -> CaseResult:
        s: VolumeSettings = ctx.settings
        with InputTree(ctx.input_root).local(self.case_paths(case)) as root:
            labelled = getattr(get_layout(case.layout), "label_findings", False)
            if labelled:  # findings from the source's label table, no masks (CT-RATE)
                loaded = get_layout(case.layout).load(case, root, s.max_voxels)
                volume, masks, notes = loaded.volume, {}, dict(loaded.notes)
                digest = keys.digest(*loaded.digests)
            else:
                volume, masks, digest, notes = load_case(case, root, s.max_voxels)
        facts = volume_facts(volume, masks, ctx.pools)
        npy, target_spacing, boxes, window = volume_array(
            volume.array, masks, volume.geometry.spacing, s.target_shape, s.window,
            volume.modality, s.dtype)
        row = {
            "volume_id": keys.stable_key("volume", case.key), "case_key": case.key,
            "patient_key": case.patient_key, "split": split, "study_order": case.study_order,
            "modality": volume.modality, "npy": npy, "shape": list(s.target_shape),
            "original_spacing_mm": [float(x) for x in reversed(volume.geometry.spacing)],
            "target_spacing_mm": target_spacing, "window": window.name, "boxes3d": boxes,
            **facts, "labelled_findings": sorted(loaded.findings or ()) if labelled else None,
        }
        return CaseResult({"volumes": [row]}, digest, notes)

    def sort_table(self, config: str, table: pa.Table) -> pa.Table:
        return kernels.sort_by(table, [("volume_id", "ascending")])

    def records(self, payload: Mapping[str, pa.Table], split: str, ctx=None) -> list[dict]:
        findings = tuple((ctx.qa_settings if ctx else {}).get("findings", ()))
        records = [volume_record(row, findings) for row in payload["volumes"].to_pylist()]
        records.sort(key=lambda r: (r["patient_key"], r["study_order"], r["case_key"]))
        attach_history(records)
        return records

    # -- questions ---------------------------------------------------------------------
    def render(self, ref, records: list[dict], payload, ctx, rules, report, blocks=()):
        """``blocks``: finished rows of families not rendered here, with their counts
        (:mod:`pipeline.engine.qa_blocks`), merged in by ``qa_id``; the info's ``_blocks``
        gives the rendered families' counts for their blocks."""
        made, dead = self.questions(records, ctx, rules)
        rows = []
        for r, qa in made:
            for row in qa:
                rows.append({
                    "qa_id": row["qa_id"], "volume_id": r["volume_id"], "case_key": r["case_key"],
                    "split": r["split"], "task": row["task"], "subtask": row.get("subtask", ""),
                    "family": row["family"], "question_type": row["question_type"],
                    "question": row["question"], "options": row["options"],
                    "answer": row["answer"], "answer_text": row["answer_text"],
                    "answer_value": row.get("answer_value"), "answer_unit": row.get("answer_unit"),
                    "answer_tolerance": row.get("answer_tolerance"),
                    "template_id": row["template_id"],
                })
        rows.sort(key=lambda x: x["qa_id"])
        by_family: dict[str, list[dict]] = {f: [] for f in ctx.families}
        for row in rows:
            by_family[row["family"]].append(row)
        counts = {f: family_counts(fr) for f, fr in by_family.items()}
        table, stored = qa_blocks.merged(
            pyarrays.table(rows, QA3D_SCHEMA), blocks,
            None if len(made) == len(records) else [r["volume_id"] for r, _ in made], "volume_id",
            lambda b: family_counts(b.select(
                ["split", "task", "question_type", "question", "options", "answer",
                 "answer_text", "answer_value"]).to_pylist()))
        parts = [*counts.values(), *stored]
        tasks: Counter = Counter()
        dist: dict[str, Counter] = {}
        for part in parts:
            tasks.update(part["tasks"])
            for task, answers in part["answers"].items():
                dist.setdefault(task, Counter()).update(answers)
        info = {
            "records": len(records),
            "rows": {"cases": len(records), "volumes": len(records), "images": len(records),
                     "qa": table.num_rows},
            "tasks": dict(sorted(tasks.items())),
            "answers": {t: dict(sorted(c.items())) for t, c in sorted(dist.items())},
            "labels_unknown_to_pools": [],
            "audit": merge([part["audit"] for part in parts]),
            "_blocks": None if dead else counts,
        }
        tables = {"qa": table}
        ood_tables, ood_info = self.ood_tables(ref, records, ctx, report)
        tables |= ood_tables
        return tables, info | ood_info, dead


KIND = VolumesKind()


def family_counts(rows: list[dict]) -> dict:
    """A family's rows' counts in a unit (a block's metadata): ``tasks``, ``audit`` and
    ``answers`` (per task, numeric answers as ``<numeric>``)."""
    dist: dict[str, Counter] = {}
    for row in rows:
        answer = "<numeric>" if row["answer_value"] is not None else row["answer_text"]
        dist.setdefault(row["task"], Counter())[answer] += 1
    return {"tasks": dict(Counter(r["task"] for r in rows)), "audit": partial_counts("qa", rows),
            "answers": {t: dict(c) for t, c in dist.items()}}


def answer_lines(answers) -> list[str]:
    """The per-task answer distribution as summary lines."""
    lines = ["", "answer distribution per task:"]
    for task, dist in answers.items():
        total = sum(dist.values())
        top = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
        lines.append(f"  {task:<32} {total:>6}  "
                     + ", ".join(f"{a}: {c / total:.0%}" for a, c in top))
    return lines


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
        whole = as_mask(masks[label]).dense()  # one whole volume at a time
        m = resample(whole, spacing, target, nearest=True)[:ti, :tj, :tk]
        box = mask_box(m)
        if box is not None:
            i0, j0, k0, i1, j1, k1 = box
            boxes.append({"label": label, "box": [k0, j0, i0, k1, j1, i1]})
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue(), [float(t) for t in (target[2], target[1], target[0])], boxes, window


def volume_facts(volume, masks, pools) -> dict:
    """Structure and lesion facts of one volume (small; no pixels)."""
    image, geometry = volume.array, volume.geometry
    masks = {label: as_mask(m) for label, m in masks.items()}
    organs = [label for label in sorted(masks) if not pools.is_lesion(label)]
    structures = [
        {"label": label,
         "volume_ml": round(masks[label].voxels() * geometry.voxel_volume_mm3 / 1000.0, 6),
         "mean_hu": round(float(masks[label].values(image).mean()), 3)}
        for label in organs
    ]
    lesions = [lesion_facts(label, masks[label], image, masks, geometry, organs)
               for label in sorted(masks) if pools.is_lesion(label)]
    return {"structures": structures, "lesions": lesions}


def volume_record(row: Mapping, findings) -> dict:
    """The facts of one ``volumes`` row as a question-generation record."""
    lesions = list(row["lesions"])
    labelled = row.get("labelled_findings")
    if labelled is not None:  # a label table's findings: no mask facts, so no organ, size or density
        lesions += [label_lesion(f) for f in labelled if f not in {les["label"] for les in lesions}]
    return {
        "volume_id": row["volume_id"], "case_key": row["case_key"],
        "patient_key": row["patient_key"], "split": row["split"],
        "study_order": row["study_order"], "modality": row["modality"],
        "spacing_mm": [float(s) for s in reversed(row["original_spacing_mm"])],
        "structures": list(row["structures"]), "lesions": lesions,
        "findings": list(findings),
        "present": sorted({les["label"] for les in lesions} & set(findings)),
    }


def label_lesion(label: str) -> dict:
    """A finding known only from a label table, as a record's lesion: no organ, size or
    density, so the computation and observation generators pass it over."""
    return {"label": label, "organ": "", "voxels": 0, "volume_ml": None, "long_mm": None,
            "short_mm": None, "axial_k": None, "max_diameter_mm": None, "mean_hu": None,
            "organ_mean_hu": None, "density": ""}


def attach_history(records: list[dict]) -> None:
    """Give each record its patient's earlier presence per finding (records sorted by patient, order)."""
    seen: dict[str, list[dict]] = {}
    for r in records:
        earlier = [p for p in seen.get(r["patient_key"], []) if p["study_order"] < r["study_order"]]
        r["history_orders"] = [p["study_order"] for p in earlier]
        r["history"] = {f: [int(f in p["present"]) for p in earlier] for f in r["findings"]}
        seen.setdefault(r["patient_key"], []).append(r)
