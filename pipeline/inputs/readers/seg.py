"""DICOM SEG: the segments of a Segmentation object, on the grid of the series it segments.

A DICOM SEG (SOP class 1.2.840.10008.5.1.4.1.1.66.4, Modality ``SEG``) holds one frame per
segmented plane and segment.  Each segment is named by its ``SegmentLabel`` or, when that is
empty, by the ``CodeMeaning`` of its ``SegmentedPropertyTypeCodeSequence`` (lower case, spaces
and hyphens as underscores: ``Liver`` → ``liver``).  Each frame is placed on the image's
canonical grid from its own geometry (``PlanePositionSequence > ImagePositionPatient``, the
``PlaneOrientationSequence`` and ``PixelMeasuresSequence``, per frame or shared): the
frame's first pixel must fall on a voxel centre (within :data:`VOXEL_TOL` of a voxel), its
rows and columns along the grid's axes with the grid's spacing, and the whole frame inside the
grid; so a SEG made for another series, or resampled, is rejected rather than misplaced.
The frames are matched to the series' slices by position, which a ``ReferencedSOPInstanceUID``
would only restate (the image volume no longer carries its files' UIDs).  ``BINARY`` and
``FRACTIONAL`` (a voxel is in when its value is at least half of ``MaximumFractionalValue``)
segmentations are read; anything wrong is a :class:`CaseError` (``seg.*``) naming the file
and the field.
"""

from __future__ import annotations

import struct

import numpy as np

from pipeline.core.geometry import Geometry
from pipeline.errors import CaseError
from pipeline.inputs.readers.base import file_sha256

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: How far (in voxels) a frame's first pixel may sit from a voxel centre, and its steps from
#: the grid's axes and spacing (float rounding of positions written as decimal strings).
VOXEL_TOL = 0.05


def segment_name(item) -> str:
    """A segment's name: its SegmentLabel, else its segmented property type's CodeMeaning."""
    name = str(item.get("SegmentLabel", "") or "").strip()
    if not name:
        codes = item.get("SegmentedPropertyTypeCodeSequence") or []
        name = str(codes[0].get("CodeMeaning", "") or "").strip() if len(codes) else ""
    return "_".join(name.lower().replace("-", " ").split())


def _bad(field: str, found: str, expected: str, rel: str, reason: str = "seg.bad_value"):
    return CaseError("read", reason, f"{field}: found {found}, expected {expected}", rel)


def _group(ds, frame_item, sequence: str, keyword: str):
    """``keyword`` inside ``sequence`` of the frame's functional groups, else the shared ones."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    for holder in (frame_item, shared[0] if shared else None):
        if holder is None:
            continue
        items = holder.get(sequence)
        if items and keyword in items[0] and items[0][keyword].value not in (None, ""):
            return items[0][keyword].value
    return None


def _numbers(value, n: int):
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def read_segments(path: str, rel: str, image: Geometry) -> tuple[dict[str, np.ndarray], str]:
    """``({segment name: bool mask on image's canonical grid}, sha256 of the file)``; segments
    without a single set voxel are left out.

    pydicom parses data elements when they are first read, so a corrupt element (its length,
    its value representation) surfaces as whatever pydicom raises at that moment; it is turned
    into ``seg.unreadable`` naming the file, as a corrupt file should be."""
    try:
        return _read_segments(path, rel, image)
    except CaseError:
        raise
    except (struct.error, NotImplementedError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError) as err:
        raise _bad("data elements", f"a malformed element pydicom cannot parse "
                   f"({type(err).__name__}: {' '.join(str(err).split())[:120]})",
                   "a well-formed DICOM SEG", rel, "seg.unreadable") from err


def _read_segments(path: str, rel: str, image: Geometry) -> tuple[dict[str, np.ndarray], str]:
    # pydicom: 0.2-0.4 s to import with its decoders (docs/architecture.md); imported here so
    # that workers of NIfTI-only builds never pay for it (the registry imports this module)
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for malformed files
        raise _bad("file", f"data pydicom cannot parse ({type(err).__name__})",
                   "a DICOM SEG file", rel, "seg.unreadable") from err
    sop = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    if sop != SEG_SOP_CLASS and modality != "SEG":
        raise _bad("SOPClassUID (0008,0016) / Modality (0008,0060)", f"{sop!r} / {modality!r}",
                   f"{SEG_SOP_CLASS!r} (Segmentation Storage) / 'SEG'", rel, "seg.not_segmentation")
    kind = str(ds.get("SegmentationType", "") or "")
    if kind not in ("BINARY", "FRACTIONAL"):
        raise _bad("SegmentationType (0062,0001)", repr(kind), "'BINARY' or 'FRACTIONAL'", rel,
                   "seg.unsupported_type")
    names: dict[int, str] = {}
    for item in ds.get("SegmentSequence") or []:
        number, name = item.get("SegmentNumber"), segment_name(item)
        if not isinstance(number, int) or number < 1 or not name:
            raise _bad("SegmentSequence (0062,0002)", f"segment {number!r} named {name!r}",
                       "a positive SegmentNumber and a SegmentLabel or CodeMeaning", rel)
        if name in names.values() or number in names:
            raise _bad("SegmentSequence (0062,0002)", f"segment {number} / {name!r} twice",
                       "each segment number and name once", rel, "seg.duplicate_name")
        names[number] = name
    if not names:
        raise _bad("SegmentSequence (0062,0002)", "no segments", "one item per segment", rel)
    frames_meta = ds.get("PerFrameFunctionalGroupsSequence") or []
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - decoding errors of every kind
        raise _bad("PixelData (7FE0,0010)", f"data pydicom cannot decode ({type(err).__name__})",
                   "the segment frames", rel, "seg.unreadable") from err
    pixels = pixels.reshape((n_frames, *pixels.shape[-2:]))
    if len(frames_meta) != n_frames:
        raise _bad("PerFrameFunctionalGroupsSequence (5200,9230)", f"{len(frames_meta)} items",
                   f"one per frame (NumberOfFrames {n_frames})", rel)
    threshold = 1
    if kind == "FRACTIONAL":
        threshold = max(1, int(np.ceil(int(ds.get("MaximumFractionalValue", 255) or 255) / 2)))
    masks = {name: np.zeros(image.shape, bool) for name in names.values()}
    for f, item in enumerate(frames_meta):
        where = f"frame {f + 1}"
        number = _group(ds, item, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if number not in names:
            raise _bad(f"{where} SegmentIdentificationSequence > ReferencedSegmentNumber",
                       repr(number), f"one of the segments {sorted(names)}", rel)
        frame = pixels[f] >= threshold
        if frame.any():
            _place(masks[names[number]], frame, ds, item, image, rel, where)
    return {name: m for name, m in masks.items() if m.any()}, file_sha256(path)


def _place(mask: np.ndarray, frame: np.ndarray, ds, item, image: Geometry, rel: str,
           where: str) -> None:
    """OR ``frame`` (rows × columns) into ``mask`` at the voxels its geometry names."""
    position = _numbers(_group(ds, item, "PlanePositionSequence", "ImagePositionPatient"), 3)
    orientation = _numbers(_group(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _numbers(_group(ds, item, "PixelMeasuresSequence", "PixelSpacing"), 2)
    if position is None or orientation is None or spacing is None:
        raise _bad(f"{where} PlanePositionSequence / PlaneOrientationSequence / PixelMeasuresSequence",
                   "a missing or malformed ImagePositionPatient, ImageOrientationPatient or "
                   "PixelSpacing", "3, 6 and 2 numbers", rel, "seg.missing_geometry")
    grid_spacing = np.asarray(image.spacing, float)
    start = (position - np.asarray(image.origin, float)) / grid_spacing
    # canonical grid: world (LPS) = origin + index * spacing along i→L, j→P, k→S
    col_step = orientation[:3] * spacing[1] / grid_spacing  # one column to the right
    row_step = orientation[3:] * spacing[0] / grid_spacing  # one row down
    axes = []
    for step, what in ((col_step, "columns"), (row_step, "rows")):
        axis = int(np.argmax(np.abs(step)))
        unit = np.zeros(3)
        unit[axis] = np.sign(step[axis])
        if not np.allclose(step, unit, atol=VOXEL_TOL):
            raise _bad(f"{where} ImageOrientationPatient / PixelSpacing",
                       f"{what} stepping {np.round(step, 4).tolist()} voxels",
                       "rows and columns along the image grid's axes with its spacing", rel,
                       "seg.geometry_mismatch")
        axes.append((axis, int(unit[axis])))
    (ca, cs), (ra, rs) = axes
    first = np.round(start)
    n_rows, n_cols = frame.shape
    last = first.copy()
    last[ca] += cs * (n_cols - 1)
    last[ra] += rs * (n_rows - 1)
    shape = np.asarray(image.shape)
    if (ca == ra or not np.allclose(start, first, atol=VOXEL_TOL)
            or (np.minimum(first, last) < 0).any() or (np.maximum(first, last) >= shape).any()):
        raise _bad(f"{where} ImagePositionPatient", f"{np.round(position, 3).tolist()} "
                   f"(voxel {np.round(start, 3).tolist()} of a {frame.shape} frame)",
                   f"a frame on the image's voxel centres, inside its grid {tuple(image.shape)}",
                   rel, "seg.geometry_mismatch")
    index: list = [int(first[a]) for a in range(3)]
    for axis, sign, n in ((ca, cs, n_cols), (ra, rs, n_rows)):
        lo = int(first[axis])
        index[axis] = slice(lo, lo + n) if sign > 0 else slice(lo, lo - n if lo - n >= 0 else None, -1)
    view = mask[tuple(index)]
    view |= frame.T if ca < ra else frame


class SegReader:
    """The :class:`~pipeline.inputs.readers.base.MaskReader` of DICOM SEG files: segments named
    by the file itself, read by :meth:`read_label_map` with no class map of the layout's."""

    name = "dicom-seg"
    takes = "a DICOM SEG file named *.dcm"

    def accepts_mask(self, path: str, rel: str) -> bool:
        """A file named ``*.dcm`` (the name TotalSegmentator and most tools give a SEG)."""
        return rel.lower().endswith(".dcm")

    def read_mask(self, path: str, rel: str, image: Geometry,
                  notes: dict | None = None) -> tuple[np.ndarray, str]:
        """The SEG's one segment as a mask (a SEG of several segments is a label map)."""
        masks, digest = read_segments(path, rel, image)
        if len(masks) > 1:
            raise _bad("SegmentSequence (0062,0002)", f"{len(masks)} segments", "one", rel)
        return (next(iter(masks.values())) if masks else np.zeros(image.shape, bool)), digest

    def read_label_map(self, path: str, rel: str, image: Geometry, labels: dict[int, str],
                       notes: dict | None = None) -> tuple[dict[str, np.ndarray], str]:
        """Every segment by its own name (:func:`read_segments`); ``labels`` is not used: a SEG
        names its segments itself."""
        return read_segments(path, rel, image)
