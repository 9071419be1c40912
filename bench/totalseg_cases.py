"""Generated TotalSegmentator CT cases at the release's geometry, written as the release is.

A case is ``sNNNN/ct.nii.gz`` (int16 Hounsfield units) beside ``sNNNN/segmentations/`` with
one ``uint8`` {0, 1} file for every one of the 117 CT classes of TotalSegmentator v2
(``distractor_pools/totalsegmentator_classes.yaml``, ``ct``), most of them empty, as in the
public release (``../shared/reference/real-data.md``).  Files are written by nibabel
(``nib.save``, gzip level 1 — what TotalSegmentator itself writes with), sform and qform
both set (code 1), the image and its masks on one grid.  Orientation alternates between
cases: even cases LAS, odd cases RAS (the release holds both).

Anatomy is coarse but organ-like: an elliptic body of soft tissue with fat, air around it,
and ``ORGANS``: about 20 structures built from two or three overlapping ellipsoids each
(so no mask is a plain box) at their usual places in a thorax-abdomen-pelvis field of view,
each with its own HU; Gaussian noise (sd 12 HU) on top.  Everything comes from one seeded
generator per case: the same arguments write the same voxels.

Two geometries (``GEOMETRIES``): ``1.5mm`` (256 x 256 x 330, the release's resampling) and
``0.8mm`` (512 x 512 x 600, an original-resolution scan).  Each voxel array is built only
inside each organ's bounding box, so writing a 0.8 mm case needs about 1 GB of memory.

Usage: ``python bench/totalseg_cases.py OUT [--geometry 1.5mm] [--cases 2]``; the bench
(:mod:`bench.totalseg`) caches them under ``.cache/bench/totalseg-<geometry>-<n>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
#: Bump when the written files change.
CASES_VERSION = "1"

#: name → (shape [i, j, k], spacing mm).
GEOMETRIES = {
    "1.5mm": ((256, 256, 330), 1.5),
    "0.8mm": ((512, 512, 600), 0.8),
}

#: Organs: name → (HU, [(centre mm (x toward the patient's left, y posterior, z superior,
#: from the centre of the field of view), semi-axes mm), …]).  z runs from -247 (pelvis) to
#: +247 (lower neck) at 1.5 mm; the 0.8 mm field of view (410 x 410 x 480 mm) holds them all.
ORGANS: dict[str, tuple[float, list[tuple[tuple[float, float, float], tuple[float, float, float]]]]] = {
    "liver": (60, [((-60, -10, 20), (80, 70, 70)), ((-20, -30, 40), (60, 50, 45))]),
    "spleen": (50, [((85, 35, 40), (35, 45, 55)), ((75, 45, 20), (25, 30, 35))]),
    "kidney_left": (35, [((65, 45, -40), (28, 25, 55)), ((58, 40, -30), (20, 18, 35))]),
    "kidney_right": (35, [((-65, 45, -50), (28, 25, 55)), ((-58, 40, -40), (20, 18, 35))]),
    "stomach": (30, [((45, -30, 40), (45, 35, 50)), ((20, -40, 20), (30, 25, 30))]),
    "pancreas": (45, [((10, 10, -5), (60, 12, 12)), ((40, 18, 0), (25, 10, 10))]),
    "gallbladder": (10, [((-45, -45, -10), (15, 15, 30))]),
    "lung_upper_lobe_left": (-850, [((75, 0, 170), (55, 70, 60)), ((70, -20, 140), (45, 50, 40))]),
    "lung_lower_lobe_left": (-850, [((80, 30, 100), (55, 60, 55)), ((75, 45, 80), (45, 45, 40))]),
    "lung_upper_lobe_right": (-850, [((-75, 0, 175), (55, 70, 55)), ((-70, -20, 150), (45, 50, 35))]),
    "lung_middle_lobe_right": (-850, [((-80, -35, 115), (45, 35, 30))]),
    "lung_lower_lobe_right": (-850, [((-80, 30, 100), (55, 60, 55)), ((-75, 45, 80), (45, 45, 40))]),
    "heart": (45, [((15, -20, 110), (60, 50, 55)), ((25, -35, 95), (45, 35, 40))]),
    "aorta": (180, [((10, 30, z), (12, 12, 26)) for z in range(-120, 160, 40)]
              + [((5, -5, 165), (25, 12, 12))]),
    "inferior_vena_cava": (160, [((-20, 25, z), (11, 11, 26)) for z in range(-120, 90, 40)]),
    "esophagus": (30, [((5, 40, z), (8, 8, 26)) for z in range(60, 240, 40)]),
    "trachea": (-900, [((0, -10, z), (10, 10, 26)) for z in range(170, 240, 30)]),
    "urinary_bladder": (5, [((0, -40, -200), (45, 35, 35)), ((0, -30, -185), (35, 28, 25))]),
    "vertebrae_L1": (700, [((0, 70, -30), (22, 18, 14)), ((0, 90, -30), (8, 16, 10))]),
    "vertebrae_L2": (700, [((0, 72, -62), (23, 18, 14)), ((0, 92, -62), (8, 16, 10))]),
    "vertebrae_L3": (700, [((0, 74, -94), (24, 18, 14)), ((0, 94, -94), (8, 16, 10))]),
    "sacrum": (650, [((0, 85, -170), (40, 20, 35)), ((0, 95, -200), (28, 15, 25))]),
}


def class_names() -> list[str]:
    """The 117 CT class names of TotalSegmentator v2, in label order."""
    data = yaml.safe_load((ROOT / "distractor_pools" / "totalsegmentator_classes.yaml").read_text())
    return list(data["ct"])


def _organ(shape, spacing: float, parts) -> tuple[tuple[slice, ...], np.ndarray]:
    """The canonical ``[i, j, k]`` bounding box of an organ and its boolean voxels there."""
    centre = (np.asarray(shape) - 1) / 2.0
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for c, r in parts:
        lo = np.minimum(lo, (np.asarray(c) - r) / spacing + centre)
        hi = np.maximum(hi, (np.asarray(c) + r) / spacing + centre)
    lo = np.clip(np.floor(lo).astype(int), 0, np.asarray(shape) - 1)
    hi = np.clip(np.ceil(hi).astype(int) + 1, 1, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grid = np.ogrid[box]
    inside = np.zeros(tuple(b - a for a, b in zip(lo, hi)), dtype=bool)
    for c, r in parts:
        pos = [(g - centre[a]) * spacing - c[a] for a, g in enumerate(grid)]
        inside |= (pos[0] / r[0]) ** 2 + (pos[1] / r[1]) ** 2 + (pos[2] / r[2]) ** 2 <= 1.0
    return box, inside


def _stored(canonical: np.ndarray, orientation: str) -> np.ndarray:
    """A canonical (i → L, j → P, k → S) array as stored in ``orientation`` (LAS or RAS)."""
    out = canonical[:, ::-1, :]  # j toward anterior
    return out[::-1] if orientation == "RAS" else out


def _affine(shape, spacing: float, orientation: str) -> np.ndarray:
    """NIfTI (RAS) affine of a grid centred on the origin stored in ``orientation``."""
    signs = {"LAS": (-1.0, 1.0, 1.0), "RAS": (1.0, 1.0, 1.0)}[orientation]
    affine = np.eye(4)
    for a in range(3):
        affine[a, a] = signs[a] * spacing
        affine[a, 3] = -signs[a] * spacing * (shape[a] - 1) / 2.0
    return affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def write_case(folder: Path, geometry: str, index: int, *, seed: int = 0) -> dict:
    """One case in ``folder``; returns ``{"non_empty": n, "files": n}``."""
    shape, spacing = GEOMETRIES[geometry]
    orientation = "LAS" if index % 2 == 0 else "RAS"
    affine = _affine(shape, spacing, orientation)
    rng = np.random.default_rng([seed, index, int(spacing * 10)])
    names = class_names()
    unknown = sorted(set(ORGANS) - set(names))
    if unknown:
        raise ValueError(f"ORGANS: {unknown} are not TotalSegmentator CT classes")
    # the body: soft tissue in an elliptic cylinder with a fat rim, air around it
    ct = np.full(shape, -1000, dtype=np.int16)
    centre = (np.asarray(shape) - 1) / 2.0
    x = (np.arange(shape[0]) - centre[0]) * spacing
    y = (np.arange(shape[1]) - centre[1]) * spacing
    r2 = (x[:, None] / 165.0) ** 2 + (y[None, :] / 125.0) ** 2
    ct[r2 <= 1.0] = -100
    ct[r2 <= 0.85] = 40
    jitter = rng.integers(-3, 4, size=len(ORGANS) * 3).reshape(-1, 3)  # voxels, per case
    masks = {}
    for n, (name, (hu, parts)) in enumerate(sorted(ORGANS.items())):
        moved = [(tuple(c + s * spacing for c, s in zip(cen, jitter[n])), r) for cen, r in parts]
        box, inside = _organ(shape, spacing, moved)
        region = ct[box]
        region[inside] = hu
        masks[name] = (box, inside)
    for k0 in range(0, shape[2], 32):  # noise, a slab at a time (no full float64 volume)
        slab = ct[:, :, k0:k0 + 32]
        noise = rng.normal(0.0, 12.0, size=slab.shape)
        slab[...] = np.clip(slab + np.rint(noise), -1024, 3071).astype(np.int16)
    seg = folder / "segmentations"
    seg.mkdir(parents=True, exist_ok=True)
    _save(np.ascontiguousarray(_stored(ct, orientation)), affine, folder / "ct.nii.gz")
    del ct
    empty = np.zeros(shape, dtype=np.uint8)
    _save(_stored(empty, orientation), affine, seg / "_empty.nii.gz")
    empty_bytes = (seg / "_empty.nii.gz").read_bytes()
    (seg / "_empty.nii.gz").unlink()
    for name in names:
        path = seg / f"{name}.nii.gz"
        if name not in masks:
            path.write_bytes(empty_bytes)  # what nib.save writes for an all-zero mask
            continue
        box, inside = masks[name]
        full = np.zeros(shape, dtype=np.uint8)
        full[box][inside] = 1
        _save(np.ascontiguousarray(_stored(full, orientation)), affine, path)
    return {"non_empty": len(masks), "files": len(names) + 1}


def write_cases(root: Path, geometry: str, n_cases: int, *, seed: int = 0) -> dict:
    """``n_cases`` cases ``s0001``… below ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n_cases):
        out[f"s{i + 1:04d}"] = write_case(root / f"s{i + 1:04d}", geometry, i, seed=seed)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--geometry", choices=sorted(GEOMETRIES), default="1.5mm")
    ap.add_argument("--cases", type=int, default=2)
    args = ap.parse_args(argv)
    print(write_cases(Path(args.out), args.geometry, args.cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
