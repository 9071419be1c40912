"""One DICOM series checked and stacked: planes, their geometry and rescale, the volume.

Pass 3 of :func:`pipeline.inputs.readers.dicom.read_dicom_series`.  A plane is a
single-frame image or one frame of an enhanced multi-frame image, whose
position, orientation, pixel spacing and rescale come from its per-frame (or
shared) functional groups.  Planes are ordered by their position along the slice
normal and must form one regular 3D grid; their decoded values are rescaled per
plane into a float32 stack, then canonicalised (``[i, j, k]``, i→L, j→P, k→S).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pipeline.core.geometry import Geometry, canonicalise, is_orthonormal, orthonormalise
from pipeline.errors import CaseError
from pipeline.inputs.readers.base import check_finite, drift_note
from pipeline.inputs.readers.dicom_decode import decode_file
from pipeline.inputs.readers.dicom_files import DicomFile

DICOM_POSITION_RTOL = 0.01  # slice steps may vary by 1 % before a series is irregular
_POSITION_TOL_MM = 1e-3  # planes closer than this along the normal share a position


@dataclass
class _Plane:
    """One image plane: a single-frame file, or one frame of a multi-frame file."""

    file: DicomFile
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


def assemble_series(
    files: list[DicomFile], *, max_voxels: int | None, notes: dict | None = None
) -> tuple[np.ndarray, Geometry, str]:
    """Check, order and decode the planes of one series: ``(canonical array, grid, modality)``.

    See :func:`pipeline.inputs.readers.dicom.read_dicom_series` for what is
    checked; the array is float32 (CT in HU), canonical ``[i, j, k]``.  Row and
    column cosines a little off orthogonal (float drift) are orthonormalised
    within the bounds of :func:`pipeline.core.geometry.orthonormalise`, with a
    line in ``notes["direction_orthonormalised"]``.
    """
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
    check_finite(stack, first.rel)
    direction = np.stack([row, col, normal], axis=1)
    geometry = Geometry(
        shape=(cols, rows, len(planes)),
        spacing=(col_spacing, row_spacing, step),
        origin=tuple(float(v) for v in planes[0].position),
        direction=tuple(float(v) for v in direction.ravel()),
    )
    array = np.transpose(stack, (2, 1, 0))
    try:
        if not is_orthonormal(geometry.direction):
            geometry, cosine, shift = orthonormalise(geometry, "ImageOrientationPatient (0020,0037)")
            if notes is not None:
                notes.setdefault("direction_orthonormalised", []).append(
                    drift_note(first.rel, "ImageOrientationPatient row and column", cosine, shift))
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(first.rel) from None
    return canon, cgeom, modality


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def _check_pixel_format(f: DicomFile) -> None:
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


def _planes_of(f: DicomFile) -> list[_Plane]:
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


def _plane(f: DicomFile, frame: int, groups) -> _Plane:
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


def _decode_planes(files: list[DicomFile], planes: list[_Plane], rows: int, cols: int) -> np.ndarray:
    """Decoded, rescaled planes as a ``(plane, row, column)`` float32 stack."""
    stack = np.empty((len(planes), rows, cols), dtype=np.float32)
    where: dict[int, list[tuple[int, _Plane]]] = defaultdict(list)
    for z, p in enumerate(planes):
        where[id(p.file)].append((z, p))
    for f in files:
        pixels = decode_file(f)
        for z, p in where[id(f)]:
            frame = pixels[p.frame] if pixels.ndim == 3 else pixels
            stack[z] = frame.astype(np.float32) * np.float32(p.slope) + np.float32(p.intercept)
        del pixels
    return stack
