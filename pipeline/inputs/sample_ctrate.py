"""A small CT-RATE-shaped sample, written the way CT-RATE's release writes its files.

``dataset/{train,valid}/<split>_<p>/<split>_<p>_<scan>/<split>_<p>_<scan>_<reconstruction>.nii.gz``
(NIfTI through nibabel: int16 raw values, ``HU = value * RescaleSlope + RescaleIntercept``
with slope 1 and intercept -1024 as the metadata says; an LPS-to-RAS diagonal affine),
``dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv`` (``VolumeName`` and
the 18 findings as 0/1, one row per reconstruction) and ``dataset/metadata/
{train,validation}_metadata.csv`` (a subset of the release's columns: ``VolumeName``,
``Manufacturer``, ``PatientSex``, ``PatientAge``, ``XYSpacing`` like ``[0.75, 0.75]``,
``ZSpacing``, ``RescaleIntercept``, ``RescaleSlope``, ``Rows``, ``Columns``,
``NumberofSlices``).  The chest is a phantom (body, two lungs); findings are drawn per
patient so that the temporal classes all occur; no masks, as in CT-RATE.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.core.volume_facts import CT_RATE_FINDINGS

#: Bumped whenever the sample changes (builds rewrite their stored copy).
SAMPLE_VERSION = "1"
SHAPE = (40, 40, 12)  # i, j, k
XY_SPACING, Z_SPACING = 0.75, 1.5
INTERCEPT = -1024
METADATA = ["VolumeName", "Manufacturer", "PatientSex", "PatientAge", "XYSpacing", "ZSpacing",
            "RescaleIntercept", "RescaleSlope", "Rows", "Columns", "NumberofSlices"]


def _chest(rng: np.random.Generator) -> np.ndarray:
    """HU of a small chest phantom: air, a soft-tissue body, two lungs (with noise)."""
    i, j, _ = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    ci, cj = (SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2
    hu = np.full(SHAPE, -1000.0)
    hu[((i - ci) / 18) ** 2 + ((j - cj) / 14) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((i - ci - side * 8) / 6) ** 2 + ((j - cj) / 9) ** 2 <= 1] = -850.0
    return hu + rng.normal(0, 10, SHAPE)


def _write_volume(path: Path, hu: np.ndarray) -> None:
    # nibabel (0.23 s measured, with the pydicom it pulls in) only when the sample is
    # written: every build imports this module through the volumes kind.
    import nibabel as nib

    raw = np.round(hu - INTERCEPT).astype(np.int16)
    affine = np.diag([-XY_SPACING, -XY_SPACING, Z_SPACING, 1.0])
    image = nib.Nifti1Image(raw, affine)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def write_ctrate_sample(output_dir: str | Path, n_patients: int = 4, scans: int = 3,
                        seed: int = 0) -> list[str]:
    """Write the sample under ``output_dir``; returns the volume names written.

    Patients alternate between ``train`` and ``valid``; each has ``scans`` scans
    (``a``, ``b`` …), the first with two reconstructions.  Each finding follows one of
    presence pattern across the scans drawn per patient (seeded), so Refractory, Resolved,
    New and No abnormality all occur.
    """
    out = Path(output_dir) / "dataset"
    rng = np.random.default_rng(seed)
    # presence across the scans; each (patient, finding) draws one, so every temporal class
    # occurs after every prior sequence somewhere in the sample
    patterns = [tuple(int(b) for b in format(n, f"0{scans}b")) for n in range(2 ** scans)]
    labels: dict[str, list[list]] = {"train": [], "valid": []}
    metadata: dict[str, list[list]] = {"train": [], "valid": []}
    names = []
    for p in range(1, n_patients + 1):
        split = "train" if p % 2 else "valid"
        # a few findings per patient (the rest absent throughout), so some scans are normal
        ill = set(rng.choice(len(CT_RATE_FINDINGS), size=int(rng.integers(0, 4)), replace=False).tolist())
        chosen = [patterns[int(rng.integers(len(patterns)))] if f in ill else patterns[0]
                  for f in range(len(CT_RATE_FINDINGS))]
        for s in range(scans):
            letter = "abcdefghijklmnopqrstuvwxyz"[s]
            hu = _chest(rng)
            row = [int(c[s]) for c in chosen]
            for recon in (1, 2) if s == 0 else (1,):
                name = f"{split}_{p}_{letter}_{recon}.nii.gz"
                folder = out / split / f"{split}_{p}" / f"{split}_{p}_{letter}"
                _write_volume(folder / name, hu)
                labels[split].append([name, *row])
                metadata[split].append([name, "SIEMENS", "M" if p % 3 else "F", f"{50 + p:03d}Y",
                                        f"[{XY_SPACING}, {XY_SPACING}]", Z_SPACING, INTERCEPT, 1,
                                        SHAPE[1], SHAPE[0], SHAPE[2]])
                names.append(name)
    for split, rows in labels.items():
        _write_csv(out / "multi_abnormality_labels" / f"{split}_predicted_labels.csv",
                   ["VolumeName", *CT_RATE_FINDINGS], rows)
        meta_name = "train_metadata.csv" if split == "train" else "validation_metadata.csv"
        _write_csv(out / "metadata" / meta_name, METADATA, metadata[split])
    return names


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
