"""The bad-input corpus: one table of odd, broken and unusual inputs and what must happen.

Every row writes one case folder (DICOM, TotalSegmentator, multilabel) or one
RadImageNet-style PNG, runs it through the pure functions a build uses
(:func:`pipeline.inputs.discovery.discover_cases` + :func:`pipeline.engine.extract.process_case`,
or :func:`pipeline.inputs.layouts.tree.check_png`) and checks the outcome: accepted
(with the notes the build reports), or rejected at a stage with a reason slug,
a message naming the field, and the offending file relative to the input root.

Real files come from pydicom's own test files and the ``pydicom-data``
package (``pydicom.data.get_testdata_file``): compressed transfer syntaxes are
decoded, never rejected for being compressed; a real file without geometry is
"restamped" (copied as the slices of an axial series, pixel data and transfer
syntax kept byte for byte, see :func:`tests.dicom_factory.restamp`).

Decisions the table pins (what a careful user expects):

* single 2D image, 4D series (several planes per position) and 4D NIfTI with
  more than one time point: ``volume.not_3d`` — the corpus is made of volumes;
* no file meta header: read (``force=True``) when the pixel data is native,
  since the encoding is then unambiguous; compressed pixel data without a
  transfer syntax is ``dicom.missing_transfer_syntax`` (the codec would be a
  guess);
* MONOCHROME1: CT stays in HU (physical units); MR is inverted over the whole
  volume so that bright means high signal;
* enhanced multi-frame CT/MR: assembled from its per-frame functional groups
  with the same checks as single-frame series; a CT whose RescaleType is not
  HU (a derived perfusion map) is ``dicom.not_hounsfield``;
* objects beside the series (screenshots, SEG, RT plans) are skipped and
  listed in ``Volume.notes``; anything wrong with the series itself rejects.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from pipeline.core.imaging import encode_png
from pipeline.engine.extract import SliceSettings, load_case, process_case
from pipeline.errors import CaseError, ConfigError
from pipeline.inputs.discovery import discover_cases
from pipeline.inputs.layouts.tree import check_png
from pipeline.inputs.readers import Volume, read_dicom_series
from tests.dicom_factory import ramp_volume, restamp, write_enhanced, write_series

KEY = "bad-input-test-key"

# pydicom warns about the very defects these files carry (invalid VR values, …).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def real_file(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_testdata_file(name)


def stored_hu(name: str) -> np.ndarray:
    """Canonical 2D slice ``[i, j]`` of a real single-frame file, rescaled."""
    ds = pydicom.dcmread(real_file(name))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (ds.pixel_array.astype(np.float32) * slope + intercept).T


# ------------------------------------------------------------------- writers

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                direction=IDENTITY) -> None:
    """Write ``array[i, j, k]`` (or ``[i, j]``, or ``[i, j, k, t]``) with SimpleITK (LPS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    n = img.GetDimension()
    img.SetSpacing(tuple(spacing)[:n] + (1.0,) * (n - len(spacing)))
    img.SetOrigin(tuple(origin)[:n] + (0.0,) * (n - len(origin)))
    if n == 3:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def box_mask(shape, value=1, dtype=np.uint8) -> np.ndarray:
    """A centred box filling half of each axis (at least 30 px per axial slice)."""
    mask = np.zeros(shape, dtype)
    sl = tuple(slice(n // 4, n // 4 + max(1, n // 2)) for n in shape[:2]) + (slice(None),)
    mask[sl] = value
    return mask


def mask_for(case: Path, grid: dict, name: str = "liver", direction=IDENTITY) -> None:
    """``segmentations/<name>.nii.gz`` on a series grid (see :func:`restamp`)."""
    write_image(case / "segmentations" / f"{name}.nii.gz", box_mask(grid["shape"]),
                grid["spacing"], grid["origin"], direction)


def any_mask(case: Path) -> None:
    """A placeholder mask for cases rejected before masks are read."""
    mask_for(case, {"shape": (4, 4, 2), "spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0)})


VOL = ramp_volume((12, 10, 4))  # HU in -500..646
FACTORY_GRID = {"shape": VOL.shape, "spacing": (0.8, 0.9, 2.0), "origin": (-100.0, -80.0, 40.0)}


def factory_case(case: Path, volume=VOL, **kwargs) -> None:
    write_series(case / "dicom", volume, **kwargs)
    grid = dict(FACTORY_GRID, shape=volume.shape)
    mask_for(case, grid)


CT = (np.arange(20 * 18 * 8).reshape(20, 18, 8) % 400 - 200).astype(np.int16)
NIFTI_GRID = {"shape": CT.shape, "spacing": (1.0, 1.0, 2.0), "origin": (0.0, 0.0, 0.0)}


def totalseg_case(case: Path, image=CT, stem="ct", masks=None, **image_kwargs) -> None:
    write_image(case / f"{stem}.nii.gz", image, **image_kwargs)
    for name, mask in (masks if masks is not None else {"liver": box_mask(CT.shape)}).items():
        write_image(case / "segmentations" / f"{name}.nii.gz", mask)


def multilabel_case(case: Path, labels: dict, label_map=None) -> None:
    write_image(case / "image.nii.gz", CT)
    if label_map is None:
        label_map = box_mask(CT.shape)
        label_map[:, :, 4:] *= 2  # value 1 in the lower half, 2 in the upper half
    write_image(case / "labels.nii.gz", label_map.astype(np.uint8))
    (case / "labels.json").write_text(labels if isinstance(labels, str) else json.dumps(labels))


# --------------------------------------------------------------- the table


@dataclass(frozen=True)
class Expect:
    """``accepted`` (with the notes process_case reports) or ``rejected``."""

    outcome: str
    stage: str = ""
    reason: str = ""
    text: str = ""  # a substring of the message naming the field (and the value found)
    path: str = ""  # the file named, relative to the case folder ("" = the folder)
    notes: dict = field(default_factory=dict)


def accepted(**notes) -> Expect:
    return Expect("accepted", notes=notes)


def rejected(stage: str, reason: str, text: str, path: str = "") -> Expect:
    return Expect("rejected", stage, reason, text, path)


@dataclass(frozen=True)
class BadInput:
    id: str
    write: Callable[[Path], Callable[[Volume], None] | None]  # may return a check of the volume
    expect: Expect
    kind: str = "case"  # "case" (a case folder) or "png" (one RadImageNet image)
    settings: dict = field(default_factory=dict)  # SliceSettings overrides


# DICOM: real compressed and unusual files ------------------------------------------


def _real_series(name: str, *, modality=None, compare: str | None = None, atol=0.0, **kw):
    """Builder: ``name`` restamped as 3 slices; check against ``compare``'s stored values."""

    def write(case: Path):
        grid = restamp(real_file(name), case / "dicom", modality=modality, **kw)
        mask_for(case, grid)

        def check(volume: Volume) -> None:
            assert volume.geometry.shape == grid["shape"]
            want = stored_hu(compare or name)
            for k in range(3):
                np.testing.assert_allclose(volume.array[:, :, k], want, atol=atol)

        return check

    return write


def _jpeg_extended(case: Path):
    grid = restamp(real_file("JPGExtended.dcm"), case / "dicom", modality="MR")
    mask_for(case, grid)

    def check(volume: Volume) -> None:
        # pydicom refuses 12-bit JPEG Extended for GDCM; GDCM decodes it. The
        # lossless twin of the same NM image (pydicom-data JPEG-LL.dcm) is the reference.
        lossless = stored_hu("JPEG-LL.dcm")
        got = volume.array[:, :, 1]
        assert np.corrcoef(got.ravel(), lossless.ravel())[0, 1] > 0.98
        assert np.abs(got - lossless).mean() < 5

    return check


def _jpeg_extended_broken_sos(case: Path):
    grid = restamp(real_file("JPEG-lossy.dcm"), case / "dicom", modality="MR")
    mask_for(case, grid)

    def check(volume: Volume) -> None:
        # libjpeg reports invalid SOS parameters yet decodes: the same pixels as the
        # fixed file (pydicom's JPGExtended.dcm) read the same way.
        fixed = case.parent / "_fixed" / "dicom"
        restamp(real_file("JPGExtended.dcm"), fixed, modality="MR")
        want = read_dicom_series([(str(p), p.name) for p in sorted(fixed.glob("*.dcm"))])
        np.testing.assert_array_equal(volume.array, want.array)

    return check


def _jpeg_baseline(case: Path):
    source = np.round(VOL / 8 + 100)  # 0..255 stored values
    write_series(case / "dicom", source, intercept=0.0, modality="MR", jpeg_quality=95)
    mask_for(case, FACTORY_GRID)

    def check(volume: Volume) -> None:
        assert np.abs(volume.array - source).mean() < 2  # lossy, but the same image

    return check


def _truncated_pixel_data(case: Path):
    restamp(real_file("MR_small.dcm"), case / "dicom", slices=(0, 1, 2))
    restamp(real_file("MR_truncated.dcm"), case / "dicom", slices=(3,))  # same series
    any_mask(case)


def _truncated_codestream(case: Path):
    from pydicom.encaps import encapsulate, generate_frames

    restamp(real_file("MR_small_jp2klossless.dcm"), case / "dicom")
    path = case / "dicom" / "MR_small_jp2klossless_1.dcm"
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:-300]])  # a well-formed file holding a cut codestream
    ds.save_as(path, enforce_file_format=False)
    any_mask(case)


def _cut_before_pixels(case: Path):
    restamp(real_file("MR_small.dcm"), case / "dicom")
    path = case / "dicom" / "MR_small_2.dcm"
    path.write_bytes(path.read_bytes()[:-9000])  # cut inside the header: no PixelData left
    any_mask(case)


def _copy(*names: str, then: Callable[[Path], None] | None = None):
    def write(case: Path):
        (case / "dicom").mkdir(parents=True)
        for name in names:
            shutil.copy(real_file(name), case / "dicom" / name)
        if then:
            then(case)
        else:
            any_mask(case)

    return write


def _no_meta_native(case: Path):
    grid = restamp(real_file("CT_small.dcm"), case / "dicom", file_meta=False)
    mask_for(case, grid)

    def check(volume: Volume) -> None:
        data = (case / "dicom" / "CT_small_0.dcm").read_bytes()
        assert data[128:132] != b"DICM" and data[:4] == b"\x08\x00\x05\x00"  # really bare
        np.testing.assert_array_equal(volume.array[:, :, 0], stored_hu("CT_small.dcm"))
        assert volume.notes["dicom_transfer_syntax_inferred"] == [
            f"{case.name}/dicom/CT_small_{k}.dcm: no file meta header, read as Implicit VR Little "
            "Endian" for k in range(3)]

    return check


def _no_meta_encapsulated(case: Path):
    restamp(real_file("MR_small_RLE.dcm"), case / "dicom", file_meta=False)
    any_mask(case)


def _no_decoder(case: Path):
    from pydicom.uid import MPEG2MPML

    restamp(real_file("MR_small_RLE.dcm"), case / "dicom")
    for path in sorted((case / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = MPEG2MPML  # video: no decoder exists in pydicom
        ds.save_as(path, enforce_file_format=False)
    any_mask(case)


def _enhanced_ct_hu(case: Path):
    ds = pydicom.dcmread(real_file("eCT_Supplemental.dcm"))
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleType = "HU"
    (case / "dicom").mkdir(parents=True)
    ds.save_as(case / "dicom" / "eCT_Supplemental.dcm", enforce_file_format=False)
    # Frame 1 sits at z = -159, frame 2 at -149; rows run to the patient's right (-x).
    # Native grid: axes (row, col, normal) = (-x, +y, -z), first plane along the normal at -149.
    spacing = 0.388672
    grid = {"shape": (512, 512, 2), "spacing": (spacing, spacing, 10.0),
            "origin": (99.5, -301.5, -149.0)}
    mask_for(case, grid, direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0))

    def check(volume: Volume) -> None:
        frames = ds.pixel_array.astype(np.float32) - 1024  # (frame, row, col), HU
        assert volume.geometry.shape == (512, 512, 2)
        assert np.allclose(volume.geometry.spacing, (spacing, spacing, 10.0))
        # Canonical i runs to the left (+x): the rows' -x direction is flipped.
        np.testing.assert_array_equal(volume.array[:, :, 0], frames[0].T[::-1, :])  # z = -159
        np.testing.assert_array_equal(volume.array[:, :, 1], frames[1].T[::-1, :])  # z = -149
        assert np.allclose(volume.geometry.origin, (99.5 - 511 * spacing, -301.5, -159.0),
                           atol=1e-3)

    return check


def _enhanced_shuffled(case: Path):
    write_enhanced(case / "dicom" / "enhanced.dcm", VOL, frame_order=[2, 0, 3, 1])
    mask_for(case, FACTORY_GRID)

    def check(volume: Volume) -> None:
        np.testing.assert_array_equal(volume.array, VOL)

    return check


def _enhanced_orientation_varies(case: Path):
    write_enhanced(case / "dicom" / "enhanced.dcm", VOL,
                   orientations=[None, None, (1, 0, 0, 0, 0.9950042, 0.0998334), None])
    any_mask(case)


def _several_series_real_objects(case: Path):
    factory_case(case)
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "liver.dcm", "rtplan.dcm"):  # screenshot, SEG, plan
        shutil.copy(real_file(name), case / "dicom" / name)

    def check(volume: Volume) -> None:
        np.testing.assert_array_equal(volume.array, VOL)
        assert volume.notes["dicom_files_skipped"] == [
            f"{case.name}/dicom/rtplan.dcm: no PixelData (RT Plan Storage)"]
        ignored = volume.notes["dicom_series_ignored"]
        assert len(ignored) == 2
        assert any("Modality SEG" in n for n in ignored)
        assert any("Modality OT" in n for n in ignored)

    return check


def _largest_series(case: Path):
    factory_case(case)
    write_series(case / "dicom", VOL[:, :, :2], series="scout", names=["x1.dcm", "x2.dcm"])

    def check(volume: Volume) -> None:
        np.testing.assert_array_equal(volume.array, VOL)
        assert len(volume.notes["dicom_series_ignored"]) == 1

    return check


def _two_equal_series(case: Path):
    factory_case(case)
    write_series(case / "dicom", VOL, series="other", names=[f"b{k}.dcm" for k in range(4)])


def _positions(steps, shift=(0.0, 0.0)):
    z, out = 40.0, []
    for n, s in enumerate([0.0, *steps]):
        z += s
        out.append((-100.0 + shift[0] * n, -80.0 + shift[1] * n, z))
    return out


def _four_d(case: Path):
    # 3 time points x 4 positions, each plane stamped with its temporal position.
    volume = np.concatenate([VOL] * 3, axis=2)
    positions = [p for _ in range(3) for p in _positions([2.0, 2.0, 2.0])]
    per_slice = [{"TemporalPositionIdentifier": t + 1} for t in range(3) for _ in range(4)]
    write_series(case / "dicom", volume, positions=positions, per_slice=per_slice)
    any_mask(case)


def _monochrome1(modality: str):
    def write(case: Path):
        factory_case(case, modality=modality, photometric="MONOCHROME1")

        def check(volume: Volume) -> None:
            if modality == "CT":  # Hounsfield units are physical: never inverted
                np.testing.assert_array_equal(volume.array, VOL)
            else:  # inverted over the whole volume, not per slice
                np.testing.assert_array_equal(volume.array, VOL.max() + VOL.min() - VOL)

        return check

    return write


def _rotated(degrees: float):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return [(c, s, 0, -s, c, 0)] * 4


# NIfTI, masks, labels ---------------------------------------------------------------


def _with_value(value: float, stem: str):
    def write(case: Path):
        image = CT.astype(np.float32)
        image[3, 4, 5] = value
        totalseg_case(case, image=image, stem=stem)

    return write


def _four_d_nifti(timepoints: int):
    def write(case: Path):
        frames = []
        for t in range(timepoints):
            frame = sitk.GetImageFromArray(np.ascontiguousarray((CT + t).T))
            frame.SetSpacing(NIFTI_GRID["spacing"])
            frames.append(frame)
        sitk.WriteImage(sitk.JoinSeries(frames), str(case / "ct.nii.gz"))
        write_image(case / "segmentations" / "liver.nii.gz", box_mask(CT.shape))

    return write


def _mask_on(grid_change: dict):
    def write(case: Path):
        grid = dict(NIFTI_GRID, **grid_change)
        write_image(case / "ct.nii.gz", CT)
        mask_for(case, grid)

    return write


def _unknown_structures(case: Path):
    totalseg_case(case, masks={"my_widget_left": box_mask(CT.shape),
                               "custom_lesion_7": box_mask(CT.shape)})

    def check(volume: Volume) -> None:
        from pipeline.config.recipes import load_recipe, pool_paths
        from pipeline.qa.pools import load_pools

        pools = load_pools(pool_paths(load_recipe("sample")))
        assert not pools.known("my_widget_left") and not pools.known("custom_lesion_7")

    return check


def _garbage_volume(case: Path):
    (case / "segmentations").mkdir(parents=True)
    (case / "ct.nii.gz").write_bytes(b"this is not a NIfTI file at all" * 10)
    write_image(case / "segmentations" / "liver.nii.gz", box_mask(CT.shape))


def _truncated_gzip(case: Path):
    totalseg_case(case)
    path = case / "ct.nii.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def write_nifti1(path: Path, array: np.ndarray, sform: np.ndarray) -> None:
    """A minimal NIfTI-1 file (int16) with a qform (identity) and ``sform``: SimpleITK cannot
    write a sheared grid."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *array.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<hh", header, 252, 1, 1)  # qform (identity quaternion) and sform codes
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *sform[row])
    header[344:348] = b"n+1\0"
    data = bytes(header) + b"\0" * 4 + array.astype("<i2").tobytes(order="F")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data))


def _non_orthogonal(case: Path):
    # Sheared axes in the sform: ITK falls back to the qform (or coerces the sform to a
    # rotation) with only a console warning, silently moving every voxel.
    sform = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    write_nifti1(case / "ct.nii.gz", CT, sform)
    write_image(case / "segmentations" / "liver.nii.gz", box_mask(CT.shape))
    assert sitk.ReadImage(str(case / "ct.nii.gz")).GetSize() == CT.shape  # ITK reads it


def _sform_drift(cosine: float, shape=None):
    """A TotalSegmentator CT as nibabel writes it: sform only (qform_code 0), its y axis
    leaning ``cosine`` toward x; ITK refuses it (checked), its masks share the sform."""

    def write(case: Path):
        affine = np.diag([-1.5, -1.5, 1.5, 1.0])
        affine[0, 1] = -1.5 * cosine
        data = CT if shape is None else np.zeros(shape, np.int16)
        mask = box_mask(data.shape)
        for path, array in ((case / "ct.nii.gz", data),
                            (case / "segmentations" / "liver.nii.gz", mask)):
            image = nibabel.Nifti1Image(array, affine)
            image.set_sform(affine, code=1)
            image.set_qform(None, code=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            nibabel.save(image, path)
        with pytest.raises(RuntimeError, match="orthonormal"):
            sitk.ReadImage(str(case / "ct.nii.gz"))

    return write


def _corrupt_vr(case: Path):
    restamp(real_file("CT_small.dcm"), case / "dicom")
    path = case / "dicom" / "CT_small_1.dcm"
    data = bytearray(path.read_bytes())
    at = data.find(b"\x28\x00\x04\x00CS")  # PhotometricInterpretation
    data[at + 4:at + 6] = b"WW"
    path.write_bytes(bytes(data))
    any_mask(case)


# PNG (RadImageNet tree) -------------------------------------------------------------

PNG = encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(data: bytes):
    def write(case: Path):
        path = case / "CT" / "abdomen" / "normal" / "img.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)

    return write


BOMB = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 100_000)) + _chunk(b"IEND", b""))
PNG_PATH = "CT/abdomen/normal/img.png"

R = "read"

CASES = [
    # DICOM — every compressed transfer syntax, real codestreams (pydicom / pydicom-data)
    BadInput("dicom-jpeg-baseline-8bit", _jpeg_baseline, accepted()),
    BadInput("dicom-jpeg-extended-12bit", _jpeg_extended, accepted()),
    BadInput("dicom-jpeg-extended-broken-sos", _jpeg_extended_broken_sos, accepted()),
    BadInput("dicom-jpeg-lossless-sv1", _real_series("JPEG-LL.dcm", modality="MR"), accepted()),
    BadInput("dicom-jpeg-ls-lossless", _real_series("MR_small_jpeg_ls_lossless.dcm",
                                                    compare="MR_small.dcm"), accepted()),
    BadInput("dicom-jpeg-ls-near-lossless", _real_series("JPEGLSNearLossless_16.dcm", modality="MR"),
             accepted()),
    BadInput("dicom-jpeg2000-lossless", _real_series("MR_small_jp2klossless.dcm",
                                                     compare="MR_small.dcm"), accepted()),
    BadInput("dicom-jpeg2000-lossy", _real_series("693_J2KI.dcm", compare="693_UNCI.dcm", atol=80),
             accepted()),
    BadInput("dicom-rle", _real_series("MR_small_RLE.dcm", compare="MR_small.dcm"), accepted()),
    BadInput("dicom-deflated", _real_series("image_dfl.dcm", modality="MR"), accepted()),
    BadInput("dicom-explicit-big-endian", _real_series("MR_small_bigendian.dcm",
                                                       compare="MR_small.dcm"), accepted()),
    BadInput("dicom-implicit-vr", _real_series("MR_small_implicit.dcm", compare="MR_small.dcm"),
             accepted()),
    BadInput("dicom-undecodable-jpeg2000", _real_series("JPEG2000-embedded-sequence-delimiter.dcm",
                                                        modality="MR"),
             rejected(R, "dicom.undecodable", "found JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91) data",
                      "dicom/JPEG2000-embedded-sequence-delimiter_0.dcm")),
    BadInput("dicom-no-decoder-mpeg2", _no_decoder,
             rejected(R, "dicom.undecodable", "found MPEG2 Main Profile / Main Level",
                      "dicom/MR_small_RLE_0.dcm")),
    # DICOM — broken files
    BadInput("dicom-truncated-pixel-data", _truncated_pixel_data,
             rejected(R, "dicom.truncated_pixel_data",
                      "PixelData (7FE0,0010): found 8130 bytes, expected 8192",
                      "dicom/MR_truncated_3.dcm")),
    BadInput("dicom-truncated-jpeg2000-codestream", _truncated_codestream,
             rejected(R, "dicom.truncated_pixel_data", "without the end-of-image marker FFD9",
                      "dicom/MR_small_jp2klossless_1.dcm")),
    BadInput("dicom-truncated-file-real", _copy("emri_small_jpeg_2k_lossless_too_short.dcm"),
             rejected(R, "dicom.truncated_file", "data set: found no data elements",
                      "dicom/emri_small_jpeg_2k_lossless_too_short.dcm")),
    BadInput("dicom-cut-before-pixel-data", _cut_before_pixels,
             rejected(R, "dicom.truncated_file", "PixelData (7FE0,0010): found none in a MR Image",
                      "dicom/MR_small_2.dcm")),
    BadInput("dicom-bad-vr-value", _copy("badVR.dcm"),
             rejected(R, "dicom.bad_value", "NumberOfFrames (0028,0008): found '1A'",
                      "dicom/badVR.dcm")),
    BadInput("dicom-no-file-meta-native", _no_meta_native, accepted()),
    BadInput("dicom-no-file-meta-compressed", _no_meta_encapsulated,
             rejected(R, "dicom.missing_transfer_syntax", "TransferSyntaxUID (0002,0010): found none",
                      "dicom/MR_small_RLE_0.dcm")),
    BadInput("dicom-no-file-meta-not-parsable", _copy("no_meta.dcm"),
             rejected(R, "dicom.no_images", "not a DICOM file", "dicom/no_meta.dcm")),
    BadInput("dicom-monochrome1-radiograph", _copy("RG3_UNCI.dcm"),
             rejected(R, "dicom.unsupported_modality", "Modality (0008,0060): found 'CR'",
                      "dicom/RG3_UNCI.dcm")),
    BadInput("dicom-enhanced-ct-perfusion-map", _copy("eCT_Supplemental.dcm"),
             rejected(R, "dicom.not_hounsfield", "RescaleType (0028,1054): found 'US'",
                      "dicom/eCT_Supplemental.dcm")),
    BadInput("dicom-enhanced-ct-real", _enhanced_ct_hu, accepted()),
    BadInput("dicom-enhanced-mr-without-frame-geometry", _copy("emri_small.dcm"),
             rejected(R, "dicom.missing_geometry",
                      "PerFrameFunctionalGroupsSequence (5200,9230): found none",
                      "dicom/emri_small.dcm")),
    BadInput("dicom-single-image", _copy("CT_small.dcm"),
             rejected(R, "volume.not_3d", "image planes: found 1", "dicom/CT_small.dcm")),
    BadInput("dicom-several-series-real-objects", _several_series_real_objects, accepted()),
    # DICOM — synthetic series
    BadInput("dicom-several-series-largest-wins", _largest_series, accepted()),
    BadInput("dicom-two-series-same-size", _two_equal_series,
             rejected(R, "dicom.ambiguous_series", "SeriesInstanceUID (0020,000E): found 2 series",
                      "dicom")),
    BadInput("dicom-mixed-modality-in-series",
             lambda c: factory_case(c, per_slice=[{}, {}, {"Modality": "OT"}, {}]),
             rejected(R, "dicom.inconsistent_slices", "Modality (0008,0060): found 'OT'",
                      "dicom/slice002.dcm")),
    BadInput("dicom-irregular-spacing", lambda c: factory_case(c, positions=_positions([2.0, 2.0, 3.0])),
             rejected(R, "dicom.irregular_spacing", "slice step found 3.000 mm", "dicom/slice003.dcm")),
    BadInput("dicom-duplicate-position", lambda c: factory_case(c, positions=_positions([2.0, 0.0, 2.0])),
             rejected(R, "dicom.duplicate_position", "expected distinct positions",
                      "dicom/slice002.dcm")),
    BadInput("dicom-orientation-varies",
             lambda c: factory_case(c, orientations=[(1, 0, 0, 0, 1, 0)] * 3 + [(1, 0, 0, 0, 0, 1)]),
             rejected(R, "dicom.orientation_varies", "ImageOrientationPatient (0020,0037): found",
                      "dicom/slice003.dcm")),
    BadInput("dicom-gantry-tilt", lambda c: factory_case(c, positions=_positions([2.0] * 3, (0, 0.5))),
             rejected(R, "dicom.gantry_tilt", "in-plane shift of 1.500 mm", "dicom/slice003.dcm")),
    BadInput("dicom-oblique", lambda c: factory_case(c, orientations=_rotated(20)),
             rejected(R, "geometry.oblique", "direction: axis 0 is oblique", "dicom/slice000.dcm")),
    BadInput("dicom-4d-series", _four_d,
             rejected(R, "volume.not_3d", "found 3 planes at each of 4 positions",
                      "dicom/slice000.dcm")),
    BadInput("dicom-monochrome1-mr", _monochrome1("MR"), accepted()),
    BadInput("dicom-monochrome1-ct", _monochrome1("CT"), accepted()),
    BadInput("dicom-enhanced-frames-shuffled", _enhanced_shuffled, accepted()),
    BadInput("dicom-enhanced-frame-orientation-varies", _enhanced_orientation_varies,
             rejected(R, "dicom.orientation_varies", "dicom/enhanced.dcm frame 3, expected",
                      "dicom/enhanced.dcm")),
    BadInput("dicom-corrupt-value-representation", _corrupt_vr,
             rejected(R, "dicom.bad_element", "PhotometricInterpretation (0028,0004): found value "
                      "representation 'WW'", "dicom/CT_small_1.dcm")),
    BadInput("dicom-over-voxel-limit", factory_case,
             rejected(R, "volume.too_large", "size: found 12 x 10 x 4 = 480 voxels", "dicom/slice000.dcm"),
             settings={"max_voxels": 400}),
    BadInput("dicom-empty-folder", lambda c: ((c / "dicom").mkdir(parents=True), any_mask(c)),
             rejected("discover", "dicom.no_files", "dicom/: found no files", "dicom")),
    BadInput("dicom-without-segmentations", lambda c: write_series(c / "dicom", VOL),
             rejected("discover", "source.missing_segmentations", "expected a segmentations/ folder")),
    # NIfTI volumes
    BadInput("nifti-nan", _with_value(np.nan, "ct"),
             rejected(R, "volume.non_finite", "voxels: found 1 NaN/inf values", "ct.nii.gz")),
    BadInput("nifti-inf", _with_value(np.inf, "mr"),
             rejected(R, "volume.non_finite", "voxels: found 1 NaN/inf values", "mr.nii.gz")),
    BadInput("nifti-non-orthogonal-direction", _non_orthogonal,
             rejected(R, "geometry.non_orthogonal", "direction (NIfTI sform srow_x/y/z): axes are not "
                      "orthogonal", "ct.nii.gz")),
    BadInput("nifti-sform-float-drift", _sform_drift(3e-4), accepted(nifti_sform_orthonormalised=[
        "nifti-sform-float-drift/ct.nii.gz: sform axes 3.0e-04 off orthogonal with qform_code 0, "
        "which ITK refuses; read with nibabel on the nearest orthonormal axes, voxel centres "
        "moved by at most 0.004 voxel (limit 0.1)",
        # its mask shares the sform: read on the same grid, and noted too
        "nifti-sform-float-drift/segmentations/liver.nii.gz: sform axes 3.0e-04 off orthogonal "
        "with qform_code 0, which ITK refuses; read with radvqa's plain NIfTI reader on the "
        "nearest orthonormal axes, voxel centres moved by at most 0.004 voxel (limit 0.1)"])),
    BadInput("nifti-sform-drift-over-bound", _sform_drift(6e-4, (300, 300, 2)),
             rejected(R, "geometry.non_orthogonal", "would move voxel centres by up to 0.127 voxel "
                      "across the 300 x 300 x 2 grid, expected at most 0.1 voxel", "ct.nii.gz")),
    BadInput("nifti-oblique-direction",
             lambda c: totalseg_case(c, direction=(0.9396926, -0.3420201, 0, 0.3420201, 0.9396926, 0,
                                                   0, 0, 1)),
             rejected(R, "geometry.oblique", "direction: axis 0 is oblique", "ct.nii.gz")),
    BadInput("nifti-4d-three-time-points", _four_d_nifti(3),
             rejected(R, "volume.not_3d", "(3 time points), expected 3D", "ct.nii.gz")),
    BadInput("nifti-4d-one-time-point", _four_d_nifti(1), accepted()),
    BadInput("nifti-2d-image", lambda c: totalseg_case(c, image=CT[:, :, 0]),
             rejected(R, "volume.not_3d", "dimension: found a 2D image", "ct.nii.gz")),
    BadInput("nifti-over-voxel-limit", totalseg_case,
             rejected(R, "volume.too_large", "size: found (20, 18, 8) = 2880 voxels", "ct.nii.gz"),
             settings={"max_voxels": 2000}),
    BadInput("nifti-not-a-nifti", _garbage_volume,
             rejected(R, "volume.unreadable", "file: found data SimpleITK cannot read", "ct.nii.gz")),
    BadInput("nifti-truncated-gzip", _truncated_gzip,
             rejected(R, "volume.unreadable", "gzip stream: found it cut short", "ct.nii.gz")),
    # masks
    BadInput("mask-shape-differs", _mask_on({"shape": (20, 18, 7)}),
             rejected(R, "mask.geometry_mismatch", "grid: found shape (20, 18, 7) != image shape (20, 18, 8)",
                      "segmentations/liver.nii.gz")),
    BadInput("mask-spacing-differs", _mask_on({"spacing": (1.0, 1.0, 3.0)}),
             rejected(R, "mask.geometry_mismatch", "spacing (1, 1, 3) != image spacing (1, 1, 2)",
                      "segmentations/liver.nii.gz")),
    BadInput("mask-origin-differs", _mask_on({"origin": (5.0, 0.0, 0.0)}),
             rejected(R, "mask.geometry_mismatch", "origin (5, 0, 0) != image origin (0, 0, 0)",
                      "segmentations/liver.nii.gz")),
    BadInput("mask-empty-beside-others",
             lambda c: totalseg_case(c, masks={"liver": box_mask(CT.shape),
                                               "spleen": np.zeros(CT.shape, np.uint8)}),
             accepted(empty_masks=["spleen"])),
    BadInput("masks-all-empty", lambda c: totalseg_case(c, masks={"liver": np.zeros(CT.shape, np.uint8)}),
             rejected(R, "masks.all_empty", "masks: found 1 mask(s), all empty", "segmentations")),
    BadInput("mask-values-beyond-0-1", lambda c: totalseg_case(c, masks={"liver": box_mask(CT.shape) * 2
                                                                    + (CT > 150)}),
             rejected(R, "mask.not_binary", "values: found {0, 1, 2, 3}", "segmentations/liver.nii.gz")),
    BadInput("mask-values-fractional",
             lambda c: totalseg_case(c, masks={"liver": box_mask(CT.shape, 0.5, np.float32)}),
             rejected(R, "mask.not_binary", "values: found {0, 0.5}", "segmentations/liver.nii.gz")),
    BadInput("mask-nan", lambda c: totalseg_case(c, masks={"liver": np.where(
        box_mask(CT.shape) > 0, 1.0, np.nan).astype(np.float32)}),
             rejected(R, "mask.not_binary", "values: found", "segmentations/liver.nii.gz")),
    BadInput("mask-values-0-255", lambda c: totalseg_case(c, masks={"liver": box_mask(CT.shape, 255)}),
             accepted()),
    BadInput("segmentations-folder-empty",
             lambda c: (write_image(c / "ct.nii.gz", CT), (c / "segmentations").mkdir()),
             rejected("discover", "source.missing_segmentations", "segmentations/: found no mask files",
                      "segmentations")),
    # multilabel
    BadInput("labels-json-names-absent-label",
             lambda c: multilabel_case(c, {"1": "liver", "2": "spleen", "3": "portal_vein"}),
             accepted(labels_absent=["portal_vein"])),
    BadInput("labels-map-value-not-in-json", lambda c: multilabel_case(c, {"1": "liver"}),
             rejected(R, "labels.unmapped_value", "values: found label values [2]", "labels.nii.gz")),
    BadInput("labels-json-broken", lambda c: multilabel_case(c, '{"1": "liver",'),
             rejected(R, "labels.unreadable", "JSON: found invalid JSON", "labels.json")),
    BadInput("labels-json-not-an-object", lambda c: multilabel_case(c, '["liver"]'),
             rejected(R, "labels.bad_format", "JSON: found list", "labels.json")),
    BadInput("structures-unknown-to-pools", _unknown_structures, accepted()),
    # folders
    BadInput("unknown-layout", lambda c: (c / "notes.txt").write_text("hello"),
             rejected("discover", "source.unknown_layout", "entries: found ['notes.txt']")),
    # PNG (RadImageNet tree)
    BadInput("png-good", _png(PNG), accepted(), kind="png"),
    BadInput("png-not-a-png", _png(b"GIF89a" + PNG[6:]),
             rejected(R, "image.unreadable", "signature: found b'GIF89a", PNG_PATH), kind="png"),
    BadInput("png-empty-file", _png(b""),
             rejected(R, "image.unreadable", "signature: found b''", PNG_PATH), kind="png"),
    BadInput("png-truncated", _png(PNG[:-20]),
             rejected(R, "image.unreadable", "chunk 'IDAT' at byte 33: truncated", PNG_PATH), kind="png"),
    BadInput("png-bad-crc", _png(PNG[:40] + bytes([PNG[40] ^ 0xFF]) + PNG[41:]),
             rejected(R, "image.unreadable", "CRC mismatch: found", PNG_PATH), kind="png"),
    BadInput("png-ihdr-wrong-length", _png(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\0" * 9)
                                           + _chunk(b"IEND", b"")),
             rejected(R, "image.unreadable", "IHDR: found 9 bytes, expected 13", PNG_PATH), kind="png"),
    BadInput("png-short-image-data",
             _png(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
                  + _chunk(b"IDAT", zlib.compress(b"\0" * 20)) + _chunk(b"IEND", b"")),
             rejected(R, "image.unreadable", "inflated to 20 bytes, expected 72", PNG_PATH),
             kind="png"),
    BadInput("png-decompression-bomb", _png(BOMB),
             rejected(R, "image.too_large", "IHDR: found 100000x100000 = 10000000000 pixels", PNG_PATH),
             kind="png"),
]


def test_the_table_is_big_and_its_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 30
    assert {c.expect.outcome for c in CASES} == {"accepted", "rejected"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: BadInput, tmp_path):
    root = tmp_path / "input"
    folder = root / case.id
    folder.mkdir(parents=True)
    check = case.write(folder)
    expect = case.expect
    if case.kind == "png":
        rel = f"{case.id}/{PNG_PATH}"
        data = (root / rel).read_bytes()
        if expect.outcome == "accepted":
            assert check_png(data, rel=rel) == (8, 8)
            return
        with pytest.raises(CaseError) as info:
            check_png(data, max_pixels=1_000_000, rel=rel)
        _assert_rejection(info.value.stage, info.value.reason, info.value.message, info.value.path,
                          expect, case.id)
        return

    cases, planned_rejects = discover_cases(str(root), pseudonym_key=KEY)
    if expect.stage == "discover":
        assert not cases
        [rej] = planned_rejects
        _assert_rejection("discover", rej.reason, rej.message, rej.source, expect, case.id)
        return
    assert not planned_rejects, planned_rejects
    [source] = cases
    settings = SliceSettings(**case.settings)
    if expect.outcome == "rejected":
        with pytest.raises(CaseError) as info:
            process_case(source, "train", str(root), settings)
        err = info.value
        _assert_rejection(err.stage, err.reason, err.message, err.path, expect, case.id)
        assert err.path in str(err)  # what the dead letter and the log show
        return
    result = process_case(source, "train", str(root), settings)
    assert result.images and result.structures
    # Reader notes (``dicom_*``, from Volume.notes) are checked on the volume itself.
    assert {k: v for k, v in result.notes.items() if not k.startswith("dicom_")} == expect.notes
    if check is not None:
        volume, _, _, _ = load_case(source, str(root), settings.max_voxels)
        check(volume)


def _assert_rejection(stage, reason, message, path, expect: Expect, case_id: str) -> None:
    assert (stage, reason) == (expect.stage, expect.reason), message
    assert expect.text in message, message
    assert "found" in message and "expected" in message, message  # the house style
    want = f"{case_id}/{expect.path}" if expect.path else case_id
    assert path == want, (path, message)


# ------------------------------------------------------------------ the build


def test_an_empty_input_folder_stops_the_launch_naming_it(tmp_path):
    from pipeline.launch.build import build

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(ConfigError, match="nothing-here"):
        build("sample", str(tmp_path / "out"), input_dir=str(empty), log=lambda m: None)


#: Bad cases put beside good phantoms in the end-to-end build (ids from CASES), plus one
#: case that reads but has no slice with enough of a structure (rejected at extraction).
E2E_BAD = ("unknown-layout", "dicom-without-segmentations", "dicom-truncated-pixel-data",
           "dicom-undecodable-jpeg2000", "dicom-4d-series", "nifti-nan", "mask-shape-differs",
           "labels-map-value-not-in-json")
E2E_ODD_BUT_GOOD = ("dicom-jpeg-ls-lossless", "mask-empty-beside-others")


def _tiny_structure(case: Path) -> None:
    mask = np.zeros(CT.shape, np.uint8)
    mask[5:7, 5:7, 3] = 1  # 4 px: below any slice selection threshold
    totalseg_case(case, masks={"liver": mask})


def test_bad_cases_beside_good_ones_land_in_the_dead_letters_and_the_counts(tmp_path):
    from collections import Counter

    from pipeline.inputs.phantoms import make_phantom
    from pipeline.inputs.sample import write_case
    from pipeline.launch.build import build

    root = tmp_path / "input"
    for index, form in ((0, "dicom"), (3, "totalseg")):  # a CT DICOM series, an MR NIfTI
        phantom = make_phantom(index)
        write_case(phantom, root / phantom.name, form)
    table = {c.id: c for c in CASES}
    for case_id in E2E_BAD + E2E_ODD_BUT_GOOD:
        (root / case_id).mkdir(parents=True)
        table[case_id].write(root / case_id)
    (root / "tiny-structure").mkdir()
    _tiny_structure(root / "tiny-structure")

    def run(max_reject_fraction: float):
        return build("sample", str(tmp_path / "out"), input_dir=str(root),
                     beam_args=["--direct_running_mode=in_memory"], log=lambda m: None,
                     max_reject_fraction=max_reject_fraction)

    result = run(1.0)

    lines = (tmp_path / "out" / "dead_letters" / "dead_letters.jsonl").read_text().splitlines()
    letters = [json.loads(line) for line in lines]
    assert str(tmp_path) not in "\n".join(lines)  # relative paths only
    by_case = {d["source"].split("/", 1)[0]: d for d in letters}
    assert sorted(by_case) == sorted([*E2E_BAD, "tiny-structure"])  # one letter per bad case
    for case_id in E2E_BAD:
        expect, letter = table[case_id].expect, by_case[case_id]
        want = f"{case_id}/{expect.path}" if expect.path else case_id
        assert (letter["stage"], letter["reason"], letter["source"]) == (
            expect.stage, expect.reason, want), letter
        assert expect.text in letter["message"] and letter["error_type"], letter
    tiny = by_case["tiny-structure"]
    assert (tiny["stage"], tiny["reason"]) == ("extract", "slices.none_selected")

    counts = result.manifest["counts"]
    for stage, c in counts.items():
        assert c["inputs"] == c["accepted"] + c["rejected"], stage
        assert c["rejected"] == sum(c["rejected_by_reason"].values()), stage
    expected: dict[str, Counter] = {}
    for case_id in E2E_BAD:
        expected.setdefault(table[case_id].expect.stage, Counter())[table[case_id].expect.reason] += 1
    expected.setdefault("extract", Counter())["slices.none_selected"] += 1
    for stage, reasons in expected.items():
        assert counts[stage]["rejected_by_reason"] == dict(reasons), stage
    n_folders = 2 + len(E2E_BAD) + len(E2E_ODD_BUT_GOOD) + 1
    assert counts["discover"]["inputs"] == n_folders
    assert counts["read"]["inputs"] == counts["discover"]["accepted"]
    assert counts["extract"]["inputs"] == counts["read"]["accepted"]
    assert counts["extract"]["accepted"] == 2 + len(E2E_ODD_BUT_GOOD)
    fraction = (len(E2E_BAD) + 1) / n_folders  # 9 of 13 cases
    assert result.reject_fraction == pytest.approx(fraction)
    assert result.exit_code == 0  # within --max-reject-fraction 1.0
    again = run(0.5)  # the same inputs against a stricter limit
    assert again.reject_fraction == pytest.approx(fraction) and again.exit_code == 3
    assert again.manifest["counts"] == counts
