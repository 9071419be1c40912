"""Lint of template families against their generators (``radvqa lint``).

:func:`lint` runs each family's generator on synthetic records (:func:`lint_records`) and
renders every variant against the contexts it produces, so a variable a generator does
not provide, or a variant that fails on real values, is reported before any build;
:func:`class_list_problems` reports a built-in layout class name the pools lack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.core import keys
from pipeline.errors import CaseError
from pipeline.qa.generators import GENERATORS, volumes
from pipeline.qa.questions import DEFAULT_SETTINGS, assemble
from pipeline.qa.templates import TemplateFamily, render


def lint(families: Mapping[str, TemplateFamily], pools) -> list[str]:
    """Render every variant of every family against generator contexts; list problems.

    A generator that fails on the lint records is reported as a problem naming the
    family file, not raised.
    """
    problems = []
    for fam in families.values():
        contexts = []
        try:
            for record in lint_records(pools, fam.generator):
                gen = _lint_rng(fam, record)
                made = GENERATORS[fam.generator](record, fam, pools, gen, DEFAULT_SETTINGS)
                for item in made if isinstance(made, list) else [made] if made is not None else []:
                    contexts.append(assemble(fam, item, gen)["context"])
        except Exception as err:
            problems.append(
                f"{fam.source}: generator {fam.generator} failed on the lint records: "
                f"{type(err).__name__}: {err}"
            )
            continue
        if not contexts:
            problems.append(f"{fam.source}: generator {fam.generator} produced no question on the lint records")
            continue
        provided = set(contexts[0])
        missing = sorted(set(fam.requires) - provided)
        if missing:
            problems.append(f"{fam.source}: requires: {missing} not provided by generator {fam.generator}")
            continue
        for variant in fam.variants:
            for context in contexts[:3]:
                try:
                    render(fam, variant, context)
                except CaseError as err:
                    problems.append(err.message)
                    break
    return problems


def class_list_problems(class_lists: Mapping[str, Sequence[str]], pools) -> list[str]:
    """One problem per built-in class list (``{what: names}``) naming the names ``pools``
    lack: a structure of a built-in layout must have a display name, region and distractors."""
    problems = []
    for what, names in class_lists.items():
        missing = [name for name in names if not pools.known(name)]
        if missing:
            problems.append(f"{what}: {len(missing)} class name(s) the pools lack: "
                            f"{', '.join(missing)}")
    return problems


def _lint_rng(fam, record):
    return keys.KeyedStream(0, record["image_id"], f"lint/{fam.family}")


def lint_records(pools, generator: str | None = None) -> list[dict]:
    """Synthetic records that give every generator something to ask: labelled-tree
    images, volume facts (for the volume-level generators) or slice records."""
    if generator in volumes.GENERATORS:
        return _volume_lint_records()
    if hasattr(pools, "modality_display"):  # labelled-tree pools
        out = []
        for m in sorted(pools.modalities):
            for region in pools.regions(m)[:2]:
                for label in (pools.labels(m, region)[0], pools.normal_label):
                    out.append({"image_id": keys.stable_key("lint", m, region, label),
                                "case_key": "0" * 20, "split": "test", "modality": m,
                                "region": region, "label": label})
        return out

    def box(label, x0, y0, x1, y1, lps, side, comps=1):
        return {"label": label, "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1,
                "area_px": (x1 - x0) * (y1 - y0), "area_mm2": float((x1 - x0) * (y1 - y0)),
                "components": comps, "centroid_x": (x0 + x1) / 2, "centroid_y": (y0 + y1) / 2,
                "centroid_lps": lps, "laterality": side}

    boxes = [
        box("liver", 5, 10, 40, 50, [-70.0, -10.0, 150.0], "right"),
        box("spleen", 70, 30, 85, 50, [80.0, 40.0, 150.0], "left"),
        box("kidney_left", 60, 55, 72, 70, [55.0, 55.0, 150.0], "left"),
        box("colon", 10, 60, 90, 80, [0.0, 20.0, 150.0], "midline", comps=2),
        box("aorta", 48, 50, 54, 56, [10.0, 40.0, 150.0], "midline"),
    ]
    labels = sorted({b["label"] for b in boxes} | {"stomach", "pancreas", "gallbladder", "kidney_right"})
    out = []
    for plane in ("axial", "coronal"):
        out.append({"image_id": keys.stable_key("lint", plane), "case_key": "0" * 20, "split": "train",
                    "modality": "CT", "plane": plane, "slice_index": 10, "width": 96, "height": 96,
                    "spacing_mm": [1.5, 1.5], "prompt_label": "liver", "boxes": boxes,
                    "case_labels": labels})
    user = [box("organ_a", 5, 5, 30, 30, [-50.0, 0.0, 0.0], "right"),
            box("organ_b", 60, 5, 90, 30, [50.0, 0.0, 0.0], "left")]
    out.append({"image_id": keys.stable_key("lint", "user"), "case_key": "1" * 20, "split": "train",
                "modality": "MR", "plane": "axial", "slice_index": 3, "width": 96, "height": 96,
                "spacing_mm": [2.0, 2.0], "prompt_label": "organ_a", "boxes": user, "case_labels": ["organ_a", "organ_b", "organ_c", "organ_d"]})
    return out


def _volume_lint_records() -> list[dict]:
    findings = ["liver_tumor", "lung_nodules", "kidney_cyst_left", "kidney_cyst_right"]
    structures = [{"label": "liver", "volume_ml": 1510.2, "mean_hu": 58.1},
                  {"label": "spleen", "volume_ml": 210.7, "mean_hu": 44.9},
                  {"label": "kidney_left", "volume_ml": 160.3, "mean_hu": 30.2}]
    tumor = {"label": "liver_tumor", "organ": "liver", "voxels": 420, "volume_ml": 21.3,
             "long_mm": 41.2, "short_mm": 30.5, "axial_k": 30, "max_diameter_mm": 44.0,
             "mean_hu": 15.2, "organ_mean_hu": 60.1, "density": "hypodense"}
    out = []
    for order, lesions in ((1, []), (2, [tumor])):
        volume_id = keys.stable_key("lint-volume", order)
        present = sorted({les["label"] for les in lesions} & set(findings))
        out.append({
            "volume_id": volume_id, "image_id": volume_id, "case_key": "0" * 20,
            "patient_key": "1" * 20, "split": "train", "study_order": order, "modality": "CT",
            "spacing_mm": [0.8, 0.8, 2.0], "structures": structures, "lesions": lesions,
            "findings": findings, "present": present,
            "history_orders": [1] if order == 2 else [],
            "history": {f: [0] for f in findings} if order == 2 else {f: [] for f in findings},
        })
    return out
