"""Generators for labelled-image trees (RadImageNet-VQA's nine questions), the ``tree`` kind.

Records: ``image_id, case_key, split, modality, region, label`` and, when the launcher
planned the balanced choices (:mod:`pipeline.qa.tree_balance`), ``assign``
(``{family: plan}``).  ``pools`` are the tree's label pools (``LabelPools``: regions of a
modality, labels of a region, display names, which labels are abnormal).
"""

from __future__ import annotations

from pipeline.qa.generators.common import MODALITY_NAMES, coin, shuffled

#: ``_rin_base`` per pools object (held here, so its id is not reused while cached) and
#: (modality, region, label): ten questions an image, a few hundred distinct triples a tree.
_BASES: dict[int, tuple[object, dict]] = {}


def _rin_base(image, pools) -> dict:
    """The context every question of an image shares (a fresh dict each call)."""
    m, r, label = image["modality"], image["region"], image["label"]
    held = _BASES.get(id(pools))
    if held is None or held[0] is not pools:
        if len(_BASES) >= 8:
            _BASES.clear()
        held = _BASES[id(pools)] = (pools, {})
    base = held[1].get((m, r, label))
    if base is None:
        base = held[1][(m, r, label)] = {
            "modality_name": MODALITY_NAMES.get(m, m),
            "modality_long": pools.modality_display(m),
            "region": pools.region_display(m, r),
            "pathology": pools.display(label),
            "is_normal": not pools.is_abnormal(label),
        }
    return dict(base)


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
    if plan.get("skip"):
        return None
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
    ask_normal = plan["ask_normal"] if plan else coin(gen)
    abnormal = not ctx["is_normal"]
    variant = {"variant": plan["variant"]} if plan and "variant" in plan else {}
    return {"context": ctx | {"ask_normal": ask_normal},
            "answer": "yes" if abnormal != ask_normal else "no", **variant}


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
    if plan.get("skip"):
        return None  # the benchmark's cap on an answer's share (normal images, mostly)
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
        # shuffled: "no pathology seen" always last would point at the answer's place
        distractors = shuffled(gen, [pools.display(x) for x in picks]
                               + ([pools.normal_display] if with_normal else []))
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
}
