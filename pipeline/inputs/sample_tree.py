"""A synthetic RadImageNet-style tree (the ``tree`` kind's built-in sample and the scale
benchmark's input): small PNGs under ``<modality>/<region>/<label>/`` with the label pools'
frequencies.  Deterministic: two writes give identical bytes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.imaging import encode_png

if TYPE_CHECKING:
    from pipeline.qa.label_pools import LabelPools


def label_frequencies(pools: LabelPools, modality: str) -> dict[tuple[str, str], float]:
    """``{(region, label): weight}`` from the pools' image counts.

    MR: the listed label counts, and per region the rest of its image count as
    ``normal``.  CT (no counts known): 30 % normal, the rest uniform, regions
    equal — an assumption, stated in the README.
    """
    weights: dict[tuple[str, str], float] = {}
    mod = pools.modalities[modality]
    for rid, r in sorted(mod["regions"].items()):
        counts = {k: v for k, v in r.get("counts", {}).items() if v}
        if counts:
            listed = sum(counts.values())
            region_total = r.get("images") or listed
            for label, c in counts.items():
                weights[(rid, label)] = float(c)
            weights[(rid, pools.normal_label)] = float(max(region_total - listed, 0.05 * region_total))
        else:
            labels = [x for x in r["labels"] if x != pools.normal_label]
            weights[(rid, pools.normal_label)] = 0.3
            for label in labels:
                weights[(rid, label)] = 0.7 / max(1, len(labels))
    return weights


def write_tree(root: str | Path, n_images: int, pools: LabelPools, *, seed: int = 0,
               size: int = 16, with_csv: bool = False, textured: bool = False) -> dict[str, int]:
    """Write a RadImageNet-style tree of ``n_images`` small PNGs with the pools' label
    frequencies (MR and CT in RadImageNet-VQA's 604,775 : 228,902 proportion, plus a
    few US images that the recipe drops).  Deterministic; returns counts per modality.

    ``textured``: every image a smooth grey field with Gaussian noise (sigma 16), so that
    a 224 px PNG weighs about what RadImageNet's do (~47 KB measured) instead of a
    flat image's few hundred bytes.
    """
    root = Path(root)
    mods = {m: pools.modalities[m].get("images") or 1 for m in sorted(pools.modalities)}
    total_w = sum(mods.values())
    plan: list[tuple[str, str, str]] = []
    for m, w in mods.items():
        n_mod = round(n_images * w / total_w)
        freqs = label_frequencies(pools, m)
        fw = sum(freqs.values())
        items = sorted(freqs.items())
        alloc = [(k, n_mod * v / fw) for k, v in items]
        counts = {k: int(x) for k, x in alloc}
        rest = n_mod - sum(counts.values())
        for k, _ in sorted(alloc, key=lambda kv: -(kv[1] - int(kv[1])))[:rest]:
            counts[k] += 1
        for (region, label), c in counts.items():
            plan.extend((m, region, label) for _ in range(c))
    plan = plan[:n_images] if len(plan) > n_images else plan
    gen = np.random.Generator(np.random.PCG64(seed))
    base = gen.integers(0, 256, size=(size, size), dtype=np.uint8)
    if textured:
        y, x = np.mgrid[0:size, 0:size] / size
        field = 110 + 60 * np.sin(6 * x + 1) * np.cos(5 * y) + 30 * np.sin(17 * x * y + 2)
        base = np.clip(field + gen.normal(0, 16, (size, size)), 0, 255).astype(np.uint8)
    written: Counter = Counter()
    made_dirs = set()
    csv_rows = defaultdict(list)
    for n, (m, region, label) in enumerate(plan):
        d = root / m / region / label
        if d not in made_dirs:
            d.mkdir(parents=True, exist_ok=True)
            made_dirs.add(d)
        pixels = np.roll(base, (n * 97 if textured else n) % (size * size)) ^ np.uint8(n % 251)
        name = f"{region}{n:07d}.png"
        (d / name).write_bytes(encode_png(pixels, 1))
        written[m] += 1
        if with_csv:
            split = ("train", "val", "test")[0 if n % 10 < 8 else 1 if n % 10 == 8 else 2]
            csv_rows[split].append(f"radiology_ai/{m}/{region}/{label}/{name}")
    us = root / "US" / "abdomen"
    us.mkdir(parents=True, exist_ok=True)
    for n in range(max(1, n_images // 1000)):
        (us / f"us{n:05d}.png").write_bytes(encode_png(base, 1))
        written["US"] += 1
    if with_csv:
        for split, rows in csv_rows.items():
            (root / f"RadiologyAI_{split}.csv").write_text("filename\n" + "\n".join(rows) + "\n")
    return dict(written)
