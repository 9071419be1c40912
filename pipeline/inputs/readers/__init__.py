"""Readers: DICOM series and ITK-readable volumes (NIfTI, NRRD, MHA) and masks.

Every reader returns arrays in the canonical orientation (``[i, j, k]``, i→L,
j→P, k→S; see :mod:`pipeline.core.geometry`) and raises :class:`CaseError` naming
the file (relative to the input root) and the field, with the value found and
the value expected, for anything it cannot read.  Nothing from a file's header
leaves this module except the allow-listed fields of :data:`HEADER_ALLOW_LIST`.

What is accepted and what is rejected (reason slugs) is pinned by the table of
``tests/test_bad_inputs.py``; in short: every DICOM transfer syntax with an
installed decoder is decoded, only undecodable pixel data is rejected; a 3D
volume is required (a single 2D image, a 4D series or a 4D NIfTI with more
than one time point is ``volume.not_3d``); NIfTI grids must be orthonormal and
intensities finite; masks must lie on the image grid with values {0, 1} or
{0, 255}.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.geometry import Geometry, canonicalise, geometry_mismatches
from pipeline.errors import CaseError

#: DICOM attributes allowed to reach the corpus (no free text, no identifiers).
HEADER_ALLOW_LIST = ("Modality", "BodyPartExamined")
#: An allow-listed value passes only as a plain DICOM code string (VR CS: uppercase letters,
#: digits, space, underscore; at most 16 characters).  Anything else — free text, lower
#: case, a person name (``^``), several values — is dropped: scanners write site and
#: operator text into BodyPartExamined, and a value that is not a code is not needed.
HEADER_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_POSITION_RTOL = 0.01  # slice steps may vary by 1 % before a series is irregular


@dataclass(frozen=True)
class Volume:
    """A canonical volume: ``array[i, j, k]`` (float32; CT in HU) and its grid."""

    array: np.ndarray
    geometry: Geometry
    modality: str
    header: dict = field(default_factory=dict)
    content_sha256: str = ""
    #: What the reader left out or assumed, for the build summary:
    #: ``{note: ["relative path: why", …]}`` (DICOM files that are not images of the
    #: chosen series, files read without a file meta header).
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.shape != tuple(self.geometry.shape):
            raise ValueError(f"Volume array {self.array.shape} != geometry {self.geometry.shape}")
        if not self.geometry.is_canonical():
            raise ValueError("Volume must be canonical (direction = identity)")
        if self.modality not in ("CT", "MR"):
            raise ValueError(f"Volume.modality must be CT or MR, got {self.modality!r}")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_volume_file(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def strip_volume_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- ITK


def read_itk(path: str, rel: str, *, max_voxels: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an ITK-readable 3D file; return its ``[i, j, k]`` array and grid (not canonical)."""
    array, geometry, _ = _read_itk(path, rel, max_voxels=max_voxels)
    return array, geometry


def _read_itk(path: str, rel: str, *, max_voxels: int | None = None):
    """:func:`read_itk` plus the number of NaN/inf values stored in a float NIfTI.

    The header is checked first (dimension, sform, voxel limit), then a NIfTI's
    data is checked to be complete, before any voxel is decoded.
    """
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size = reader.GetSize()
        if len(size) != 3 and not (len(size) == 4 and size[3] == 1):
            raise CaseError(
                "read", "volume.not_3d",
                f"dimension: found a {len(size)}D image of size {tuple(size)}"
                + (f" ({size[3]} time points)" if len(size) == 4 else "")
                + ", expected 3D (or 4D with a single time point)",
                rel,
            )
        _check_nifti_sform(path, rel)
        n = int(np.prod(size))
        if max_voxels and n > max_voxels:
            raise CaseError(
                "read", "volume.too_large",
                f"size: found {tuple(size)} = {n} voxels, expected at most {max_voxels}",
                rel,
            )
        non_finite = _scan_nifti(path, rel)
        image = reader.Execute()
    except CaseError:
        raise
    except RuntimeError as err:
        lines = [ln for ln in str(err).replace(path, rel).splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else type(err).__name__
        raise CaseError(
            "read", "volume.unreadable",
            f"file: found data SimpleITK cannot read ({detail}), expected a NIfTI, NRRD or MHA "
            "volume",
            rel,
        ) from err
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(
            "read", "volume.multicomponent",
            f"pixel: found {image.GetNumberOfComponentsPerPixel()} components, expected 1",
            rel,
        )
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    try:
        geometry = Geometry(
            shape=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )
    except ValueError as err:
        raise CaseError("read", "geometry.invalid", f"header: {err}", rel) from err
    return array, geometry, non_finite


def _nifti1_header(path: str) -> tuple[bytes, str] | None:
    """The 348-byte NIfTI-1 header of ``path`` and its byte order, or None."""
    import gzip
    import struct

    lower = path.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if lower.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError):
        return None  # SimpleITK reports unreadable files
    if len(header) < 348:
        return None
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            return header, endian
    return None


def _scan_nifti(path: str, rel: str) -> int:
    """Check that a NIfTI-1 file holds all its voxel data; count stored NaN/inf values.

    ITK fills the missing part of a cut-short file with zeros without a
    word, and turns NaN into 0, so both are checked on the raw bytes.  A
    ``.nii.gz`` of integer data is checked by its gzip trailer (the size of
    the uncompressed data) and only streamed when the trailer disagrees;
    float data is always streamed to count non-finite values.  Returns 0 for
    other formats.
    """
    import gzip
    import struct
    import zlib

    found = _nifti1_header(path)
    if found is None:
        return 0
    header, endian = found
    dims = struct.unpack(endian + "8h", header[40:56])
    if not 1 <= dims[0] <= 7 or min(dims[1:1 + dims[0]]) < 1:
        return 0  # SimpleITK judges a malformed header
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    offset = max(348, int(struct.unpack(endian + "f", header[108:112])[0]))
    voxels = int(np.prod(dims[1:1 + dims[0]], dtype=np.int64))
    expected = offset + voxels * bitpix // 8
    float_type = {16: "f4", 64: "f8"}.get(datatype)
    gz = path.lower().endswith(".gz")

    def cut_short(total: int) -> CaseError:
        return CaseError(
            "read", "volume.unreadable",
            f"voxel data: found {max(0, total - offset)} bytes, expected {expected - offset} "
            f"({' x '.join(map(str, dims[1:1 + dims[0]]))} voxels of {bitpix} bits); the file "
            "is cut short",
            rel,
        )

    if not gz:
        size = os.path.getsize(path)
        if size < expected:
            raise cut_short(size)
        if float_type is None:
            return 0
    elif float_type is None:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", f.read(4))[0]
        if trailer == expected % (1 << 32):
            return 0
    opener = gzip.open if gz else open
    total, bad = 0, 0
    item = np.dtype(endian + float_type).itemsize if float_type else 1
    try:
        with opener(path, "rb") as f:
            head = f.read(offset)
            total = len(head)
            carry = b""
            while block := f.read(1 << 22):
                total += len(block)
                if float_type:
                    block = carry + block
                    usable = len(block) // item * item
                    values = np.frombuffer(block[:usable], dtype=endian + float_type)
                    bad += int(np.count_nonzero(~np.isfinite(values)))
                    carry = block[usable:]
    except (EOFError, OSError, zlib.error) as err:
        raise CaseError(
            "read", "volume.unreadable",
            f"gzip stream: found it cut short or corrupt after {total} bytes ({err}), expected "
            f"{expected} bytes of NIfTI data",
            rel,
        ) from err
    if total < expected:
        raise cut_short(total)
    return bad


def _check_nifti_sform(path: str, rel: str) -> None:
    """Reject a NIfTI whose sform is sheared (non-orthogonal axes).

    ITK coerces such a matrix to the nearest rotation with only a console
    warning, which would silently move every voxel; the stored sform is
    checked here instead.
    """
    import struct

    found = _nifti1_header(path)
    if found is None:
        return
    header, endian = found
    if struct.unpack(endian + "h", header[254:256])[0] <= 0:  # sform_code: no sform
        return
    rows = [struct.unpack(endian + "4f", header[o:o + 16])[:3] for o in (280, 296, 312)]
    affine = np.array(rows, dtype=np.float64)
    norms = np.linalg.norm(affine, axis=0)
    shown = np.array2string(affine, precision=4, separator=", ").replace("\n", "")
    if np.any(norms == 0) or not np.all(np.isfinite(affine)):
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"direction (NIfTI sform srow_x/y/z): found {shown}, expected three non-zero axes",
            rel,
        )
    unit = affine / norms
    if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-3):
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"direction (NIfTI sform srow_x/y/z): axes are not orthogonal: found {shown}, "
            "expected orthogonal axes (a sheared grid cannot be reoriented without resampling)",
            rel,
        )


def nifti_non_finite(path: str) -> int:
    """Count NaN/inf voxels stored in a float NIfTI-1 file (0 for other files).

    ITK's NIfTI reader silently turns NaN into 0, so the raw data is scanned.
    """
    return _scan_nifti(path, os.path.basename(path))


def read_volume(path: str, rel: str, modality: str, *, max_voxels: int | None = None) -> Volume:
    """Read an image volume (NIfTI, NRRD, MHA) into a canonical :class:`Volume`."""
    array, geometry, bad = _read_itk(path, rel, max_voxels=max_voxels)
    if bad:
        raise CaseError(
            "read", "volume.non_finite",
            f"voxels: found {bad} NaN/inf values in the stored data, expected finite intensities",
            rel,
        )
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    canon = canon.astype(np.float32, copy=False)
    _check_finite(canon, rel)
    return Volume(canon, cgeom, modality, {"Modality": modality}, file_sha256(path))


def _check_finite(array: np.ndarray, rel: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise CaseError(
            "read", "volume.non_finite",
            f"voxels: found {bad} NaN/inf values, expected finite intensities",
            rel,
        )


def _on_image_grid(path: str, rel: str, image: Geometry):
    """Read a mask or label map; its canonical array if it lies on ``image``'s grid."""
    array, geometry, bad = _read_itk(path, rel)
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    problems = geometry_mismatches(cgeom, image)
    if problems:
        raise CaseError(
            "read", "mask.geometry_mismatch",
            f"grid: found {'; '.join(problems)}, expected the mask on the image's grid",
            rel,
        )
    return canon, bad


def read_mask(path: str, rel: str, image: Geometry) -> tuple[np.ndarray, str]:
    """Read a binary mask on ``image``'s canonical grid; return ``(bool array, sha256)``.

    Accepted values are {0, 1} and {0, 255}; a mask whose grid differs from the
    image's (after both are canonicalised) is rejected with every mismatching
    field.
    """
    canon, bad = _on_image_grid(path, rel, image)
    if bad:
        raise CaseError(
            "read", "mask.not_binary",
            f"values: found {bad} NaN/inf values, expected {{0, 1}} (or {{0, 255}})",
            rel,
        )
    values = np.unique(canon)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", …" if len(values) > 8 else "")
        raise CaseError(
            "read", "mask.not_binary",
            f"values: found {{{shown}}}, expected {{0, 1}} (or {{0, 255}})",
            rel,
        )
    return canon != 0, file_sha256(path)


def read_label_map(
    path: str, rel: str, image: Geometry, labels: dict[int, str]
) -> tuple[dict[str, np.ndarray], str]:
    """Split a multilabel map into per-structure masks (canonical grid)."""
    canon, bad = _on_image_grid(path, rel, image)
    if bad or not (np.issubdtype(canon.dtype, np.integer)
                   or np.array_equal(canon, np.round(canon))):
        raise CaseError(
            "read", "labels.non_integer",
            f"values: found non-integer labels in a {canon.dtype} map"
            + (f" ({bad} NaN/inf)" if bad else "") + ", expected integers",
            rel,
        )
    canon = canon.astype(np.int64, copy=False)
    values = set(np.unique(canon).tolist()) - {0}
    unmapped = sorted(values - set(labels))
    if unmapped:
        raise CaseError(
            "read", "labels.unmapped_value",
            f"values: found label values {unmapped} that labels.json does not name, "
            f"expected only {sorted(labels)}",
            rel,
        )
    masks = {name: canon == value for value, name in sorted(labels.items()) if value in values}
    return masks, file_sha256(path)


# ------------------------------------------------------------------------- DICOM
#
# Reading a DICOM folder happens in three passes, so that a stray object (a
# screenshot, a dose report, a DICOMDIR) never spoils the image series beside
# it while anything wrong with the series itself rejects the case:
#
# 1. parse every file (header only matters here) and classify it: not DICOM,
#    a DICOM object without pixels, or an image object; a file that claims to
#    be DICOM but is cut short or malformed rejects the case at once;
# 2. group image objects by SeriesInstanceUID and pick the CT/MR series with
#    the most image planes (a plane is a single-frame file or one frame of a
#    multi-frame file);
# 3. check that series' planes (orientation, grid, positions) and decode them.

#: SOP classes of CT and MR image objects: such a file without PixelData has been cut short.
CT_MR_IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
#: Transfer syntaxes whose frames are JPEG-family codestreams ending in EOI/EOC (FFD9).
_JPEG_FAMILY_PREFIXES = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.7", "1.2.840.10008.1.2.4.8",
                         "1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")
_JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
_POSITION_TOL_MM = 1e-3  # planes closer than this along the normal share a position


@dataclass
class _File:
    """One parsed DICOM image object (its pixel data still encoded)."""

    path: str
    rel: str
    ds: object
    frames: int
    series: str
    modality: str
    inferred_syntax: str = ""  # set when the file had no TransferSyntaxUID


@dataclass
class _Plane:
    """One image plane: a single-frame file, or one frame of a multi-frame file."""

    file: _File
    frame: int  # 0-based frame index in the file
    position: np.ndarray
    orientation: np.ndarray
    layout: tuple  # (rows, columns, (row spacing, column spacing))
    slope: float
    intercept: float
    rescale_type: str

    @property
    def rel(self) -> str:
        return self.file.rel

    @property
    def where(self) -> str:
        return self.rel if self.file.frames == 1 else f"{self.rel} frame {self.frame + 1}"


def read_dicom_series(
    paths: Sequence[tuple[str, str]], *, max_voxels: int | None = None
) -> Volume:
    """Read one DICOM series from ``[(absolute path, relative path), …]``.

    Files are grouped by SeriesInstanceUID; the CT or MR series with the most
    image planes is used (a tie is ambiguous and rejected); other series and
    files that are not DICOM images are listed in ``Volume.notes``.  A plane is
    a single-frame image or one frame of an enhanced multi-frame image, whose
    position, orientation, pixel spacing and rescale come from its per-frame
    (or shared) functional groups.

    Planes are ordered by their position along the slice normal,
    ``dot(ImagePositionPatient, row × col)`` — never by file name,
    InstanceNumber or frame number — and must share one orientation, size and
    pixel spacing, with one plane per position (several planes per position
    is a 4D series), evenly spaced (1 %), and no in-plane shift between planes
    (gantry tilt).  At least two planes are required: a single image is not a
    volume.

    Pixel data of every transfer syntax pydicom has a decoder for is decoded
    (native, deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS,
    JPEG 2000, HTJ2K through pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle,
    GDCM or Pillow; 12-bit JPEG Extended, which pydicom does not hand to GDCM,
    is decoded by GDCM directly).  Rescale slope/intercept is applied per
    plane, so CT arrays are in HU (a CT RescaleType other than HU is
    rejected).  MONOCHROME1 MR volumes are inverted over the whole volume so
    that bright means high signal as in MONOCHROME2; CT values are Hounsfield
    units whatever the photometric interpretation.

    A file without a file meta header is read when its data set can be parsed
    (pydicom ``force=True``) and its pixel data is native: the transfer syntax
    is then the encoding pydicom detected.  Encapsulated pixel data without a
    transfer syntax is rejected, as the codec would be a guess.
    """
    files: list[_File] = []
    digests = []
    skipped: list[str] = []
    for path, rel in sorted(paths, key=lambda p: p[1]):
        with open(path, "rb") as f:
            data = f.read()
        digests.append(hashlib.sha256(data).hexdigest())
        parsed = _parse_dicom_file(path, rel, data)
        if isinstance(parsed, str):
            skipped.append(f"{rel}: {parsed}")
        else:
            files.append(parsed)
    if not files:
        detail = "; ".join(skipped[:3]) or "no files"
        raise CaseError(
            "read", "dicom.no_images",
            f"PixelData (7FE0,0010): found no DICOM image among {len(paths)} files ({detail}), "
            "expected a CT or MR image series",
            paths[0][1] if paths else "",
        )
    chosen, ignored = _choose_series(files)
    volume = _assemble_series(chosen, max_voxels=max_voxels)
    notes = {}
    if skipped:
        notes["dicom_files_skipped"] = skipped
    if ignored:
        notes["dicom_series_ignored"] = ignored
    inferred = [f"{f.rel}: no file meta header, read as {_syntax(f)[1]}"
                for f in chosen if f.inferred_syntax]
    if inferred:
        notes["dicom_transfer_syntax_inferred"] = inferred
    combined = hashlib.sha256("".join(digests).encode()).hexdigest()
    return Volume(volume[0], volume[1], volume[2], volume[3], combined, notes)


def _parse_dicom_file(path: str, rel: str, data: bytes) -> _File | str:
    """A parsed image object, or the reason the file is not one (a string)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        # No preamble/'DICM': either not DICOM at all or a bare data set
        # (ACR-NEMA style, or a file meta header lost in transfer).
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as err:  # noqa: BLE001 - any failure means "not a DICOM file"
            return f"not a DICOM file ({type(err).__name__})"
        if not _looks_like_dicom(ds):
            return "not a DICOM file (no 'DICM' prefix and no recognisable data elements)"
    except Exception as err:  # pydicom raises many types for malformed files
        raise CaseError(
            "read", "dicom.unreadable",
            f"file: found data pydicom cannot parse ({type(err).__name__}: {_one_line(err)}), "
            "expected a DICOM file",
            rel,
        ) from err
    if len(ds) == 0:
        raise CaseError(
            "read", "dicom.truncated_file",
            f"data set: found no data elements in {len(data)} bytes after the file meta header, "
            "expected a complete DICOM data set (file cut short?)",
            rel,
        )
    sop_class = str(ds.get("SOPClassUID", ""))
    if "PixelData" not in ds:
        if sop_class in CT_MR_IMAGE_STORAGE:
            raise CaseError(
                "read", "dicom.truncated_file",
                f"PixelData (7FE0,0010): found none in a {CT_MR_IMAGE_STORAGE[sop_class]} object "
                f"of {len(data)} bytes, expected pixel data (file cut short?)",
                rel,
            )
        kind = _sop_class_name(sop_class) or "no SOP class"
        return f"no PixelData ({kind})"
    meta = getattr(ds, "file_meta", None)
    inferred = ""
    if meta is None or "TransferSyntaxUID" not in meta:
        if ds["PixelData"].is_undefined_length:
            raise CaseError(
                "read", "dicom.missing_transfer_syntax",
                "TransferSyntaxUID (0002,0010): found none (no file meta header) while PixelData "
                "is encapsulated (compressed), expected a file meta header naming the codec",
                rel,
            )
        implicit, little = ds.original_encoding
        inferred = {
            (True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
            (False, False): "1.2.840.10008.1.2.2",
        }.get((bool(implicit), bool(little)), "")
        if not inferred:
            raise CaseError(
                "read", "dicom.missing_transfer_syntax",
                "TransferSyntaxUID (0002,0010): found none and an implicit VR big endian data "
                "set, expected a file meta header",
                rel,
            )
        if meta is None or not isinstance(meta, FileMetaDataset):
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = inferred
    frames = _positive_int(ds, "NumberOfFrames", "(0028,0008)", rel, default=1)
    _positive_int(ds, "Rows", "(0028,0010)", rel)
    _positive_int(ds, "Columns", "(0028,0011)", rel)
    return _File(
        path, rel, ds, frames, str(ds.get("SeriesInstanceUID", "")),
        str(ds.get("Modality", "") or "").upper(), inferred,
    )


def _looks_like_dicom(ds) -> bool:
    """Whether a data set read with ``force=True`` holds real DICOM elements."""
    try:
        return any(
            k in ds and str(ds[k].value).strip()
            for k in ("SOPClassUID", "Modality", "SeriesInstanceUID", "Rows")
        )
    except Exception:  # noqa: BLE001 - garbage read as elements
        return False


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    if not uid:
        return ""
    name = UID(uid).name
    return name if name != uid else uid


def _positive_int(ds, keyword: str, tag: str, rel: str, *, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value if value not in ("", None) else default)
        if number < 1:
            raise ValueError(number)
    except (TypeError, ValueError) as err:
        raise CaseError(
            "read", "dicom.bad_value",
            f"{keyword} {tag}: found {value!r}, expected a positive integer",
            rel,
        ) from err
    return number


def _choose_series(files: list[_File]) -> tuple[list[_File], list[str]]:
    """The CT/MR series with the most planes, and a note for each other series."""
    series: dict[str, list[_File]] = defaultdict(list)
    for f in files:
        series[f.series].append(f)

    def rank(item):
        uid, members = item
        is_ct_mr = any(m.modality in ("CT", "MR") for m in members)
        return (not is_ct_mr, -sum(m.frames for m in members), uid)

    ranked = sorted(series.items(), key=rank)
    best = ranked[0][1]
    best_is_ct_mr = not rank(ranked[0])[0]
    if best_is_ct_mr and len(ranked) > 1 and rank(ranked[0])[:2] == rank(ranked[1])[:2]:
        counts = [sum(m.frames for m in s) for _, s in ranked]
        raise CaseError(
            "read", "dicom.ambiguous_series",
            f"SeriesInstanceUID (0020,000E): found {len(ranked)} series with {counts} image "
            "planes, expected one CT/MR image series with the most planes",
            best[0].rel.rsplit("/", 1)[0],
        )
    ignored = [
        f"{members[0].rel} and {len(members) - 1} more file(s): series of "
        f"{sum(m.frames for m in members)} plane(s), Modality {members[0].modality or 'missing'}"
        for _, members in ranked[1:]
    ]
    return best, ignored


def _assemble_series(files: list[_File], *, max_voxels: int | None):
    first = files[0]
    modality = {"CT": "CT", "MR": "MR"}.get(first.modality)
    if modality is None:
        raise CaseError(
            "read", "dicom.unsupported_modality",
            f"Modality (0008,0060): found {first.ds.get('Modality')!r}, expected 'CT' or 'MR'",
            first.rel,
        )
    for f in files:
        if f.modality != first.modality:
            raise CaseError(
                "read", "dicom.inconsistent_slices",
                f"Modality (0008,0060): found {f.modality!r}, expected {first.modality!r} as in "
                f"{first.rel} (same SeriesInstanceUID)",
                f.rel,
            )
        _check_pixel_format(f)
    planes = [p for f in files for p in _planes_of(f)]
    if len(planes) < 2:
        raise CaseError(
            "read", "volume.not_3d",
            "image planes: found 1 (a single 2D image), expected at least 2 planes of one "
            "series to form a 3D volume",
            first.rel,
        )
    ref = planes[0]
    for p in planes[1:]:
        if not np.allclose(p.orientation, ref.orientation, atol=1e-4):
            raise CaseError(
                "read", "dicom.orientation_varies",
                f"ImageOrientationPatient (0020,0037): found {p.orientation.round(5).tolist()} "
                f"in {p.where}, expected {ref.orientation.round(5).tolist()} as in {ref.where}",
                p.rel,
            )
    for p in planes[1:]:
        if p.layout != ref.layout:
            raise CaseError(
                "read", "dicom.inconsistent_slices",
                f"Rows/Columns/PixelSpacing: found {p.layout} in {p.where}, expected "
                f"{ref.layout} as in {ref.where}",
                p.rel,
            )
    row, col = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row, col)
    planes.sort(key=lambda p: (float(p.position @ normal), p.rel, p.frame))
    positions = np.array([float(p.position @ normal) for p in planes])
    step = _check_positions(planes, positions, normal, ref.layout)
    rows, cols, (row_spacing, col_spacing) = ref.layout
    n = rows * cols * len(planes)
    if max_voxels and n > max_voxels:
        raise CaseError(
            "read", "volume.too_large",
            f"size: found {cols} x {rows} x {len(planes)} = {n} voxels, expected at most "
            f"{max_voxels}",
            first.rel,
        )
    if modality == "CT":
        for p in planes:
            if p.rescale_type not in ("", "HU"):
                raise CaseError(
                    "read", "dicom.not_hounsfield",
                    f"RescaleType (0028,1054): found {p.rescale_type!r} in {p.where}, expected "
                    "'HU' (or absent) for CT values in Hounsfield units",
                    p.rel,
                )
    stack = _decode_planes(files, planes, rows, cols)
    if modality != "CT":
        inverted = np.array([_photometric(p.file.ds) == "MONOCHROME1" for p in planes])
        if inverted.any():
            # MONOCHROME1 displays low values bright; invert over the whole
            # volume (never per plane) so bright means high signal as in MONOCHROME2.
            lo, hi = float(stack.min()), float(stack.max())
            stack[inverted] = np.float32(lo + hi) - stack[inverted]
    _check_finite(stack, first.rel)
    direction = np.stack([row, col, normal], axis=1)
    geometry = Geometry(
        shape=(cols, rows, len(planes)),
        spacing=(col_spacing, row_spacing, step),
        origin=tuple(float(v) for v in planes[0].position),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    array = np.transpose(stack, (2, 1, 0))
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(first.rel) from None
    header = allowed_header(first.ds)
    header["Modality"] = modality
    return canon, cgeom, modality, header


def allowed_header(ds) -> dict[str, str]:
    """The :data:`HEADER_ALLOW_LIST` attributes of ``ds`` whose value is a plain code string
    (:data:`HEADER_CODE_STRING`, padding removed); every other value is dropped."""
    header = {}
    for keyword in HEADER_ALLOW_LIST:
        element = ds.get(keyword)
        value = getattr(element, "value", element)
        if not isinstance(value, str):  # absent, empty, binary or multi-valued
            continue
        value = value.strip(" \x00")
        if HEADER_CODE_STRING.fullmatch(value):
            header[keyword] = value
    return header


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def _check_pixel_format(f: _File) -> None:
    ds = f.ds
    samples = ds.get("SamplesPerPixel", 1)
    photometric = _photometric(ds)
    if str(samples) != "1" or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CaseError(
            "read", "dicom.unsupported_pixels",
            f"SamplesPerPixel (0028,0002) / PhotometricInterpretation (0028,0004): found "
            f"{samples!r} / {photometric!r}, expected 1 / MONOCHROME1 or MONOCHROME2 (greyscale)",
            f.rel,
        )


def _planes_of(f: _File) -> list[_Plane]:
    """The planes of one file with their geometry and rescale (functional groups if any)."""
    ds = f.ds
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    if per_frame is None:
        if f.frames > 1:
            raise CaseError(
                "read", "dicom.missing_geometry",
                f"PerFrameFunctionalGroupsSequence (5200,9230): found none in a multi-frame image "
                f"of {f.frames} frames, expected the position and orientation of every frame",
                f.rel,
            )
        return [_plane(f, 0, None)]
    if len(per_frame) != f.frames:
        raise CaseError(
            "read", "dicom.bad_value",
            f"PerFrameFunctionalGroupsSequence (5200,9230): found {len(per_frame)} items, "
            f"expected one per frame (NumberOfFrames {f.frames})",
            f.rel,
        )
    return [_plane(f, i, [per_frame[i], shared]) for i in range(f.frames)]


def _find(sources, sequence: str | None, keyword: str):
    """``keyword`` from the first source holding it (inside ``sequence`` when given)."""
    for src in sources:
        if src is None:
            continue
        holder = src
        if sequence is not None:
            items = src.get(sequence)
            if not items:
                continue
            holder = items[0]
        if keyword in holder and holder[keyword].value not in (None, ""):
            return holder[keyword].value
    return None


def _plane(f: _File, frame: int, groups) -> _Plane:
    """Plane ``frame`` of ``f``; ``groups`` = [per-frame item, shared item] of an enhanced
    image (None for a classic single-frame image, whose attributes are top level)."""
    where = f.rel if f.frames == 1 else f"{f.rel} frame {frame + 1}"
    if groups is not None:
        sources = [*groups, f.ds]
        position = _find(sources, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _find(sources, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _find(sources, "PixelMeasuresSequence", "PixelSpacing")
        slope = _find(sources, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _find(sources, "PixelValueTransformationSequence", "RescaleIntercept")
        rescale_type = _find(sources, "PixelValueTransformationSequence", "RescaleType")
        names = ("PlanePositionSequence > ImagePositionPatient (0020,0032)",
                 "PlaneOrientationSequence > ImageOrientationPatient (0020,0037)",
                 "PixelMeasuresSequence > PixelSpacing (0028,0030)")
    else:
        position = f.ds.get("ImagePositionPatient")
        orientation = f.ds.get("ImageOrientationPatient")
        spacing = f.ds.get("PixelSpacing")
        slope, intercept = f.ds.get("RescaleSlope"), f.ds.get("RescaleIntercept")
        rescale_type = f.ds.get("RescaleType")
        names = ("ImagePositionPatient (0020,0032)", "ImageOrientationPatient (0020,0037)",
                 "PixelSpacing (0028,0030)")
    pos = _numbers(position, 3)
    ori = _numbers(orientation, 6)
    if pos is None or ori is None:
        raise CaseError(
            "read", "dicom.missing_geometry",
            f"{names[0]} / {names[1]}: found {_show(position)} / {_show(orientation)} in "
            f"{where}, expected 3 and 6 numbers",
            f.rel,
        )
    if not (np.isclose(np.linalg.norm(ori[:3]), 1, atol=1e-3)
            and np.isclose(np.linalg.norm(ori[3:]), 1, atol=1e-3)
            and abs(float(ori[:3] @ ori[3:])) < 1e-3):
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"{names[1]}: found {ori.round(5).tolist()} in {where}, expected two orthogonal "
            "unit vectors",
            f.rel,
        )
    pixel_spacing = _numbers(spacing, 2)
    if pixel_spacing is None or pixel_spacing.min() <= 0:
        raise CaseError(
            "read", "dicom.missing_geometry",
            f"{names[2]}: found {_show(spacing)} in {where}, expected 2 positive numbers",
            f.rel,
        )
    rescale = []
    for value, keyword, default in ((slope, "RescaleSlope (0028,1053)", 1.0),
                                    (intercept, "RescaleIntercept (0028,1052)", 0.0)):
        try:
            number = float(value) if value not in (None, "") else default
            if not np.isfinite(number) or (default == 1.0 and number == 0):
                raise ValueError(number)
        except (TypeError, ValueError) as err:
            raise CaseError(
                "read", "dicom.bad_value",
                f"{keyword}: found {value!r} in {where}, expected a finite number"
                + (" other than 0" if default == 1.0 else ""),
                f.rel,
            ) from err
        rescale.append(number)
    layout = (int(f.ds.Rows), int(f.ds.Columns), tuple(float(v) for v in pixel_spacing))
    return _Plane(f, frame, pos, ori, layout, rescale[0], rescale[1],
                  str(rescale_type or "").strip().upper())


def _numbers(value, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _show(value) -> str:
    if value is None:
        return "nothing"
    try:
        return repr([str(v) for v in value])
    except TypeError:
        return repr(str(value))


def _check_positions(planes: list[_Plane], positions: np.ndarray, normal, layout) -> float:
    """Slice step along the normal; rejects 4D, duplicate, irregular and tilted stacks."""
    steps = np.diff(positions)
    same = steps < _POSITION_TOL_MM
    if same.any():
        # Count planes per distinct position: equal counts > 1 make a 4D series.
        groups = np.split(np.arange(len(planes)), np.flatnonzero(~same) + 1)
        sizes = sorted({len(g) for g in groups})
        if len(groups) > 1 and len(sizes) == 1:
            raise CaseError(
                "read", "volume.not_3d",
                f"ImagePositionPatient (0020,0032): found {sizes[0]} planes at each of "
                f"{len(groups)} positions (a 4D series: time points, echoes or phases), "
                "expected one plane per position",
                planes[0].rel,
            )
        i = int(np.flatnonzero(same)[0])
        raise CaseError(
            "read", "dicom.duplicate_position",
            f"ImagePositionPatient (0020,0032): {planes[i + 1].where} found at "
            f"{positions[i + 1]:.3f} mm along the normal, the same as {planes[i].where}; "
            "expected distinct positions",
            planes[i + 1].rel,
        )
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    if abs(steps[worst] - step) > DICOM_POSITION_RTOL * step:
        raise CaseError(
            "read", "dicom.irregular_spacing",
            f"ImagePositionPatient (0020,0032): slice step found {steps[worst]:.3f} mm "
            f"before {planes[worst + 1].where}, expected {step:.3f} mm (±1 %)",
            planes[worst + 1].rel,
        )
    offsets = np.array([p.position - planes[0].position for p in planes])
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shift = float(np.abs(in_plane).max())
    if shift > 0.01 * max(layout[2]) + 1e-3:
        raise CaseError(
            "read", "dicom.gantry_tilt",
            f"ImagePositionPatient (0020,0032): found an in-plane shift of {shift:.3f} mm along "
            "the stack (gantry tilt or sheared series), expected positions along the normal",
            planes[-1].rel,
        )
    return step


def _decode_planes(files: list[_File], planes: list[_Plane], rows: int, cols: int) -> np.ndarray:
    """Decoded, rescaled planes as a ``(plane, row, column)`` float32 stack."""
    stack = np.empty((len(planes), rows, cols), dtype=np.float32)
    where: dict[int, list[tuple[int, _Plane]]] = defaultdict(list)
    for z, p in enumerate(planes):
        where[id(p.file)].append((z, p))
    for f in files:
        pixels = _decode_file(f)
        for z, p in where[id(f)]:
            frame = pixels[p.frame] if pixels.ndim == 3 else pixels
            stack[z] = frame.astype(np.float32) * np.float32(p.slope) + np.float32(p.intercept)
        del pixels
    return stack


def _syntax(f: _File) -> tuple[str, str]:
    """``(UID, name)`` of a file's transfer syntax."""
    from pydicom.uid import UID

    uid = str(f.ds.file_meta.TransferSyntaxUID)
    name = UID(uid).name
    return uid, (name if name != uid else "unknown transfer syntax")


def _decode_file(f: _File) -> np.ndarray:
    """Stored pixel values of every frame: ``(rows, cols)`` or ``(frames, rows, cols)``."""
    ds = f.ds
    uid, name = _syntax(f)
    rows, cols = int(ds.Rows), int(ds.Columns)
    encapsulated = ds["PixelData"].is_undefined_length
    if not encapsulated:
        bits = int(ds.get("BitsAllocated", 0) or 0)
        expected = rows * cols * f.frames * bits // 8 if bits >= 8 else 0
        found = len(ds.PixelData)
        if bits not in (8, 16, 32, 64):
            raise CaseError(
                "read", "dicom.unsupported_pixels",
                f"BitsAllocated (0028,0100): found {bits}, expected 8, 16, 32 or 64",
                f.rel,
            )
        if found < expected:
            raise CaseError(
                "read", "dicom.truncated_pixel_data",
                f"PixelData (7FE0,0010): found {found} bytes, expected {expected} "
                f"({rows} rows x {cols} columns x {f.frames} frame(s) x {bits} bits, "
                f"{name}); the file is cut short or its Rows/Columns/BitsAllocated are wrong",
                f.rel,
            )
    elif uid.startswith(_JPEG_FAMILY_PREFIXES):
        _check_codestreams(f, name)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable data
        pixels = None
        attempts = f"pydicom: {type(err).__name__}: {_one_line(err)}"
        if uid == _JPEG_EXTENDED_12BIT:
            try:
                pixels = _decode_with_gdcm(f)
            except Exception as gdcm_err:  # noqa: BLE001 - reported with the first attempt
                attempts += f"; GDCM: {type(gdcm_err).__name__}: {_one_line(gdcm_err)}"
        if pixels is None:
            raise CaseError(
                "read", "dicom.undecodable",
                f"PixelData (7FE0,0010): found {name} ({uid}) data no installed decoder can "
                f"decode (tried {attempts}), expected decodable pixel data",
                f.rel,
            ) from err
    expected_shape = (rows, cols) if f.frames == 1 else (f.frames, rows, cols)
    if pixels.shape != expected_shape:
        raise CaseError(
            "read", "dicom.unsupported_pixels",
            f"PixelData (7FE0,0010): decoded to shape {pixels.shape} ({name}), expected "
            f"{expected_shape} from Rows/Columns/NumberOfFrames",
            f.rel,
        )
    return pixels


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _check_codestreams(f: _File, name: str) -> None:
    """Every JPEG/JPEG-LS/JPEG 2000 frame must end with its EOI/EOC marker (FFD9).

    Decoders happily return a partial image from a cut codestream; the end
    marker is what tells a complete frame from a truncated one.
    """
    from pydicom.encaps import generate_frames

    try:
        frames = list(generate_frames(f.ds.PixelData, number_of_frames=f.frames))
    except Exception:  # noqa: BLE001 - malformed fragments are the decoder's to report
        return
    if len(frames) < f.frames:
        raise CaseError(
            "read", "dicom.truncated_pixel_data",
            f"PixelData (7FE0,0010): found {len(frames)} encapsulated frame(s), expected "
            f"{f.frames} (NumberOfFrames, {name})",
            f.rel,
        )
    for i, frame in enumerate(frames):
        if b"\xff\xd9" not in frame.rstrip(b"\x00")[-4:]:
            raise CaseError(
                "read", "dicom.truncated_pixel_data",
                f"PixelData (7FE0,0010): frame {i + 1} of {f.frames}: found {len(frame)} bytes "
                f"ending without the end-of-image marker FFD9, expected a complete {name} "
                "codestream",
                f.rel,
            )


def _decode_with_gdcm(f: _File) -> np.ndarray:
    """Stored values decoded by GDCM directly (12-bit JPEG Extended, which pydicom refuses)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(f.path)
    if not reader.Read():
        raise ValueError("gdcm.ImageReader cannot read the file")
    image = reader.GetImage()
    buffer = image.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM returned no pixel buffer")
    raw = buffer.encode("utf-8", "surrogateescape")
    scalar = image.GetPixelFormat().GetScalarTypeAsString()
    dtype = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
             "UINT32": np.uint32, "INT32": np.int32}.get(scalar)
    if dtype is None:
        raise ValueError(f"GDCM pixel type {scalar} is not supported")
    rows, cols = int(f.ds.Rows), int(f.ds.Columns)
    expected = rows * cols * f.frames * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ValueError(f"GDCM returned {len(raw)} bytes, expected {expected}")
    shape = (f.frames, rows, cols) if f.frames > 1 else (rows, cols)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def list_files(root: str, sub: str) -> list[tuple[str, str]]:
    """Regular files below ``root/sub`` as sorted ``(absolute, relative-to-root)`` pairs."""
    base = os.path.join(root, sub)
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            found.append((full, os.path.relpath(full, root).replace(os.sep, "/")))
    return found


def iter_mask_files(root: str, sub: str) -> Iterable[tuple[str, str, str]]:
    """``(structure name, absolute path, relative path)`` for ``root/sub/<name>.nii.gz``."""
    for full, rel in list_files(root, sub):
        name = os.path.basename(full)
        if is_volume_file(name):
            yield strip_volume_suffix(name), full, rel
