"""The benchmark of a labelled 2D tree: a stratified (modality × region × pathology) draw of
test images, planned on the launcher from the file list alone, so it never depends on
shards or workers.  Every tie is broken by a keyed hash (:func:`pipeline.core.keys.unit_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.core import keys

if TYPE_CHECKING:
    from pipeline.inputs.layouts.tree import TreeImage


def capped_quotas(total: int, weights: Mapping[str, int], cap: float, seed: int, salt: str = "",
                  limits: Mapping[str, int] | None = None) -> dict[str, int]:
    """Integer quotas summing to at most ``total``: in proportion to ``weights``, none above
    its limit (default: its weight) nor above ``cap`` of the sum (water-filling: what a
    capped item cannot take goes to the others in proportion), largest remainders first
    (ties by keyed hash).  With fewer items than ``1 / cap`` the cap is an even share."""
    limits = dict(limits or weights)
    names = sorted(k for k, v in weights.items() if v > 0 and limits.get(k, 0) > 0)
    if not names or total <= 0:
        return {k: 0 for k in weights}
    cap = max(cap, 1.0 / len(names))  # fewer items than 1 / cap: even shares
    n = min(total, capacity({k: limits[k] for k in names}, cap))
    bound = {k: min(limits[k], cap * n) for k in names}
    share: dict[str, float] = {}
    free, budget = set(names), float(n)
    while free:
        weight = sum(weights[k] for k in free)
        fits = {k: budget * weights[k] / weight for k in free}
        over = {k for k in free if fits[k] > bound[k]}
        if not over:
            share.update(fits)
            break
        for k in over:
            share[k] = bound[k]
            budget -= bound[k]
        free -= over
    quotas = {k: int(share.get(k, 0.0)) for k in names}
    order = sorted(names, key=lambda k: (-(share.get(k, 0.0) - quotas[k]),
                                         keys.unit_interval(seed, salt + k, "bench")))
    left = n - sum(quotas.values())
    for k in order:  # largest remainders, within each bound
        if left <= 0:
            break
        if quotas[k] < math.floor(bound[k] + 1e-9):
            quotas[k] += 1
            left -= 1
    return {k: quotas.get(k, 0) for k in weights}


def capacity(limits: Mapping[str, int], cap: float) -> int:
    """The largest total ``Q`` that items of these sizes can fill with none above
    ``floor(cap * Q)`` (not monotone in ``Q`` because of the floor: scanned downwards)."""
    sizes = sorted(limits.values())
    for q in range(sum(sizes), 0, -1):
        per = math.floor(cap * q + 1e-9)
        if sum(min(v, per) for v in sizes) >= q:
            return q
    return 0


def select_benchmark(
    images: list[TreeImage], n_images: int, seed: int, cap: float = 0.25, options: int = 4,
    normal: str = "normal",
) -> list[tuple[str, int, list[TreeImage]]]:
    """Stratified benchmark plan over the test images: ``[(stratum, quota, candidates)]``.

    Strata are modality × region × pathology.  Every region is **half normal, half
    abnormal**: the abnormality question ("is this image normal?") is asked of every image
    and reads only its modality, so a blind model must not learn the abnormal rate of a
    modality or region from the wording.  Quotas count pairs (one normal, one abnormal
    image): modality in proportion to its test images; within a modality each region in
    proportion to its size but never more than ``cap`` (a quarter) of its modality, or an
    even share where there are fewer than four (:func:`capped_quotas`) — what keeps the
    anatomy multiple choice fair; within a region the normal label takes half, and each
    abnormal label a share of the other half in proportion to its size but never more than
    a third of it (rounded up) — so that, with the pathology multiple choice asked of every abnormal
    image and of a third as many normal ones (:mod:`pipeline.qa.tree_balance`), no answer is
    correct in more than a quarter of a region's questions (78 % of MR hip images are
    labral pathology).  Regions left out, each reported by :func:`left_out_regions`: those
    whose test images hold no ``normal`` image or fewer than ``options - 1`` abnormal labels.
    Each stratum's candidates are ordered by a keyed hash and the first ``quota`` readable
    ones are taken: deterministic, and independent of shards and workers.
    """
    tree = _test_tree(images, normal, options)
    if n_images <= 0 or not tree:
        return []
    third = 1.0 / (options - 1)

    def even(n_items: int) -> float:
        return max(cap, 1.0 / n_items)

    def abnormal(labels):
        return {lab: len(v) for lab, v in labels.items() if lab != normal}

    # pairs a region can give: as many normal images, abnormal labels within a third each
    cap_r = {(m, r): min(len(labels[normal]), capacity(abnormal(labels), max(third, 1.0 / len(abnormal(labels)))))
             for m, regions in tree.items() for r, labels in regions.items()}
    cap_m = {m: capacity({r: cap_r[(m, r)] for r in regions}, even(len(regions)))
             for m, regions in tree.items()}
    n = min(n_images // 2, sum(cap_m.values()))
    sizes_m = {m: sum(len(x) for r in regions.values() for x in r.values())
               for m, regions in tree.items()}
    q_m = capped_quotas(n, sizes_m, 1.0, seed, "m/", limits=cap_m)
    quotas: dict[tuple[str, str, str], int] = {}
    for m in sorted(tree):
        regions = tree[m]
        q_r = capped_quotas(q_m[m], {r: sum(len(x) for x in labels.values())
                                     for r, labels in regions.items()}, cap, seed, f"{m}/",
                            limits={r: cap_r[(m, r)] for r in regions})
        for r in sorted(regions):
            sizes = abnormal(regions[r])
            # a third rounded up (8 abnormal images over 3 labels: 3 + 3 + 2)
            third_up = math.ceil(q_r[r] * third - 1e-9) / q_r[r] + 1e-9 if q_r[r] else third
            q_l = capped_quotas(q_r[r], sizes, third_up, seed, f"{m}/{r}/")
            for lab in sorted(sizes):
                quotas[(m, r, lab)] = q_l[lab]
            quotas[(m, r, normal)] = sum(q_l.values())  # exactly as many normal images
    plan = []
    for (m, r, lab), q in sorted(quotas.items()):
        if q:
            ranked = sorted(tree[m][r][lab], key=lambda i: keys.unit_interval(seed, i.key, "bench-rank"))
            plan.append((f"{m}/{r}/{lab}", q, ranked))
    return plan


def _test_tree(images, normal: str, options: int) -> dict[str, dict[str, dict[str, list]]]:
    """``{modality: {region: {label: [test images]}}}`` of the regions that can be balanced."""
    tree: dict[str, dict[str, dict[str, list]]] = {}
    for img in images:
        if img.split == "test":
            tree.setdefault(img.modality, {}).setdefault(img.region, {}).setdefault(
                img.label, []).append(img)
    for m in list(tree):
        for r in [r for r, labels in tree[m].items() if _why_left_out(labels, normal, options)]:
            del tree[m][r]
        if not tree[m]:
            del tree[m]
    return tree


def _why_left_out(labels: Mapping, normal: str, options: int) -> str | None:
    if normal not in labels:
        return "no normal image in the test split (the abnormality question could not be balanced)"
    if len(labels) - 1 < options - 1:
        return (f"{len(labels) - 1} abnormal label(s) in the test split, fewer than the "
                f"{options - 1} distractors of a multiple-choice question")
    return None


def left_out_regions(images, normal: str = "normal", options: int = 4) -> dict[str, str]:
    """``{"modality/region": reason}``: test regions the benchmark cannot include."""
    tree: dict[tuple[str, str], set] = {}
    for img in images:
        if img.split == "test":
            tree.setdefault((img.modality, img.region), set()).add(img.label)
    out = {}
    for (m, r), labels in sorted(tree.items()):
        why = _why_left_out(dict.fromkeys(labels), normal, options)
        if why:
            out[f"{m}/{r}"] = why
    return out
