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
``colour``          colour of the visual prompt's target box (``red``)
``axis``            ``left-right`` / ``front-to-back`` / ``top-to-bottom``
``threshold``       a length in mm (``extent_closed``)
==================  =========================================================

Visual prompts: ``prompt_identification`` and ``physiology`` ask about the structure
outlined in red on the slice's ``image_boxed`` / ``image_boxed_easy`` (chosen at
extraction, ``prompt_label``); the text never holds the box's coordinates, which told a
text-only model the answer (``structure_identification`` quotes them, kept for custom
templates: the learned text-only baseline picked its answer from the coordinates 86 % of the
time against 25 % chance, README "Box questions").

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


def _some(gen, items: list, settings: Mapping) -> list:
    """Up to ``settings["per_image"]`` of ``items``, drawn from ``gen`` without repeats."""
    rest = list(items)
    out = []
    while rest and len(out) < max(1, int(settings["per_image"])):
        out.append(rest.pop(int(gen.integers(len(rest)))))
    return out


def _one_or_many(made: list):
    return None if not made else made[0] if len(made) == 1 else made


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
    made = []
    for target in _some(gen, sided, settings):
        ctx = _base(image) | {"structure": pools.display(target["label"])}
        truth = target["laterality"]
        if family.question_type == "closed":
            yes = coin(gen)
            side = truth if yes else ("right" if truth == "left" else "left")
            made.append({"context": ctx | {"side": side}, "answer": "yes" if yes else "no"})
        else:
            made.append({"context": ctx, "answer": truth})
    return _one_or_many(made)


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
    made = []
    for a, b, axis in _some(gen, pairs, settings):
        if coin(gen):
            a, b = b, a
        larger, smaller = RELATIONS[axis]
        truth = larger if a["centroid_lps"][axis] > b["centroid_lps"][axis] else smaller
        yes = coin(gen)
        relation = truth if yes else (smaller if truth == larger else larger)
        made.append({
            "context": _base(image) | {"structure_a": pools.display(a["label"]),
                                       "structure_b": pools.display(b["label"]), "relation": relation},
            "answer": "yes" if yes else "no",
        })
    return _one_or_many(made)


def gen_size_comparison(image, family, pools, gen, settings):
    boxes = _eligible(image, settings)
    pairs = [
        (a, b) for n, a in enumerate(boxes) for b in boxes[n + 1:]
        if max(a["area_px"], b["area_px"]) >= settings["min_size_ratio"] * min(a["area_px"], b["area_px"])
        and not pools.related(a["label"], b["label"])
    ]
    made = []
    for choice in _some(gen, pairs, settings):
        a, b = choice if coin(gen) else choice[::-1]
        larger, smaller = (a, b) if a["area_px"] > b["area_px"] else (b, a)
        if family.question_type == "closed":
            yes = coin(gen)
            a, b = (larger, smaller) if yes else (smaller, larger)
        ctx = _base(image) | {"structure_a": pools.display(a["label"]), "structure_b": pools.display(b["label"])}
        if family.question_type == "closed":
            made.append({"context": ctx, "answer": "yes" if yes else "no"})
        elif family.question_type == "multiple_choice":  # the two structures as options
            made.append({"context": ctx, "correct": pools.display(larger["label"]),
                         "distractors": [pools.display(smaller["label"])]})
        else:
            made.append({"context": ctx, "answer": pools.display(larger["label"])})
    return _one_or_many(made)


#: Lengths offered by ``extent_closed`` (mm) and the display axis each extent is along.
THRESHOLDS_MM = (10, 15, 20, 30, 40, 50, 60, 80, 100, 120, 150)
EXTENT_AXES = {"axial": ("left-right", "front-to-back"), "coronal": ("left-right", "top-to-bottom"),
               "sagittal": ("front-to-back", "top-to-bottom")}


def gen_extent(image, family, pools, gen, settings):
    """Is a structure's extent along a display axis longer than a length (mm)?  The length
    is drawn from :data:`THRESHOLDS_MM` between half and twice the true extent, at least
    15 % away from it; corpus-wide balancing keeps, per structure, axis and length, as
    many yes as no."""
    if not image.get("spacing_mm"):
        return None
    made = []
    dx, dy = image["spacing_mm"]
    for target in _some(gen, _eligible(image, settings), settings):
        n = int(gen.integers(2))
        axis = EXTENT_AXES[image["plane"]][n]
        extent = (target["x_max"] - target["x_min"]) * dx if n == 0 else (target["y_max"] - target["y_min"]) * dy
        near = [t for t in THRESHOLDS_MM if extent / 2 <= t <= extent * 2 and abs(t - extent) >= 0.15 * extent]
        threshold = pick(gen, near)
        if threshold is None:
            continue
        made.append({"context": _base(image) | {"structure": pools.display(target["label"]), "axis": axis,
                                                "threshold": str(threshold)},
                     "answer": "yes" if extent > threshold else "no"})
    return _one_or_many(made)


def _prompt(image):
    label = image.get("prompt_label")
    return next((b for b in image["boxes"] if b["label"] == label), None) if label else None


def gen_prompt_identification(image, family, pools, gen, settings):
    """The structure outlined in red (the visual prompt; no coordinates in the text)."""
    target = _prompt(image)
    if target is None:
        return None
    ctx = _base(image) | {"colour": "red"}
    label = target["label"]
    if family.question_type == "multiple_choice":
        candidates = None if pools.known(label) else [c for c in image["case_labels"] if not pools.known(c)]
        distractors = pools.distractors(label, 3, gen, candidates=candidates)
        if len(distractors) < 3:
            return None
        return {"context": ctx, "correct": pools.display(label),
                "distractors": [pools.display(d) for d in distractors], "visual_prompt": "red_box",
                "label": label if pools.known(label) else None,
                "pool": f"{pools.region_of(label)}|{ctx['plane']}|{ctx['modality_name']}", "exclude": []}
    return {"context": ctx, "answer": pools.display(label), "visual_prompt": "red_box"}


def gen_physiology(image, family, pools, gen, settings):
    """The main function of the structure outlined in red: options are functions of
    structures of other body systems, pairwise of distinct systems
    (:meth:`~pipeline.qa.pools.Pools.related`), so no two options mean nearly the same."""
    target = _prompt(image)
    answer = pools.function_label(target["label"]) if target is not None else None
    if answer is None:
        return None
    distractors = pools.distractors(answer, 3, gen, candidates=pools.function_labels())
    if len(distractors) < 3:
        return None
    ctx = _base(image) | {"colour": "red"}
    return {"context": ctx, "correct": pools.display(answer),
            "distractors": [pools.display(d) for d in distractors], "visual_prompt": "red_box",
            "label": answer, "pool": f"physiology|{ctx['plane']}|{ctx['modality_name']}", "exclude": []}


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
    "extent": gen_extent,
    "prompt_identification": gen_prompt_identification,
    "physiology": gen_physiology,
}
