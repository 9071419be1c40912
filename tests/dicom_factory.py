"""Write small, real DICOM series for reader tests, with knobs to break them.

* :func:`write_series` — one file per slice (classic CT/MR image objects),
  optionally MONOCHROME1, 4D (per-slice attributes), without a file meta
  header, or JPEG-baseline compressed.
* :func:`write_enhanced` — one enhanced multi-frame file whose planes are
  described by per-frame functional groups.
* :func:`restamp` — copies of a real file (e.g. from pydicom's test data) as
  slices of one series: only identifiers and geometry are rewritten, the
  stored pixel data (compressed or not) is kept byte for byte.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


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
    per_slice=None,
    photometric="MONOCHROME2",
    file_meta=True,
    jpeg_quality=None,
) -> list[Path]:
    """Axial series of canonical ``volume[i, j, k]`` (HU); one file per k.

    ``positions`` / ``orientations`` override ImagePositionPatient /
    ImageOrientationPatient per slice; ``names`` the file names; ``per_slice``
    a list of ``{keyword: value}`` set on each slice.  ``photometric`` is
    written as is (the stored values are not inverted).  ``file_meta=False``
    writes a bare implicit-VR data set (no preamble, no 'DICM', no file meta
    header).  ``jpeg_quality`` stores 8-bit JPEG baseline frames encoded by
    Pillow (values must fit 0..255 after the rescale).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ni, nj, nk = volume.shape
    out = []
    for k in range(nk):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS.get(modality, CTImageStorage)
        meta.MediaStorageSOPInstanceUID = uid(series, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = SOP_CLASS.get(modality, CTImageStorage)
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
        ds.PhotometricInterpretation = photometric
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        stored = np.round((volume[:, :, k].T - intercept) / slope)
        if jpeg_quality is None:
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelData = stored.astype(np.uint16).tobytes()
        else:
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7
            ds.PixelData = pydicom.encaps.encapsulate([_jpeg(stored, jpeg_quality)])
            ds["PixelData"].VR = "OB"
            meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.LossyImageCompression = "01"
        for keyword, value in {**(extra or {}), **(per_slice[k] if per_slice else {})}.items():
            setattr(ds, keyword, value)
        name = names[k] if names else f"slice{k:03d}.dcm"
        path = folder / name
        if file_meta:
            ds.save_as(path, enforce_file_format=True)
        else:
            write_without_meta(ds, path)
        out.append(path)
    return out


def _jpeg(stored: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    if stored.min() < 0 or stored.max() > 255:
        raise ValueError(f"JPEG baseline needs 0..255, got {stored.min()}..{stored.max()}")
    buf = io.BytesIO()
    Image.fromarray(stored.astype(np.uint8), mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_without_meta(ds: Dataset, path: Path, *, implicit_vr: bool = True) -> None:
    """Write ``ds`` as a bare data set: no preamble, no 'DICM', no file meta header."""
    ds = ds.copy()
    if hasattr(ds, "file_meta"):
        del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, implicit_vr=implicit_vr, little_endian=True,
                     enforce_file_format=False)


def write_enhanced(
    path: Path,
    volume: np.ndarray,
    spacing=(0.8, 0.9, 2.0),
    origin=(-100.0, -80.0, 40.0),
    *,
    frame_order=None,
    orientations=None,
    intercept=-1024.0,
    rescale_type="HU",
    series="enhanced",
) -> Path:
    """One Enhanced CT file holding canonical ``volume[i, j, k]`` (HU) as frames.

    ``frame_order[f]`` is the slice k stored as frame f (default: k order);
    each frame's position is in its PerFrameFunctionalGroupsSequence, the
    orientation, spacing and rescale in the SharedFunctionalGroupsSequence
    unless ``orientations[f]`` overrides a frame's orientation.
    """
    ni, nj, nk = volume.shape
    order = list(frame_order) if frame_order is not None else list(range(nk))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = uid(series, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = uid(series, "sop")
    ds.SeriesInstanceUID = uid(series)
    ds.StudyInstanceUID = uid("study")
    ds.Modality = "CT"
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = nj, ni
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = Dataset()
    shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]
    shared.PixelMeasuresSequence = [_item(PixelSpacing=[spacing[1], spacing[0]],
                                          SliceThickness=spacing[2])]
    shared.PixelValueTransformationSequence = [_item(RescaleSlope=1, RescaleIntercept=intercept,
                                                     RescaleType=rescale_type)]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for f, k in enumerate(order):
        item = Dataset()
        item.PlanePositionSequence = [
            _item(ImagePositionPatient=[origin[0], origin[1], origin[2] + k * spacing[2]])]
        if orientations is not None and orientations[f] is not None:
            item.PlaneOrientationSequence = [_item(ImageOrientationPatient=list(orientations[f]))]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    stored = np.stack([volume[:, :, k].T - intercept for k in order]).round().astype(np.uint16)
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def restamp(
    source,
    folder: Path,
    slices=(0, 1, 2),
    *,
    step: float = 2.0,
    modality: str | None = None,
    series: str = "restamped",
    stem: str | None = None,
    file_meta: bool = True,
    extra=None,
) -> dict:
    """Copy a real single-frame file as slices ``slices`` of one axial series.

    Slice k sits at ``(0, 0, k * step)`` with identity orientation; the
    source's PixelSpacing is kept (1 mm when it has none).  Only identifiers,
    geometry, ``modality`` and ``extra`` are rewritten: the stored pixel data
    and the transfer syntax stay as they were.  Returns the grid as
    ``{"shape": (cols, rows, n), "spacing": (col, row, step), "origin": (0, 0, first)}``
    for the k range written, in LPS with identity direction.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(str(source)).stem
    original = pydicom.dcmread(source)
    spacing = [float(v) for v in original.get("PixelSpacing") or (1.0, 1.0)]
    for k in slices:
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = uid(series)
        ds.SOPInstanceUID = uid(series, k)
        if modality:
            ds.Modality = modality
            if "SOPClassUID" not in ds:
                ds.SOPClassUID = SOP_CLASS[modality]
        if "NumberOfFrames" in ds and int(ds.NumberOfFrames) == 1:
            del ds.NumberOfFrames  # single-frame: plain ImagePositionPatient describes it
        ds.ImagePositionPatient = [0.0, 0.0, float(k * step)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = spacing
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        path = folder / f"{stem}_{k}.dcm"
        if not file_meta:
            write_without_meta(ds, path)
            continue
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if "MediaStorageSOPClassUID" not in ds.file_meta and "SOPClassUID" in ds:
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(path, enforce_file_format=False)
    ks = sorted(slices)
    return {
        "shape": (int(original.Columns), int(original.Rows), len(ks)),
        "spacing": (spacing[1], spacing[0], step),
        "origin": (0.0, 0.0, float(ks[0] * step)),
    }


def as_pairs(folder: Path, root: Path):
    return [(str(p), p.relative_to(root).as_posix()) for p in sorted(folder.rglob("*.dcm"))]


def ramp_volume(shape=(6, 5, 4)) -> np.ndarray:
    ni, nj, nk = shape
    i, j, k = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")
    return (i * 100 + j * 10 + k - 500).astype(np.float32)


__all__ = ["write_series", "write_enhanced", "restamp", "write_without_meta", "as_pairs",
           "ramp_volume", "pydicom"]
