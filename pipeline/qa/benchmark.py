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
) -> list[tuple[str, int, list[TreeImage]]]:
    """Stratified benchmark plan over the test images: ``[(stratum, quota, candidates)]``.

    Strata are modality × region × pathology.  Quotas follow the test split's proportions
    — modality by size; within a modality each region, and within a region each label, in
    proportion to its size but never more than ``cap`` (a quarter) of its parent's quota,
    or an even share where there are fewer than four (:func:`capped_quotas`); images the
    rounding leaves over go one each to the strata with most images left.  Regions whose
    test images hold fewer than ``options`` labels are left out.  The cap is what lets the benchmark's multiple-choice
    questions be fair: an answer that is more than a quarter of its region (78 % of MR hip
    images are labral pathology) would be the best blind guess whenever it is offered.
    Each stratum's candidates are ordered by a keyed hash and the first ``quota`` readable
    ones are taken: deterministic, and independent of shards and workers.
    """
    tree: dict[str, dict[str, dict[str, list[TreeImage]]]] = {}
    for img in images:
        if img.split == "test":
            tree.setdefault(img.modality, {}).setdefault(img.region, {}).setdefault(
                img.label, []).append(img)
    if n_images <= 0:
        return []
    # A region whose test images hold fewer labels than a question has options cannot
    # give four same-region options: it stays out of the benchmark (and is reported).
    for m in list(tree):
        for r in [r for r, labels in tree[m].items() if len(labels) < options]:
            del tree[m][r]
        if not tree[m]:
            del tree[m]
    if not tree:
        return []

    def even(n_items: int) -> float:
        return max(cap, 1.0 / n_items)

    cap_r = {(m, r): capacity({lab: len(v) for lab, v in labels.items()}, even(len(labels)))
             for m, regions in tree.items() for r, labels in regions.items()}
    cap_m = {m: capacity({r: cap_r[(m, r)] for r in regions}, even(len(regions)))
             for m, regions in tree.items()}
    n = min(n_images, sum(cap_m.values()))
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
            labels = regions[r]
            q_l = capped_quotas(q_r[r], {lab: len(v) for lab, v in labels.items()}, cap, seed,
                                f"{m}/{r}/")
            for lab in sorted(labels):
                quotas[(m, r, lab)] = q_l[lab]
    # Floors can leave a few images unplaced: give them, one each, to the strata with the
    # most images left (a cap may then be passed by one image).
    left = n - sum(quotas.values())
    spare = sorted(quotas, key=lambda k: (-(len(tree[k[0]][k[1]][k[2]]) - quotas[k]),
                                          keys.unit_interval(seed, "/".join(k), "bench")))
    for k in spare:
        if left <= 0:
            break
        if quotas[k] < len(tree[k[0]][k[1]][k[2]]):
            quotas[k] += 1
            left -= 1
    plan = []
    for (m, r, lab), q in sorted(quotas.items()):
        if q:
            ranked = sorted(tree[m][r][lab], key=lambda i: keys.unit_interval(seed, i.key, "bench-rank"))
            plan.append((f"{m}/{r}/{lab}", q, ranked))
    return plan

