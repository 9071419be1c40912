"""Slice-level generators (RadVUQA-style task families) for the ``slices`` kind.

Records are slice records (``docs/conventions.md``): ``image_id, case_key, split,
modality, plane, slice_index, width, height, boxes`` (one per structure on the slice:
``label``, box, ``area_px``, ``components``, ``centroid_lps``, ``laterality``) and
``case_labels`` (every label of the case's label table).

Context fields available to variants (declare them in ``requires``):

==================  =========================================================
``plane``           ``axial`` / ``coronal`` / ``sagittal``
``modality_name``   ``CT`` or ``MRI``
``structure``       display name of the target structure
``structure_a/_b``  the two structures of a comparison
``box``             ``[x_min, y_min, x_max, y_max]`` in pixels (max exclusive)
``side``            ``left`` / ``right`` (the patient's)
``relation``        e.g. ``to the patient's left of``, ``anterior to``, ``above``
``options``         the options of a multiple-choice question, in order
==================  =========================================================

Boxes follow the stored-image convention: x = column, y = row, minima
inclusive, maxima exclusive.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.qa.generators.common import MODALITY_NAMES, coin, pick

#: LPS axis, word when the first structure's coordinate is larger, word when smaller.
RELATIONS = {
    0: ("to the patient's left of", "to the patient's right of"),
    1: ("posterior to", "anterior to"),
    2: ("above", "below"),
}
PLANE_AXES = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}


def _box_text(b: Mapping) -> str:
    return f"[{b['x_min']}, {b['y_min']}, {b['x_max']}, {b['y_max']}]"


def _eligible(image: Mapping, settings: Mapping) -> list[Mapping]:
    boxes = [b for b in image["boxes"] if b["area_px"] >= settings["min_area_px"]]
    return sorted(boxes, key=lambda b: b["label"])


def _base(image: Mapping) -> dict:
    return {"plane": image["plane"], "modality_name": MODALITY_NAMES.get(image["modality"], image["modality"])}


def gen_structure_identification(image, family, pools, gen, settings):
    target = pick(gen, _eligible(image, settings))
    if target is None:
        return None
    box = [int(target[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
    ctx = _base(image) | {"box": _box_text(target)}
    if family.question_type == "multiple_choice":
        label = target["label"]
        candidates = None if pools.known(label) else [c for c in image["case_labels"] if not pools.known(c)]
        distractors = pools.distractors(label, 3, gen, candidates=candidates)
        if len(distractors) < 3:
            return None
        return {"context": ctx, "correct": pools.display(label),
                "distractors": [pools.display(d) for d in distractors], "question_box": box,
                "label": label if pools.known(label) else None, "pool": pools.region_of(label),
                "exclude": []}
    return {"context": ctx, "answer": pools.display(target["label"]), "question_box": box}


def gen_existence(image, family, pools, gen, settings):
    present = _eligible(image, settings)
    on_slice = {b["label"] for b in image["boxes"]}
    regions = {pools.region_of(b["label"]) for b in present} - {None}
    absent = sorted(c for c in image["case_labels"] if c not in on_slice)
    near = [c for c in absent if pools.region_of(c) in regions] or absent
    want_yes = coin(gen)
    if want_yes and not present:
        want_yes = False
    if not want_yes and not near:
        want_yes = True
    if want_yes and not present:
        return None
    label = pick(gen, present)["label"] if want_yes else pick(gen, near)
    return {"context": _base(image) | {"structure": pools.display(label)},
            "answer": "yes" if want_yes else "no"}


def gen_laterality(image, family, pools, gen, settings):
    if image["plane"] == "sagittal":
        return None
    sided = [b for b in _eligible(image, settings) if b["laterality"] in ("left", "right")]
    target = pick(gen, sided)
    if target is None:
        return None
    ctx = _base(image) | {"structure": pools.display(target["label"])}
    truth = target["laterality"]
    if family.question_type == "closed":
        yes = coin(gen)
        side = truth if yes else ("right" if truth == "left" else "left")
        return {"context": ctx | {"side": side}, "answer": "yes" if yes else "no"}
    return {"context": ctx, "answer": truth}


def gen_relative_position(image, family, pools, gen, settings):
    boxes = _eligible(image, settings)
    pairs = []
    for n, a in enumerate(boxes):
        for b in boxes[n + 1:]:
            if pools.related(a["label"], b["label"]):
                continue
            for axis in PLANE_AXES[image["plane"]]:
                if abs(a["centroid_lps"][axis] - b["centroid_lps"][axis]) >= settings["min_separation_mm"]:
                    pairs.append((a, b, axis))
    choice = pick(gen, pairs)
    if choice is None:
        return None
    a, b, axis = choice
    if coin(gen):
        a, b = b, a
    larger, smaller = RELATIONS[axis]
    truth = larger if a["centroid_lps"][axis] > b["centroid_lps"][axis] else smaller
    yes = coin(gen)
    relation = truth if yes else (smaller if truth == larger else larger)
    return {
        "context": _base(image) | {"structure_a": pools.display(a["label"]),
                                   "structure_b": pools.display(b["label"]), "relation": relation},
        "answer": "yes" if yes else "no",
    }


def gen_size_comparison(image, family, pools, gen, settings):
    boxes = _eligible(image, settings)
    pairs = [
        (a, b) for n, a in enumerate(boxes) for b in boxes[n + 1:]
        if max(a["area_px"], b["area_px"]) >= settings["min_size_ratio"] * min(a["area_px"], b["area_px"])
        and not pools.related(a["label"], b["label"])
    ]
    choice = pick(gen, pairs)
    if choice is None:
        return None
    a, b = choice if coin(gen) else choice[::-1]
    larger, smaller = (a, b) if a["area_px"] > b["area_px"] else (b, a)
    if family.question_type == "closed":
        yes = coin(gen)
        a, b = (larger, smaller) if yes else (smaller, larger)
    ctx = _base(image) | {"structure_a": pools.display(a["label"]), "structure_b": pools.display(b["label"])}
    if family.question_type == "closed":
        return {"context": ctx, "answer": "yes" if yes else "no"}
    return {"context": ctx, "answer": pools.display(larger["label"])}


def gen_component_count(image, family, pools, gen, settings):
    boxes = _eligible(image, settings)
    multi = [b for b in boxes if b["components"] >= 2]
    target = pick(gen, multi) if multi and coin(gen) else pick(gen, boxes)
    if target is None:
        return None
    return {"context": _base(image) | {"structure": pools.display(target["label"])},
            "answer": str(int(target["components"]))}


def gen_grounding(image, family, pools, gen, settings):
    target = pick(gen, _eligible(image, settings))
    if target is None:
        return None
    box = [int(target[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
    return {"context": _base(image) | {"structure": pools.display(target["label"])},
            "answer": _box_text(target), "answer_box": box}


GENERATORS = {
    "structure_identification": gen_structure_identification,
    "existence": gen_existence,
    "laterality": gen_laterality,
    "relative_position": gen_relative_position,
    "size_comparison": gen_size_comparison,
    "component_count": gen_component_count,
    "grounding": gen_grounding,
}
