"""Question generation from image records (RadVUQA-style task families).

``generate_questions(image, families, pools, seed=…)`` turns one image record
(``docs/conventions.md``) into QA rows.  Each family names a *generator* —
the Python that decides the target and the answer from the record's facts —
and holds paraphrase variants — the wording, rendered by sandboxed Jinja.

Every choice is seeded from ``(seed, image_id, purpose)``: the target, the
yes/no coin of closed questions, the distractors, the correct option's
position (uniform over A–D) and the variant.  Rows do not depend on the order
of boxes or labels in the record.

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

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Mapping

from pipeline.core import keys
from pipeline.qa.balance import mark as balance_mark
from pipeline.qa.templates import render

LETTERS = "ABCD"
DEFAULT_SETTINGS = {"min_area_px": 30, "min_separation_mm": 10.0, "min_size_ratio": 1.25}
MODALITY_NAMES = {"CT": "CT", "MR": "MRI"}
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


def _pick(gen, items: list):
    return items[int(gen.integers(len(items)))] if items else None


def _coin(gen) -> bool:
    return bool(gen.integers(2))


def _base(image: Mapping) -> dict:
    return {"plane": image["plane"], "modality_name": MODALITY_NAMES.get(image["modality"], image["modality"])}


# ------------------------------------------------------------------ generators
# Each returns None (no eligible target) or a dict with "context" and either
# "answer" (open/closed; optional "answer_box") or "correct" + "distractors" (MC).


def gen_structure_identification(image, family, pools, gen, settings):
    target = _pick(gen, _eligible(image, settings))
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
    want_yes = _coin(gen)
    if want_yes and not present:
        want_yes = False
    if not want_yes and not near:
        want_yes = True
    if want_yes and not present:
        return None
    label = _pick(gen, present)["label"] if want_yes else _pick(gen, near)
    return {"context": _base(image) | {"structure": pools.display(label)},
            "answer": "yes" if want_yes else "no"}


def gen_laterality(image, family, pools, gen, settings):
    if image["plane"] == "sagittal":
        return None
    sided = [b for b in _eligible(image, settings) if b["laterality"] in ("left", "right")]
    target = _pick(gen, sided)
    if target is None:
        return None
    ctx = _base(image) | {"structure": pools.display(target["label"])}
    truth = target["laterality"]
    if family.question_type == "closed":
        yes = _coin(gen)
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
    choice = _pick(gen, pairs)
    if choice is None:
        return None
    a, b, axis = choice
    if _coin(gen):
        a, b = b, a
    larger, smaller = RELATIONS[axis]
    truth = larger if a["centroid_lps"][axis] > b["centroid_lps"][axis] else smaller
    yes = _coin(gen)
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
    choice = _pick(gen, pairs)
    if choice is None:
        return None
    a, b = choice if _coin(gen) else choice[::-1]
    larger, smaller = (a, b) if a["area_px"] > b["area_px"] else (b, a)
    if family.question_type == "closed":
        yes = _coin(gen)
        a, b = (larger, smaller) if yes else (smaller, larger)
    ctx = _base(image) | {"structure_a": pools.display(a["label"]), "structure_b": pools.display(b["label"])}
    if family.question_type == "closed":
        return {"context": ctx, "answer": "yes" if yes else "no"}
    return {"context": ctx, "answer": pools.display(larger["label"])}


def gen_component_count(image, family, pools, gen, settings):
    boxes = _eligible(image, settings)
    multi = [b for b in boxes if b["components"] >= 2]
    target = _pick(gen, multi) if multi and _coin(gen) else _pick(gen, boxes)
    if target is None:
        return None
    return {"context": _base(image) | {"structure": pools.display(target["label"])},
            "answer": str(int(target["components"]))}


def gen_grounding(image, family, pools, gen, settings):
    target = _pick(gen, _eligible(image, settings))
    if target is None:
        return None
    box = [int(target[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
    return {"context": _base(image) | {"structure": pools.display(target["label"])},
            "answer": _box_text(target), "answer_box": box}


from pipeline.qa.questions3d import GENERATORS_3D  # noqa: E402  (after the shared helpers)

# ------------------------------------------- RadImageNet-style labelled images
# The record: image_id, case_key, split, modality, region, label; pools: LabelPools.


def _rin_base(image, pools) -> dict:
    m, r, label = image["modality"], image["region"], image["label"]
    return {
        "modality_name": MODALITY_NAMES.get(m, m),
        "modality_long": pools.modality_display(m),
        "region": pools.region_display(m, r),
        "pathology": pools.display(label),
        "is_normal": not pools.is_abnormal(label),
    }


def _other_regions(image, pools, k, gen) -> list[str]:
    """Up to ``k`` other regions of the same modality, as display names; regions of the
    other modalities only for a modality that has a single region (a CT question offering
    MR-only regions would be answerable without the image)."""
    m, r = image["modality"], image["region"]
    same = [x for x in pools.regions(m) if x != r]
    picks = [pools.region_display(m, x) for x in pools.draw(r, same, k, gen)] if same else []
    if not picks:
        mine = pools.region_display(m, r).lower()
        others = sorted({pools.region_display(om, x) for om in sorted(pools.modalities) if om != m
                         for x in pools.regions(om)} - {d for d in picks} - {pools.region_display(m, r)})
        others = [o for o in others if o.lower() != mine]
        while len(picks) < k and others:
            picks.append(others.pop(gen.integers(len(others))))
    return picks


def _region_labels(image, pools) -> list[str]:
    return list(pools.labels(image["modality"], image["region"]))


def _planned(image, family) -> dict | None:
    """What the launcher planned for this image's question (:mod:`pipeline.qa.tree_balance`)."""
    return (image.get("assign") or {}).get(family.family)


def gen_rin_anatomy_open(image, family, pools, gen, settings):
    ctx = _rin_base(image, pools)
    return {"context": ctx, "answer": ctx["region"]}


def gen_rin_anatomy_present(image, family, pools, gen, settings):
    return {"context": _rin_base(image, pools), "answer": "yes"}


def gen_rin_anatomy_absent(image, family, pools, gen, settings):
    plan = _planned(image, family)
    if plan:
        return {"context": _rin_base(image, pools) | {
            "wrong_region": pools.region_display(image["modality"], plan["wrong"])},
            "answer": "no", "variant": plan["variant"]}
    wrong = _other_regions(image, pools, 1, gen)
    if not wrong:
        return None
    return {"context": _rin_base(image, pools) | {"wrong_region": wrong[0]}, "answer": "no"}


def gen_rin_anatomy_mc(image, family, pools, gen, settings):
    ctx = _rin_base(image, pools)
    plan = _planned(image, family) or {}
    position = {"position": plan["position"]} if "position" in plan else {}
    if "distractors" in plan:
        return {"context": ctx, "correct": ctx["region"], **position,
                "distractors": [pools.region_display(image["modality"], r) for r in plan["distractors"]]}
    wrong = _other_regions(image, pools, 3, gen)
    if not wrong:
        return None
    return {"context": ctx, "correct": ctx["region"], "distractors": wrong, **position}


def gen_rin_abnormality(image, family, pools, gen, settings):
    ctx = _rin_base(image, pools)
    plan = _planned(image, family)
    # polarity: planned by rank, else a coin; yes/no stays 50/50 whatever the abnormal rate
    ask_normal = plan["ask_normal"] if plan else _coin(gen)
    abnormal = not ctx["is_normal"]
    return {"context": ctx | {"ask_normal": ask_normal},
            "answer": "yes" if abnormal != ask_normal else "no"}


def gen_rin_pathology_open(image, family, pools, gen, settings):
    ctx = _rin_base(image, pools)
    return {"context": ctx, "answer": ctx["pathology"]}


def _target(pools, label) -> dict:
    """The label a closed pathology question asks about; ``normal`` is asked as "free of
    pathology", the same wording whether the answer is yes or no."""
    return {"target": pools.display(label), "target_is_normal": not pools.is_abnormal(label)}


def gen_rin_pathology_present(image, family, pools, gen, settings):
    return {"context": _rin_base(image, pools) | _target(pools, image["label"]), "answer": "yes"}


def gen_rin_pathology_absent(image, family, pools, gen, settings):
    plan = _planned(image, family)
    if plan:
        return {"context": _rin_base(image, pools) | _target(pools, plan["wrong"]),
                "answer": "no", "variant": plan["variant"]}
    label = image["label"]
    candidates = [x for x in _region_labels(image, pools) if pools.is_abnormal(x)]
    wrong = pools.draw(label, candidates, 1, gen)
    if not wrong:
        return None
    return {"context": _rin_base(image, pools) | _target(pools, wrong[0]), "answer": "no"}


def gen_rin_pathology_mc(image, family, pools, gen, settings):
    label = image["label"]
    ctx = _rin_base(image, pools)
    plan = _planned(image, family) or {}
    position = {"position": plan["position"]} if "position" in plan else {}
    if "distractors" in plan:
        return {"context": ctx, "correct": ctx["pathology"], **position,
                "distractors": [pools.display(x) for x in plan["distractors"]]}
    abnormal = [x for x in _region_labels(image, pools) if pools.is_abnormal(x)]
    if pools.is_abnormal(label):
        rate = settings.get("no_pathology_option_rate", 0.5)
        with_normal = gen.random() < float(0.5 if rate == "auto" else rate)
        need = 2 if with_normal else 3
        picks = pools.draw(label, abnormal, need, gen)
        if len(picks) < need:  # a small region: fill from the modality's other regions
            more = sorted({x for r in pools.regions(image["modality"])
                           for x in pools.labels(image["modality"], r) if pools.is_abnormal(x)})
            picks += pools.draw(label, [x for x in more if x not in picks], need - len(picks), gen)
        if len(picks) < need:
            return None
        distractors = [pools.display(x) for x in picks] + ([pools.normal_display] if with_normal else [])
    else:
        picks = pools.draw(label, abnormal, 3, gen)
        if len(picks) < 3:
            return None
        distractors = [pools.display(x) for x in picks]
    return {"context": ctx, "correct": ctx["pathology"], "distractors": distractors, **position}


def gen_rin_caption(image, family, pools, gen, settings):
    ctx = _rin_base(image, pools)
    tail = "with no pathology seen" if ctx["is_normal"] else f"with {ctx['pathology']} present"
    return {"context": ctx, "answer": f"{ctx['modality_long']} of the {ctx['region']} {tail}"}


GENERATORS = {
    "rin_anatomy_open": gen_rin_anatomy_open,
    "rin_anatomy_present": gen_rin_anatomy_present,
    "rin_anatomy_absent": gen_rin_anatomy_absent,
    "rin_anatomy_mc": gen_rin_anatomy_mc,
    "rin_abnormality": gen_rin_abnormality,
    "rin_pathology_open": gen_rin_pathology_open,
    "rin_pathology_present": gen_rin_pathology_present,
    "rin_pathology_absent": gen_rin_pathology_absent,
    "rin_pathology_mc": gen_rin_pathology_mc,
    "rin_caption": gen_rin_caption,
    **GENERATORS_3D,
    "structure_identification": gen_structure_identification,
    "existence": gen_existence,
    "laterality": gen_laterality,
    "relative_position": gen_relative_position,
    "size_comparison": gen_size_comparison,
    "component_count": gen_component_count,
    "grounding": gen_grounding,
}


def assemble(family, made: dict, gen) -> dict:
    """Options and answer of a generated question (MC: correct position uniform over the
    question's two to four options)."""
    if family.question_type == "multiple_choice":
        n = len(made["distractors"]) + 1  # two to four options
        position = made["position"] % n if "position" in made else int(gen.integers(n))
        options = list(made["distractors"])
        options.insert(position, made["correct"])
        return {"options": options, "answer": LETTERS[position], "answer_text": made["correct"],
                "answer_box": None, "context": made["context"] | {"options": options}}
    return {"options": [], "answer": made["answer"], "answer_text": made["answer"],
            "answer_box": made.get("answer_box"), "context": made["context"]}


def generate_questions(
    image: Mapping, families: Mapping, pools, *, seed: int, settings: Mapping | None = None,
    defer: bool = False,
) -> list[dict]:
    """QA rows of one image record, sorted by ``qa_id`` (see module docstring).

    With ``defer``, a row that corpus-wide balancing may drop or re-word (it carries a
    balancing mark) is returned with ``question`` ``None`` and its variant index in
    ``_variant``: :func:`pipeline.qa.balance.apply` renders the rows it keeps, once.
    """
    conf = DEFAULT_SETTINGS | dict(settings or {})
    key = image["image_id"] if "image_id" in image else image["volume_id"]
    rows = []
    for name in sorted(families):
        family = families[name]
        gen = keys.KeyedStream(seed, key, f"{name}/target")
        made = GENERATORS[family.generator](image, family, pools, gen, conf)
        if made is None:
            continue
        many = isinstance(made, list)
        for n, item in enumerate(made if many else [made]):
            suffix = f"/{n}" if many else ""
            parts = assemble(family, item, keys.KeyedStream(seed, key, f"{name}/options{suffix}"))
            pick = item["variant"] if "variant" in item else keys.KeyedStream(
                seed, key, f"{name}/variant{suffix}").integers(len(family.variants))
            variant = family.variants[pick]
            m = None
            if family.balance != "none":
                u = keys.KeyedStream(seed, key, f"{name}/balance{suffix}").random()
                m = balance_mark(family, parts["context"], u, item)
            row = {
                "qa_id": keys.stable_key("qa", key, name, n) if many else keys.stable_key("qa", key, name),
                "image_id": key,
                "case_key": image["case_key"],
                "split": image["split"],
                "task": family.task,
                "family": name,
                "question_type": family.question_type,
                "question": None if defer and m is not None else render(family, variant, parts["context"]),
                "options": parts["options"],
                "answer": parts["answer"],
                "answer_text": parts["answer_text"],
                "answer_box": parts["answer_box"],
                "question_box": item.get("question_box"),
                "template_id": variant.id,
            }
            for extra in ("value", "unit", "tolerance", "subtask"):
                if extra in item:
                    row["answer_" + extra if extra in ("value", "unit", "tolerance") else extra] = item[extra]
            if m is not None:
                row["balance"] = m
                row["_context"] = parts["context"]
                if defer:
                    row["_variant"] = int(pick)
            rows.append(row)
    rows.sort(key=lambda r: r["qa_id"])
    return rows


# Rows generated lately, for the second pass over the same records.  A build generates
# each record's questions twice: once for the balancing candidates, once to render them.
# On a runner that runs both passes in one process (FnApiRunner) the second one is a
# lookup here.  Keyed by the build's QA fingerprint (templates, pools, settings, seed,
# inputs) and a digest of the record itself; bounded by rows held; callers get fresh row
# dicts, so nothing they change reaches the memo.
_MEMO: OrderedDict = OrderedDict()
_MEMO_ROWS = [0]
MEMO_MAX_ROWS = 50_000


def questions_for(record: Mapping, ctx) -> list[dict]:
    """``generate_questions(record, ctx.families, ctx.pools, …, defer=True)`` for a build
    context (:class:`pipeline.engine.units.BuildContext`), remembered for the next pass over the
    record.  Rows go through :func:`pipeline.qa.balance.apply`, which renders deferred ones."""
    if not ctx.qa_fp:
        return generate_questions(record, ctx.families, ctx.pools, seed=ctx.seed,
                                  settings=ctx.qa_settings, defer=True)
    key = (ctx.qa_fp, hashlib.sha256(pickle.dumps(dict(record), protocol=5)).digest())
    rows = _MEMO.get(key)
    if rows is None:
        rows = generate_questions(record, ctx.families, ctx.pools, seed=ctx.seed,
                                  settings=ctx.qa_settings, defer=True)
        _MEMO[key] = rows
        _MEMO_ROWS[0] += len(rows)
        while _MEMO_ROWS[0] > MEMO_MAX_ROWS and len(_MEMO) > 1:
            _MEMO_ROWS[0] -= len(_MEMO.popitem(last=False)[1])
    return [dict(r) for r in rows]


def lint_records(pools, generator: str | None = None) -> list[dict]:
    """Synthetic records that give every generator something to ask: labelled-tree
    images, volume facts (for the volume-level generators) or slice records."""
    if generator in GENERATORS_3D:
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
                    "boxes": boxes, "case_labels": labels})
    user = [box("organ_a", 5, 5, 30, 30, [-50.0, 0.0, 0.0], "right"),
            box("organ_b", 60, 5, 90, 30, [50.0, 0.0, 0.0], "left")]
    out.append({"image_id": keys.stable_key("lint", "user"), "case_key": "1" * 20, "split": "train",
                "modality": "MR", "plane": "axial", "slice_index": 3, "width": 96, "height": 96,
                "boxes": user, "case_labels": ["organ_a", "organ_b", "organ_c", "organ_d"]})
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
