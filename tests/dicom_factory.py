"""Write small, real DICOM series for reader tests, with knobs to break them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian


def uid(*parts) -> str:
    import hashlib

    return "2.25." + str(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:30], 16))


def write_series(
    folder: Path,
    volume: np.ndarray,
    spacing=(0.8, 0.9, 2.0),
    origin=(-100.0, -80.0, 40.0),
    *,
    series="s1",
    positions=None,
    orientations=None,
    names=None,
    instance_numbers=None,
    slope=1.0,
    intercept=-1024.0,
    modality="CT",
    extra=None,
) -> list[Path]:
    """Axial series of canonical ``volume[i, j, k]`` (HU); one file per k.

    ``positions`` / ``orientations`` override ImagePositionPatient /
    ImageOrientationPatient per slice; ``names`` the file names.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ni, nj, nk = volume.shape
    out = []
    for k in range(nk):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid(series, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid(series, k)
        ds.SeriesInstanceUID = uid(series)
        ds.StudyInstanceUID = uid("study")
        ds.Modality = modality
        ds.PatientName = "Test^Patient"
        ds.PatientID = "TEST-1"
        ds.ImageOrientationPatient = list(orientations[k]) if orientations else [1, 0, 0, 0, 1, 0]
        pos = positions[k] if positions else (origin[0], origin[1], origin[2] + k * spacing[2])
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = nj, ni
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        stored = np.round((volume[:, :, k].T - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        name = names[k] if names else f"slice{k:03d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def as_pairs(folder: Path, root: Path):
    return [(str(p), p.relative_to(root).as_posix()) for p in sorted(folder.rglob("*.dcm"))]


def ramp_volume(shape=(6, 5, 4)) -> np.ndarray:
    ni, nj, nk = shape
    i, j, k = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")
    return (i * 100 + j * 10 + k - 500).astype(np.float32)


__all__ = ["write_series", "as_pairs", "ramp_volume", "pydicom"]
