"""Readers: DICOM series and ITK-readable volumes (NIfTI, NRRD, MHA) and masks.

Every reader returns arrays in the canonical orientation (``[i, j, k]``, i→L,
j→P, k→S; see :mod:`pipeline.geometry`) and raises :class:`CaseError` naming
the file and the field for anything it cannot read.  Nothing from a file's
header leaves this module except the allow-listed fields of
:data:`HEADER_ALLOW_LIST`.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import CaseError
from pipeline.geometry import Geometry, canonicalise, geometry_mismatches

#: DICOM attributes allowed to reach the corpus (no free text, no identifiers).
HEADER_ALLOW_LIST = ("Modality", "BodyPartExamined")
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
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size = reader.GetSize()
        if len(size) != 3 and not (len(size) == 4 and size[3] == 1):
            raise CaseError(
                "read", "volume.not_3d",
                f"dimension: found {len(size)}D image of size {tuple(size)}, expected 3D",
                rel,
            )
        n = int(np.prod(size))
        if max_voxels and n > max_voxels:
            raise CaseError(
                "read", "volume.too_large",
                f"size: found {tuple(size)} = {n} voxels, expected at most {max_voxels}",
                rel,
            )
        image = reader.Execute()
    except CaseError:
        raise
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CaseError("read", "volume.unreadable", f"SimpleITK cannot read it: {first}", rel) from err
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
        raise CaseError("read", "geometry.invalid", str(err), rel) from err
    return array, geometry


def nifti_non_finite(path: str) -> int:
    """Count NaN/inf voxels stored in a float NIfTI-1 file.

    ITK's NIfTI reader silently turns NaN into 0, so the raw data is scanned
    here; returns 0 for other formats and integer data types.
    """
    import gzip
    import struct

    lower = path.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if lower.endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
        if len(header) < 348:
            return 0
        endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        datatype = struct.unpack(endian + "h", header[70:72])[0]
        dtype = {16: "f4", 64: "f8"}.get(datatype)
        if dtype is None:
            return 0
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
        f.read(max(0, offset - 348))
        bad = 0
        item = np.dtype(endian + dtype).itemsize
        while block := f.read(item * (1 << 20)):
            values = np.frombuffer(block[: len(block) // item * item], dtype=endian + dtype)
            bad += int(np.count_nonzero(~np.isfinite(values)))
    return bad


def read_volume(path: str, rel: str, modality: str, *, max_voxels: int | None = None) -> Volume:
    """Read an image volume (NIfTI, NRRD, MHA) into a canonical :class:`Volume`."""
    array, geometry = read_itk(path, rel, max_voxels=max_voxels)
    bad = nifti_non_finite(path)
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


def read_mask(path: str, rel: str, image: Geometry) -> tuple[np.ndarray, str]:
    """Read a binary mask on ``image``'s canonical grid; return ``(bool array, sha256)``.

    Accepted values are {0, 1} and {0, 255}; a mask whose grid differs from the
    image's (after both are canonicalised) is rejected with every mismatching
    field.
    """
    array, geometry = read_itk(path, rel)
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    problems = geometry_mismatches(cgeom, image)
    if problems:
        raise CaseError("read", "mask.geometry_mismatch", "; ".join(problems), rel)
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
    array, geometry = read_itk(path, rel)
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    problems = geometry_mismatches(cgeom, image)
    if problems:
        raise CaseError("read", "mask.geometry_mismatch", "; ".join(problems), rel)
    if not np.issubdtype(canon.dtype, np.integer):
        if not np.array_equal(canon, np.round(canon)):
            raise CaseError(
                "read", "labels.non_integer",
                f"values: found non-integer labels in a {canon.dtype} map, expected integers",
                rel,
            )
        canon = canon.astype(np.int64)
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


@dataclass
class _Slice:
    rel: str
    ds: object
    position: np.ndarray
    orientation: np.ndarray


def read_dicom_series(
    paths: Sequence[tuple[str, str]], *, max_voxels: int | None = None
) -> Volume:
    """Read one DICOM series from ``[(absolute path, relative path), …]``.

    Files are grouped by SeriesInstanceUID; the series with the most image
    slices is used (a tie is ambiguous and rejected).  Slices are ordered by
    their position along the slice normal, ``dot(ImagePositionPatient,
    row × col)`` — never by file name or InstanceNumber — and must share one
    orientation, size and pixel spacing, have distinct positions, evenly
    spaced (1 %), with no in-plane shift between slices (gantry tilt).
    Rescale slope/intercept is applied per slice, so CT arrays are in HU.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[_Slice]] = defaultdict(list)
    digests = []
    skipped = []
    for path, rel in sorted(paths, key=lambda p: p[1]):
        with open(path, "rb") as f:
            data = f.read()
        digests.append(hashlib.sha256(data).hexdigest())
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError, OSError) as err:
            skipped.append((rel, f"{type(err).__name__}: {err}"))
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            skipped.append((rel, "no PixelData"))
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        try:
            position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
            orientation = np.array(
                [float(v) for v in ds.ImageOrientationPatient], dtype=np.float64
            )
            if position.shape != (3,) or orientation.shape != (6,):
                raise ValueError("wrong number of values")
        except (AttributeError, ValueError, TypeError) as err:
            raise CaseError(
                "read", "dicom.missing_geometry",
                "ImagePositionPatient (0020,0032) / ImageOrientationPatient (0020,0037): "
                f"found {ds.get('ImagePositionPatient')!r} / {ds.get('ImageOrientationPatient')!r},"
                " expected 3 and 6 numbers",
                rel,
            ) from err
        series[uid].append(_Slice(rel, ds, position, orientation))
    if not series:
        detail = "; ".join(f"{r}: {m}" for r, m in skipped[:3]) or "no files"
        raise CaseError(
            "read", "dicom.no_images",
            f"found no readable DICOM image among {len(paths)} files ({detail})",
            paths[0][1] if paths else "",
        )
    ranked = sorted(series.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
        raise CaseError(
            "read", "dicom.ambiguous_series",
            f"SeriesInstanceUID (0020,000E): found {len(ranked)} series with "
            f"{[len(s) for _, s in ranked]} slices, expected one image series with the most slices",
            ranked[0][1][0].rel.rsplit("/", 1)[0],
        )
    slices = ranked[0][1]
    volume = _assemble_series(slices, max_voxels=max_voxels)
    combined = hashlib.sha256("".join(digests).encode()).hexdigest()
    return Volume(volume[0], volume[1], volume[2], volume[3], combined)


def _assemble_series(slices: list[_Slice], *, max_voxels: int | None):
    first = slices[0]
    ds0 = first.ds
    frames = int(ds0.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise CaseError(
            "read", "dicom.multiframe",
            f"NumberOfFrames (0028,0008): found {frames}, expected single-frame slices",
            first.rel,
        )
    orient = first.orientation
    for s in slices[1:]:
        if not np.allclose(s.orientation, orient, atol=1e-4):
            raise CaseError(
                "read", "dicom.orientation_varies",
                f"ImageOrientationPatient (0020,0037): found {s.orientation.round(5).tolist()},"
                f" expected {orient.round(5).tolist()} as in {first.rel}",
                s.rel,
            )
    row, col = orient[:3], orient[3:]
    normal = np.cross(row, col)
    ref = _pixel_layout(first)
    for s in slices[1:]:
        layout = _pixel_layout(s)
        if layout != ref:
            raise CaseError(
                "read", "dicom.inconsistent_slices",
                f"Rows/Columns/PixelSpacing: found {layout}, expected {ref} as in {first.rel}",
                s.rel,
            )
    slices = sorted(slices, key=lambda s: (float(s.position @ normal), s.rel))
    positions = np.array([float(s.position @ normal) for s in slices])
    if len(slices) > 1:
        steps = np.diff(positions)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            i = int(dup[0])
            raise CaseError(
                "read", "dicom.duplicate_position",
                f"ImagePositionPatient (0020,0032): {slices[i + 1].rel} found at "
                f"{positions[i + 1]:.3f} mm along the normal, the same as {slices[i].rel}; "
                "expected distinct positions",
                slices[i + 1].rel,
            )
        step = float(np.median(steps))
        worst = int(np.argmax(np.abs(steps - step)))
        if abs(steps[worst] - step) > DICOM_POSITION_RTOL * step:
            raise CaseError(
                "read", "dicom.irregular_spacing",
                f"ImagePositionPatient (0020,0032): slice step found {steps[worst]:.3f} mm "
                f"before {slices[worst + 1].rel}, expected {step:.3f} mm (±1 %)",
                slices[worst + 1].rel,
            )
        offsets = np.array([s.position - slices[0].position for s in slices])
        in_plane = offsets - np.outer(offsets @ normal, normal)
        shift = float(np.abs(in_plane).max())
        if shift > 0.01 * max(ref[2]) + 1e-3:
            raise CaseError(
                "read", "dicom.gantry_tilt",
                f"ImagePositionPatient (0020,0032): slices shift {shift:.3f} mm in-plane along "
                "the stack (gantry tilt or sheared series), expected positions along the normal",
                slices[-1].rel,
            )
    else:
        step = float(ds0.get("SpacingBetweenSlices", 0) or ds0.get("SliceThickness", 0) or 1.0)
    rows, cols, (row_spacing, col_spacing) = ref
    n = rows * cols * len(slices)
    if max_voxels and n > max_voxels:
        raise CaseError(
            "read", "volume.too_large",
            f"size: found {cols} x {rows} x {len(slices)} = {n} voxels, expected at most "
            f"{max_voxels}",
            first.rel,
        )
    stack = np.empty((len(slices), rows, cols), dtype=np.float32)
    for z, s in enumerate(slices):
        stack[z] = _decode_slice(s)
    modality = str(ds0.get("Modality", "")).upper()
    modality = {"CT": "CT", "MR": "MR"}.get(modality)
    if modality is None:
        raise CaseError(
            "read", "dicom.unsupported_modality",
            f"Modality (0008,0060): found {ds0.get('Modality')!r}, expected 'CT' or 'MR'",
            first.rel,
        )
    _check_finite(stack, first.rel)
    direction = np.stack([row, col, normal], axis=1)
    geometry = Geometry(
        shape=(cols, rows, len(slices)),
        spacing=(col_spacing, row_spacing, step),
        origin=tuple(float(v) for v in slices[0].position),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    array = np.transpose(stack, (2, 1, 0))
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(first.rel) from None
    header = {k: str(ds0.get(k, "")) for k in HEADER_ALLOW_LIST if ds0.get(k, "") != ""}
    header["Modality"] = modality
    return canon, cgeom, modality, header


def _pixel_layout(s: _Slice):
    ds = s.ds
    try:
        spacing = tuple(float(v) for v in ds.PixelSpacing)
        if len(spacing) != 2 or min(spacing) <= 0:
            raise ValueError(spacing)
        return int(ds.Rows), int(ds.Columns), spacing
    except (AttributeError, ValueError, TypeError) as err:
        raise CaseError(
            "read", "dicom.missing_geometry",
            f"Rows/Columns/PixelSpacing (0028,0010/0011/0030): found {ds.get('Rows')!r}/"
            f"{ds.get('Columns')!r}/{ds.get('PixelSpacing')!r}, expected positive numbers",
            s.rel,
        ) from err


def _decode_slice(s: _Slice) -> np.ndarray:
    ds = s.ds
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable data
        tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise CaseError(
            "read", "dicom.undecodable",
            f"PixelData (7FE0,0010): cannot decode (transfer syntax {tsuid}): "
            f"{type(err).__name__}: {err}",
            s.rel,
        ) from err
    if pixels.ndim != 2:
        raise CaseError(
            "read", "dicom.unsupported_pixels",
            f"PixelData (7FE0,0010): found array of shape {pixels.shape}, expected one 2D frame",
            s.rel,
        )
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" and ds.get("Modality") != "CT":
        # MONOCHROME1 stores inverted grey levels; CT values are defined by the rescale.
        out = out.max() + out.min() - out
    return out


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
