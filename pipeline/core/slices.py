"""Slice extraction: display orientation, windows, normalisation, selection.

All functions take canonical volumes (``[i, j, k]``, i→L, j→P, k→S) and
return 2D arrays in the radiological display convention
(``docs/conventions.md``):

========= ======= =============================== ==============================
plane     normal  rows (top → bottom)             columns (left → right)
========= ======= =============================== ==============================
axial     k       anterior → posterior            patient right → patient left
coronal   j       superior → inferior             patient right → patient left
sagittal  i       superior → inferior             anterior → posterior
========= ======= =============================== ==============================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.masks import Mask

PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}

#: CT window presets (Hounsfield units): name -> (center, width).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


@dataclass(frozen=True)
class Window:
    """A display window: intensities ``[center - width/2, center + width/2]`` → 0..255."""

    name: str
    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"Window {self.name!r}: width must be > 0, got {self.width}")

    def as_dict(self) -> dict:
        return {"name": self.name, "center": float(self.center), "width": float(self.width)}


def ct_window(name: str) -> Window:
    try:
        center, width = CT_WINDOWS[name]
    except KeyError as err:
        raise ValueError(f"unknown CT window {name!r}; known: {sorted(CT_WINDOWS)}") from err
    return Window(name, center, width)


def mr_window(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> Window:
    """Percentile window of an MR volume over its non-zero voxels.

    The name records the percentiles (``mr_p0.5-99.5``); center and width the
    intensities they gave, so the mapping is reproducible from the row alone.
    """
    values = volume[volume > 0]
    if values.size == 0:
        values = volume.ravel()
    lo, hi = np.percentile(values, [low, high])
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1.0
    return Window(f"mr_p{low:g}-{high:g}", (lo + hi) / 2.0, hi - lo)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Linear window to ``uint8``: ``round(255 * (v - lower) / width)``, clipped."""
    lower = window.center - window.width / 2.0
    scaled = (np.asarray(values, dtype=np.float64) - lower) * 255.0 / window.width
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def window_table(window: Window, dtype) -> np.ndarray | None:
    """:func:`apply_window` of every value of ``dtype``, an integer type of at most 16 bits
    (CT's int16: 65,536 entries), indexed by the value's bits read as unsigned — one lookup
    per pixel instead of five passes in float64, the same pixels (each entry is computed by
    :func:`apply_window` itself); ``None`` for any other type."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        return None
    values = np.arange(2 ** (8 * dtype.itemsize), dtype=np.uint16 if dtype.itemsize == 2 else np.uint8)
    return apply_window(values.view(dtype.newbyteorder("=")), window)


def apply_window_table(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """:func:`apply_window` of integer ``values`` through :func:`window_table`'s table."""
    return np.take(table, window_indices(values))


def window_indices(values: np.ndarray) -> np.ndarray:
    """The indices of integer ``values`` into :func:`window_table`'s tables (their bits read
    as unsigned) as ``np.intp``, the type ``np.take`` converts its indices to on every call:
    ``np.take(table, window_indices(values))`` is :func:`apply_window_table`, and a slice's
    indices converted once serve all its windows (3 CT windows at 1.5 mm: 8.5 instead of
    10.3 ms for the 72 slices of a TotalSegmentator case, measured)."""
    unsigned = np.dtype(f"=u{values.dtype.itemsize}")
    return values.astype(values.dtype.newbyteorder("="), copy=False).view(unsigned).astype(np.intp)


def display_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice ``index`` of ``plane`` in display orientation (a view when possible)."""
    if plane == "axial":
        return volume[:, :, index].T
    if plane == "coronal":
        return volume[:, index, :].T[::-1]
    if plane == "sagittal":
        return volume[index, :, :].T[::-1]
    raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")


#: Bytes of one gather of :func:`display_slices` (a plane's chosen slices taken in groups of
#: at most this size: 4 MB is the 24 sagittal slices of a 1.5 mm TotalSegmentator case).
GATHER_BYTES = 8 << 20
#: Slices that a cache line of the buffer's rows must serve, on average, for
#: :func:`display_slices` to gather them: the 24 sagittal slices of a 1.5 mm case lie in 5-6
#: lines of a row (gathered: 2.4 instead of 6.1 ms), those of a 0.8 mm case in 9-10 (one at
#: a time: 47 instead of 53 ms, with their window indices; measured).
GATHER_SHARING = 3


def display_slices(volume: np.ndarray, plane: str, indices) -> Iterator[np.ndarray]:
    """:func:`display_slice` of each of ``indices`` in turn: the same pixels, as views of the
    volume or as fresh arrays.

    A slice normal to the axis that is fastest in memory — a sagittal slice of a NIfTI's
    buffer, i fastest — holds one voxel per cache line, so a view of it is slow to read and
    each slice read alone reads the volume about once.  Those slices come as fresh arrays:
    gathered a group at a time (:data:`GATHER_BYTES`) by one ``np.take`` along that axis of
    the buffer in its own order (every negatively strided axis flipped back, indices
    ascending) when each cache line of a row holds enough of them (:data:`GATHER_SHARING`),
    so that a line is read once for all of them; else copied one at a time."""
    indices = [int(i) for i in indices]
    axis = PLANE_AXIS[plane]
    order = sorted(range(3), key=lambda a: -abs(volume.strides[a]))  # slowest first
    if order[-1] != axis or volume.shape[axis] < 2:  # the slices' rows are read in order
        for index in indices:
            yield display_slice(volume, plane, index)
        return
    flips = tuple(slice(None, None, -1) if st < 0 else slice(None) for st in volume.strides)
    stored = np.transpose(volume[flips], order)  # the buffer's own order, if it is one
    n = volume.shape[axis]
    at = [n - 1 - i if volume.strides[axis] < 0 else i for i in indices]  # along the buffer
    per_group = max(1, GATHER_BYTES // (volume.itemsize * volume.size // n))
    back = tuple(order.index(a) for a in range(3))  # the buffer's axes back to the volume's
    for start in range(0, len(indices), per_group):
        group = sorted(set(at[start:start + per_group]))
        lines = len({i * volume.itemsize // 64 for i in group})  # of a row, that it reads
        if not stored.flags.c_contiguous or len(group) < GATHER_SHARING * lines:
            for index in indices[start:start + per_group]:
                yield np.ascontiguousarray(display_slice(volume, plane, index))
            continue
        taken = np.transpose(np.take(stored, group, axis=2), back)
        taken = taken[flips[:axis] + (slice(None),) + flips[axis + 1:]]  # the volume's orientation
        for position in at[start:start + per_group]:
            yield display_slice(taken, plane, group.index(position))


def display_crop(mask: Mask, plane: str, index: int) -> tuple[np.ndarray, int, int] | None:
    """The part of slice ``index`` of ``plane`` that a cropped mask covers, in display
    orientation: ``(pixels, x0, y0)`` with ``pixels[y, x]`` at display pixel ``(x0 + x,
    y0 + y)`` of :func:`display_slice` of the whole mask; ``None`` when the slice misses the
    mask's box.  Every pixel of the slice outside ``pixels`` is outside the mask."""
    axis = PLANE_AXIS[plane]
    if not mask.any():
        return None
    local = index - mask.offset[axis]
    if not 0 <= local < mask.crop.shape[axis]:
        return None
    (i0, j0, k0), nk = mask.offset, mask.crop.shape[2]
    bottom = mask.shape[2] - (k0 + nk)  # display rows run from superior (k = n - 1) down
    pixels = display_slice(mask.crop, plane, local)
    if plane == "axial":
        return pixels, i0, j0
    if plane == "coronal":
        return pixels, i0, bottom
    return pixels, j0, bottom


def display_spacing(spacing: Sequence[float], plane: str) -> tuple[float, float]:
    """``(dx, dy)``: mm per pixel along the displayed columns and rows."""
    si, sj, sk = (float(s) for s in spacing)
    return {"axial": (si, sj), "coronal": (si, sk), "sagittal": (sj, sk)}[plane]


def display_to_index(plane: str, index, x, y, shape: Sequence[int]) -> np.ndarray:
    """Canonical voxel indices ``(i, j, k)`` of display pixel coordinates ``(x, y)``.

    ``x``/``y`` may be fractional (e.g. centroids), ``index`` a slice index or an array of
    them (one a point: a plane's points at once); returns ``[..., 3]`` floats.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    nk = shape[2]
    c = np.broadcast_to(np.asarray(index, dtype=np.float64), x.shape)
    if plane == "axial":
        return np.stack([x, y, c], axis=-1)
    if plane == "coronal":
        return np.stack([x, c, nk - 1 - y], axis=-1)
    if plane == "sagittal":
        return np.stack([c, x, nk - 1 - y], axis=-1)
    raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")


def structure_areas(mask: np.ndarray | Mask, plane: str) -> np.ndarray:
    """Pixel count of ``mask`` (a whole boolean volume or a cropped :class:`Mask`) on every
    slice of ``plane`` (length = slices)."""
    axis = PLANE_AXIS[plane]
    other = tuple(a for a in range(3) if a != axis)
    if not isinstance(mask, Mask):
        return mask.sum(axis=other, dtype=np.int64)
    out = np.zeros(mask.shape[axis], dtype=np.int64)
    if mask.any():
        start = mask.offset[axis]
        out[start:start + mask.crop.shape[axis]] = mask.axis_counts(axis)
    return out


def select_slices(
    masks: Mapping[str, np.ndarray | Mask],
    plane: str,
    *,
    min_area_px: int = 1,
    max_per_structure: int = 3,
    max_per_volume: int | None = None,
    strategy: str = "spread",
    structures: Sequence[str] | None = None,
) -> list[int]:
    """Deterministic slice choice for one plane.

    For every structure (sorted by name; ``structures`` restricts them), the
    candidate slices are those where its area is at least ``min_area_px``;
    ``strategy`` ``spread`` takes ``max_per_structure`` of them at evenly
    spaced quantiles, ``largest`` the ones of largest area (ties: lower
    index).  The union is returned sorted; ``max_per_volume`` thins it to
    evenly spaced members.  No randomness: the same masks give the same slices.
    """
    if strategy not in ("spread", "largest"):
        raise ValueError(f"strategy must be 'spread' or 'largest', got {strategy!r}")
    chosen: set[int] = set()
    names = sorted(masks) if structures is None else sorted(set(structures) & set(masks))
    for name in names:
        areas = structure_areas(masks[name], plane)
        candidates = np.flatnonzero(areas >= max(1, min_area_px))
        if candidates.size == 0:
            continue
        if strategy == "largest":
            order = sorted(candidates.tolist(), key=lambda s: (-int(areas[s]), s))
            picked = order[:max_per_structure]
        else:
            picked = _spread(candidates.tolist(), max_per_structure)
        chosen.update(int(s) for s in picked)
    result = sorted(chosen)
    if max_per_volume is not None and len(result) > max_per_volume:
        result = _spread(result, max_per_volume)
    return result


def _spread(items: list[int], k: int) -> list[int]:
    """``k`` members of sorted ``items`` at quantiles ``(q + 0.5) / k``."""
    if k <= 0:
        return []
    if len(items) <= k:
        return list(items)
    n = len(items)
    return [items[min(n - 1, int((q + 0.5) * n / k))] for q in range(k)]


def resample(volume: np.ndarray, spacing, target, *, nearest: bool) -> np.ndarray:
    """Resample a canonical array to ``target`` spacing (``None`` entries keep the axis).

    Linear interpolation for images, nearest neighbour for masks (SimpleITK);
    the grid keeps its first voxel centre and extent.
    """
    # SimpleITK on first use: its import costs 0.05 s CPU, 0.1 s wall (measured), which a regenerate from stored pixels never needs
    import SimpleITK as sitk

    new_spacing = [float(t) if t else float(s) for s, t in zip(spacing, target)]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(volume.shape, spacing, new_spacing)]
    src = volume.astype(np.uint8) if nearest else volume.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(src, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    out = sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        (0.0, 0.0, 0.0), new_spacing, (1, 0, 0, 0, 1, 0, 0, 0, 1),
        0.0 if nearest else float(volume.min()), image.GetPixelID(),
    )
    arr = np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))
    return arr.astype(bool) if nearest else arr.astype(np.float32)
