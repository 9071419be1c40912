"""Mask-to-box derivation: 2D boxes per slice, 3D statistics per volume, laterality.

Conventions:

* 2D boxes are in display pixel coordinates of the stored slice (``x`` =
  column, ``y`` = row), ``x_min, y_min`` inclusive, ``x_max, y_max``
  exclusive: ``mask[y_min:y_max, x_min:x_max]`` holds every pixel.  An empty
  mask has no box (``None``).
* 3D boxes are canonical voxel indices ``[i_min, j_min, k_min, i_max, j_max,
  k_max]`` with the same inclusive/exclusive rule.
* Laterality is the *patient's* side, from patient coordinates only: the
  position of the structure relative to the body midline (centre of the
  body's left-right extent at the structure's level).  Names are never read.
* Masks come as cropped :class:`~pipeline.core.masks.Mask` records (whole boolean volumes
  are accepted and cropped first); every box, count and centroid is the one the whole
  volume gives.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.core.body import ct_body_columns
from pipeline.core.components import count_components, slice_components
from pipeline.core.geometry import Geometry
from pipeline.core.masks import Mask, as_mask
from pipeline.core.slices import PLANE_AXIS, display_crop, display_spacing, display_to_index

#: A structure whose centroid lies this close to the midline is ``midline``.
MIDLINE_MARGIN_MM = 10.0


def mask_box(mask: np.ndarray) -> tuple[int, ...] | None:
    """Tight box of a boolean mask, ``(x_min, y_min, x_max, y_max)`` for 2D.

    For an ``n``-D mask returns the ``n`` minima then the ``n`` exclusive
    maxima in array-axis order, reversed for 2D so that ``x`` (columns) comes
    first.  ``None`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lo.append(int(present[0]))
        hi.append(int(present[-1]) + 1)
    if mask.ndim == 2:
        return lo[1], lo[0], hi[1], hi[0]
    return tuple(lo + hi)


def body_mask(volume: np.ndarray, modality: str) -> np.ndarray:
    """Voxels inside the patient: CT above -500 HU; MR above 5 % of the 99th percentile."""
    if modality == "CT":
        return volume > -500
    positive = volume[volume > 0]
    if positive.size == 0:
        return volume > 0
    return volume > 0.05 * float(np.percentile(positive, 99))


def body_midline(volume: np.ndarray, modality: str) -> np.ndarray:
    """Midline ``i`` (fractional voxel index) on each axial level ``k``.

    The centre of the body's left-right extent; levels without body take the
    median over the levels with body (or the volume's centre).
    """
    if modality == "CT":
        first, last = ct_body_columns(volume)
        mid = np.where(first >= 0, (first + last) / 2.0, np.nan)
    else:
        present = body_mask(volume, modality).any(axis=1)  # [i, k]
        mid = np.full(volume.shape[2], np.nan)
        for k in range(volume.shape[2]):
            cols = np.flatnonzero(present[:, k])
            if cols.size:
                mid[k] = (cols[0] + cols[-1]) / 2.0
    fill = float(np.nanmedian(mid)) if np.isfinite(mid).any() else (volume.shape[0] - 1) / 2.0
    mid[~np.isfinite(mid)] = fill
    return mid


def laterality(
    i_min: float, i_max: float, centroid_i: float, midline_i: float, spacing_i: float,
    *, margin_mm: float = MIDLINE_MARGIN_MM,
) -> str:
    """``left`` / ``right`` / ``midline`` from canonical ``i`` (toward the patient's left).

    ``midline`` when the centroid is within ``margin_mm`` of the midline, or
    when the extent ``[i_min, i_max)`` has at least a quarter of its width on
    each side of it.
    """
    if abs(centroid_i - midline_i) * spacing_i < margin_mm:
        return "midline"
    width = max(i_max - i_min, 1.0)
    right_part = midline_i - (i_min - 0.5)
    left_part = (i_max - 0.5) - midline_i
    if min(left_part, right_part) >= width / 4.0:
        return "midline"
    return "left" if centroid_i > midline_i else "right"


def lateralities(
    i_min: np.ndarray, i_max: np.ndarray, centroid_i: np.ndarray, midline_i: np.ndarray,
    spacing_i: float, *, margin_mm: float = MIDLINE_MARGIN_MM,
) -> list[str]:
    """:func:`laterality` of each element of float64 arrays: its very operations, element by
    element, so the very sides (``tests/test_plane_boxes.py``)."""
    near = np.abs(centroid_i - midline_i) * spacing_i < margin_mm
    width = np.maximum(i_max - i_min, 1.0)
    right_part = midline_i - (i_min - 0.5)
    left_part = (i_max - 0.5) - midline_i
    spans = np.minimum(left_part, right_part) >= width / 4.0
    sides = np.where(centroid_i > midline_i, "left", "right").astype(object)
    sides[near | spans] = "midline"
    return sides.tolist()


def rounded(values: np.ndarray, digits: int = 4) -> list[float]:
    """``[round(v, digits) for v in values]`` of a float64 array: the very floats, bit for bit.

    Python rounds the exact binary value half to even and returns the float nearest that
    decimal; ``rint(v * 10**digits) / 10**digits`` gives that same float whenever the
    product's own rounding error cannot carry it across a half-integer (its distance to the
    nearest one exceeds twice that error's bound), the division of an exact integer by an
    exact power of ten being correctly rounded.  The few values too near a half-integer
    (ties included), too large, or not finite take Python's ``round``; ``digits`` from 0 to 22,
    whose powers of ten float64 holds exactly (``tests/test_plane_boxes.py``)."""
    if not 0 <= digits <= 22:
        raise ValueError(f"rounded: digits must be 0 to 22 (exact powers of ten), got {digits}")
    scale = 10.0 ** digits
    with np.errstate(over="ignore", invalid="ignore"):  # (infinities: not sure)
        scaled = values * scale
        whole = np.rint(scaled)
        magnitude = np.abs(scaled)
        sure = (0.5 - np.abs(scaled - whole) > magnitude * 2.0 ** -52) & (magnitude < 2.0 ** 52)
    out = (whole / scale).tolist()
    if not sure.all():
        for i in np.flatnonzero(~sure).tolist():
            out[i] = round(float(values[i]), digits)
    return out


def _index_points_to_lps(geometry: Geometry, ijk: np.ndarray) -> np.ndarray:
    """:meth:`Geometry.index_to_lps` of each row of ``ijk`` (``[n, 3]``) as of that one point:
    a vector-matrix product per point (numpy's matmul takes each of a stack of ``[1, 3]``
    rows by the single-vector route), not one matrix product over the ``n`` points, whose
    BLAS kernel may sum the terms otherwise (``tests/test_plane_boxes.py``)."""
    scaled = (ijk * np.asarray(geometry.spacing))[:, None, :]
    return np.asarray(geometry.origin) + (scaled @ geometry.matrix.T)[:, 0, :]


def slice_boxes(
    masks: Mapping[str, Mask | np.ndarray],
    plane: str,
    index: int,
    geometry: Geometry,
    midline: np.ndarray,
) -> list[dict]:
    """Boxes of every structure present on one display slice, sorted by label.

    The per-slice reference: extraction calls :func:`plane_boxes`, which must give these
    very boxes for every slice it is asked for (``tests/test_plane_boxes.py``).

    Each box: ``label, x_min, y_min, x_max, y_max, area_px, area_mm2,
    components, centroid_x, centroid_y`` (display pixels), ``centroid_lps``
    (``[x, y, z]`` mm) and ``laterality``.
    """
    dx, dy = display_spacing(geometry.spacing, plane)
    si = geometry.spacing[0]
    out = []
    for label in sorted(masks):
        found = display_crop(as_mask(masks[label]), plane, index)
        if found is None:
            continue
        m, x0, y0 = found
        # box, area and centroid from the pixel counts per column and per row: the sums are
        # integers, exact in float64, so the centroid is the mean of the pixels' coordinates
        ones = m.view(np.uint8)  # bool bytes are 0 and 1: sums are counts (numpy's
        per_x = ones.sum(axis=0, dtype=np.int64)  # count_nonzero with an axis does this in Python)
        per_y = ones.sum(axis=1, dtype=np.int64)
        area = int(per_x.sum())
        if area == 0:
            continue
        xs, ys = per_x.nonzero()[0], per_y.nonzero()[0]
        x_min, x_max = int(xs[0]) + x0, int(xs[-1]) + 1 + x0
        y_min, y_max = int(ys[0]) + y0, int(ys[-1]) + 1 + y0
        cx = float(int(np.dot(xs, per_x[xs])) + x0 * area) / area
        cy = float(int(np.dot(ys, per_y[ys])) + y0 * area) / area
        ijk = _display_point(plane, index, cx, cy, geometry.shape[2])
        k_level = min(max(round(float(ijk[2])), 0), geometry.shape[2] - 1)
        if plane == "sagittal":
            i_lo, i_hi = float(index), float(index + 1)
        else:
            i_lo, i_hi = float(x_min), float(x_max)
        side = laterality(i_lo, i_hi, float(ijk[0]), float(midline[k_level]), si)
        out.append(
            {
                "label": label,
                "x_min": x_min,
                "y_min": y_min,
                "x_max": x_max,
                "y_max": y_max,
                "area_px": area,
                "area_mm2": round(area * dx * dy, 4),
                "components": count_components(m),
                "centroid_x": round(cx, 4),
                "centroid_y": round(cy, 4),
                "centroid_lps": [round(float(v), 4) for v in geometry.index_to_lps(ijk)],
                "laterality": side,
            }
        )
    return out


def plane_boxes(
    masks: Mapping[str, Mask | np.ndarray],
    plane: str,
    indices,
    geometry: Geometry,
    midline: np.ndarray,
) -> dict[int, list[dict]]:
    """:func:`slice_boxes` of every slice of ``indices`` of ``plane``, keyed by index: the
    very same boxes (``tests/test_plane_boxes.py``), from one gather, two axis sums and one
    component count (:func:`slice_components`) per structure over all its chosen slices,
    then the centroids, sides and positions of all the plane's boxes at once, instead of a
    crop, two sums, their scans and a count per slice (at the 1.5 mm release geometry about
    570 boxes a case over 72 slices)."""
    dx, dy = display_spacing(geometry.spacing, plane)
    nk = geometry.shape[2]
    axis = PLANE_AXIS[plane]
    wanted = np.asarray(sorted({int(i) for i in indices}), dtype=np.int64)
    out: dict[int, list[dict]] = {int(i): [] for i in wanted.tolist()}
    others = [a for a in range(3) if a != axis]
    order = (axis, *others)
    present, parts, starts = [], [], []  # the structures with slices here, their columns
    for label in sorted(masks):
        mask = as_mask(masks[label])
        if not mask.any():
            continue
        o, n = mask.offset[axis], mask.crop.shape[axis]
        sel = wanted[(wanted >= o) & (wanted < o + n)]
        if not sel.size:
            continue
        # [slice, x, y] in crop axes: x is the first of the other two axes, y the second
        # (display rows run from superior down on coronal and sagittal slices: reversed)
        stack = np.ascontiguousarray(np.take(mask.crop, sel - o, axis=axis).transpose(order))
        # pixel counts per column and per row as float32 matrix-vector products (exact below
        # 2**24): 0.7 ms a case against numpy's integer axis sums' 2.2 ms (measured)
        ones = stack.astype(np.float32)
        per_x = (ones @ np.ones(ones.shape[2], dtype=np.float32)).astype(np.int64)  # [slice, x]
        per_y = (np.ones(ones.shape[1], dtype=np.float32) @ ones).astype(np.int64)  # [slice, y]
        x0 = mask.offset[others[0]]
        if plane == "axial":
            y0 = mask.offset[others[1]]
        else:
            per_y = per_y[:, ::-1]
            y0 = mask.shape[2] - (mask.offset[2] + mask.crop.shape[2])
        has_x, has_y = per_x > 0, per_y > 0
        # a slice's components: transposed and flipped, the same count
        parts.append((
            sel, per_x.sum(axis=1),
            per_x @ np.arange(per_x.shape[1], dtype=np.int64),  # integers: exact
            per_y @ np.arange(per_y.shape[1], dtype=np.int64),
            has_x.argmax(axis=1) + x0, per_x.shape[1] - has_x[:, ::-1].argmax(axis=1) + x0,
            has_y.argmax(axis=1) + y0, per_y.shape[1] - has_y[:, ::-1].argmax(axis=1) + y0,
            slice_components(stack),
        ))
        present.append(label)
        starts.append((sel.size, x0, y0))
    if not parts:
        return out
    keep = np.concatenate([p[1] for p in parts]) > 0  # (a plane of the crop may be empty)
    index, a, sx, sy, x_min, x_max, y_min, y_max, components = (
        np.concatenate(column)[keep] for column in zip(*parts))
    counts, x0, y0 = np.array(starts, dtype=np.int64).T
    x0, y0, which = (np.repeat(v, counts)[keep] for v in (x0, y0, np.arange(len(present))))
    # the per-slice reference's float64 operations, element by element
    cx = (sx + x0 * a) / a
    cy = (sy + y0 * a) / a
    ijk = display_to_index(plane, index, cx, cy, geometry.shape)  # [n, 3]
    k_level = np.clip(np.rint(ijk[:, 2]), 0, nk - 1).astype(np.int64)
    if plane == "sagittal":
        i_lo = index.astype(np.float64)
        i_hi = i_lo + 1.0
    else:
        i_lo, i_hi = x_min.astype(np.float64), x_max.astype(np.float64)
    sides = lateralities(i_lo, i_hi, ijk[:, 0], np.asarray(midline, dtype=np.float64)[k_level],
                         geometry.spacing[0])
    n = a.size  # the areas in mm2, centroids and positions rounded at once: one array
    floats = rounded(np.concatenate([a * dx * dy, cx, cy, _index_points_to_lps(geometry, ijk).T.ravel()]))
    for (at, area, xa, ya, xb, yb, mm2, count, px, py, lx, ly, lz, side, w) in zip(
            index.tolist(), a.tolist(), x_min.tolist(), y_min.tolist(), x_max.tolist(),
            y_max.tolist(), floats[:n], components.tolist(), floats[n:2 * n],
            floats[2 * n:3 * n], floats[3 * n:4 * n], floats[4 * n:5 * n], floats[5 * n:], sides,
            which.tolist()):
        out[at].append({
            "label": present[w],
            "x_min": xa,
            "y_min": ya,
            "x_max": xb,
            "y_max": yb,
            "area_px": area,
            "area_mm2": mm2,
            "components": count,
            "centroid_x": px,
            "centroid_y": py,
            "centroid_lps": [lx, ly, lz],
            "laterality": side,
        })
    return out


def _display_point(plane: str, index: int, x: float, y: float, nk: int) -> np.ndarray:
    """:func:`~pipeline.core.slices.display_to_index` of one point (the per-slice reference,
    :func:`slice_boxes`), without its array broadcasting: the same float64 values."""
    if plane == "axial":
        return np.array([x, y, float(index)])
    if plane == "coronal":
        return np.array([x, float(index), nk - 1 - y])
    if plane == "sagittal":
        return np.array([float(index), x, nk - 1 - y])
    return display_to_index(plane, index, x, y, (0, 0, nk))  # raises, naming the planes


def _centroid(mask: Mask) -> tuple[np.ndarray, int]:
    """``(centroid, voxels)`` of a non-empty mask: the mean grid index of its voxels, from
    the voxel counts per plane of each axis (integer sums, exact in float64: the very mean
    of the voxels' indices, without listing them)."""
    per_axis = [mask.axis_counts(a) for a in range(3)]  # (counted once for slice selection too)
    voxels = int(per_axis[0].sum())
    sums = [int(np.dot(np.arange(n), counts)) + o * voxels
            for counts, n, o in zip(per_axis, mask.crop.shape, mask.offset)]
    return np.array([float(t) / voxels for t in sums]), voxels


def structure_stats(
    label: str, mask: Mask | np.ndarray, geometry: Geometry, midline: np.ndarray
) -> dict | None:
    """Volume-level statistics of one structure; ``None`` for an empty mask.

    ``box3d`` (canonical voxels, exclusive maxima), ``voxels``, ``volume_ml``,
    ``centroid_lps`` (mm), ``components`` (26-connected), ``laterality``.
    """
    mask = as_mask(mask)
    box = mask.box
    if box is None:
        return None
    centroid, voxels = _centroid(mask)
    k_level = min(max(round(float(centroid[2])), 0), geometry.shape[2] - 1)
    return {
        "label": label,
        "box3d": [int(v) for v in box],
        "voxels": voxels,
        "volume_ml": round(voxels * geometry.voxel_volume_mm3 / 1000.0, 6),
        "centroid_lps": [round(v, 4) for v in geometry.index_to_lps(centroid).tolist()],
        "components": count_components(mask.crop),
        "laterality": laterality(
            float(box[0]), float(box[3]), float(centroid[0]), float(midline[k_level]),
            geometry.spacing[0],
        ),
    }
