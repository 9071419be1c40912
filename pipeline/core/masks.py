"""Binary masks held cropped to their extent.

A TotalSegmentator CT case has 117 mask files on a grid of about 256 x 256 x 330 voxels;
most are empty, and the others cover a small part of the grid.  Held whole, the boolean
volumes of one case take 2.5 GB at 1.5 mm and 18 GB at 0.8 mm; held cropped they take a
few tens of MB.  A :class:`Mask` is a small record:

* ``shape``: the canonical grid the mask lies on (``[i, j, k]``, see
  :mod:`pipeline.core.geometry`);
* ``offset``: the canonical index of the first voxel of ``crop``;
* ``crop``: a C-contiguous boolean array, *tight* (each of its six faces holds a voxel of the
  mask); an empty mask has a ``(0, 0, 0)`` crop at offset ``(0, 0, 0)``.

The mask's voxels are the ``True`` voxels of ``crop`` shifted by ``offset``; every other
voxel of the grid is outside it.  Methods that list or gather voxels visit them in the
order a C-order walk of the whole grid would, so counts, means and point lists come out
bit-identical to the same computation on a whole boolean volume.

:func:`nonzero_extent` finds the box of the non-zero voxels of any 3D array (a view of a
reader's buffer included) in about one pass over it, without a whole-volume temporary for
unsigned and boolean arrays; :func:`mask_from_source_box` makes the :class:`Mask` of such a
box of a reader's array, reoriented to the canonical grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pipeline.core.geometry import canonical_offset, canonical_view

_EMPTY = np.zeros((0, 0, 0), dtype=bool)
_EMPTY.setflags(write=False)


def _nonzero_along(array: np.ndarray, axis) -> np.ndarray:
    """An array non-zero exactly where ``(array != 0).any(axis)`` is true: for unsigned and
    boolean arrays their maximum along ``axis`` (no temporary), else that boolean."""
    if array.dtype.kind in "ub":
        return array.max(axis=axis)
    return (array != 0).any(axis=axis)


def _nonzero_rows(plane: np.ndarray) -> np.ndarray:
    """The rows (axis 0) of a 2D array that hold a non-zero element; a C-contiguous byte
    plane's rows are read 8 bytes a word (a 256 x 256 plane: 4 us, not 13)."""
    if (plane.dtype.kind in "ub" and plane.dtype.itemsize == 1 and plane.flags.c_contiguous
            and plane.shape[1] % 8 == 0):
        return np.flatnonzero(plane.view(np.uint64).max(axis=1))
    return np.flatnonzero(plane.any(axis=1))


def nonzero_extent(array: np.ndarray, plane: np.ndarray | None = None
                   ) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """``(lo, hi)``: the box ``[lo, hi)`` of the non-zero elements of a 3D array, or ``None``.

    One reduction over axis 0 (the outermost axis of a C-contiguous array, so contiguous
    rows are combined) gives the extents along axes 1 and 2, then one over that band gives
    axis 0's.  ``plane``: that first reduction when the caller has it already, any 2D array
    non-zero exactly where ``(array != 0).any(axis=0)`` is (an unsigned array's maxima along
    axis 0).
    """
    if array.ndim != 3 or array.size == 0:
        raise ValueError(f"nonzero_extent: expected a non-empty 3D array, got shape {array.shape}")
    if plane is None:
        plane = _nonzero_along(array, 0)
    elif plane.shape != array.shape[1:]:
        raise ValueError(f"nonzero_extent: plane {plane.shape} for an array {array.shape}")
    rows = _nonzero_rows(plane)
    if rows.size == 0:
        return None
    lo1, hi1 = int(rows[0]), int(rows[-1]) + 1
    band = plane[lo1:hi1]  # the columns of the rows holding the voxels only
    cols = np.flatnonzero(band.max(axis=0) if band.dtype.kind in "ub" else band.any(axis=0))
    lo2, hi2 = int(cols[0]), int(cols[-1]) + 1
    line = np.flatnonzero(_nonzero_along(array[:, lo1:hi1, lo2:hi2], (1, 2)))
    return (int(line[0]), lo1, lo2), (int(line[-1]) + 1, hi1, hi2)


@dataclass(frozen=True, eq=False)
class Mask:
    """A binary mask on a canonical grid, held cropped to its extent (module docstring)."""

    shape: tuple[int, int, int]
    offset: tuple[int, int, int] = (0, 0, 0)
    crop: np.ndarray = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        c = self.crop
        if c.dtype != bool or c.ndim != 3 or not c.flags.c_contiguous:
            raise ValueError(f"Mask.crop must be a C-contiguous 3D bool array, got {c.dtype} "
                             f"{c.shape}")
        if any(o < 0 or o + n > s for o, n, s in zip(self.offset, c.shape, self.shape)):
            raise ValueError(f"Mask: crop {c.shape} at {self.offset} outside the grid {self.shape}")
        if c.size and not all(c[(slice(None),) * a + (end,)].any()
                              for a in range(3) for end in (0, -1)):
            raise ValueError(f"Mask: crop {c.shape} at {self.offset} is not tight")
        if not c.size and (self.offset != (0, 0, 0) or c.shape != (0, 0, 0)):
            raise ValueError("Mask: an empty mask has a (0, 0, 0) crop at (0, 0, 0)")

    @classmethod
    def from_array(cls, array: np.ndarray, offset=(0, 0, 0), shape=None) -> Mask:
        """The non-zero voxels of a 3D ``array`` (any type or memory order, a view included)
        lying at ``offset`` of a grid of ``shape`` (default: the array's own)."""
        shape = tuple(int(n) for n in (shape if shape is not None else array.shape))
        found = nonzero_extent(array)
        if found is None:
            return cls(shape)
        lo, hi = found
        part = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        crop = np.not_equal(part, 0, order="C") if part.dtype != bool else np.array(part, order="C")
        return cls(shape, tuple(int(o + x) for o, x in zip(offset, lo)), crop)

    def any(self) -> bool:
        return self.crop.size > 0

    @property
    def box(self) -> tuple[int, ...] | None:
        """``(i_min, j_min, k_min, i_max, j_max, k_max)``, maxima exclusive; ``None`` if empty."""
        if not self.crop.size:
            return None
        return (*self.offset, *(o + n for o, n in zip(self.offset, self.crop.shape)))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The crop's place in the grid, to index a whole volume with."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.crop.shape))

    def voxels(self) -> int:
        return int(np.count_nonzero(self.crop))

    def axis_counts(self, axis: int) -> np.ndarray:
        """The mask's voxels on each plane of the crop normal to ``axis`` (int64, length
        ``crop.shape[axis]``): slice areas and centroids.  Counted for the three axes at once
        (two passes over the crop) on first use and kept (a crop is never written to)."""
        return self._axis_counts[axis]

    @cached_property
    def _axis_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.crop.size:
            return tuple(np.zeros(0, dtype=np.int64) for _ in range(3))
        ones = self.crop.view(np.uint8)  # bool bytes are 0 and 1
        per_jk = ones.sum(axis=0, dtype=np.int64)
        return (ones.reshape(ones.shape[0], -1).sum(axis=1, dtype=np.int64),
                per_jk.sum(axis=1), per_jk.sum(axis=0))

    def dense(self) -> np.ndarray:
        """The whole boolean volume (``shape``): for code that needs one, one mask at a time."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.slices] = self.crop
        return out

    def indices(self) -> np.ndarray:
        """``[n, 3]`` int64 grid indices of the mask's voxels, in C order of the grid."""
        return np.argwhere(self.crop) + np.asarray(self.offset, dtype=np.int64)

    def values(self, volume: np.ndarray) -> np.ndarray:
        """``volume[mask]``: the values under the mask, in C order of the grid."""
        return volume[self.slices][self.crop]

    def within(self, slices) -> np.ndarray:
        """The mask over the box ``slices`` of the grid (a boolean array of the box's shape)."""
        out = np.zeros(tuple(s.stop - s.start for s in slices), dtype=bool)
        if not self.crop.size:
            return out
        lo = [max(s.start, o) for s, o in zip(slices, self.offset)]
        hi = [min(s.stop, o + n) for s, o, n in zip(slices, self.offset, self.crop.shape)]
        if any(a >= b for a, b in zip(lo, hi)):
            return out
        out[tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, slices))] = \
            self.crop[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, self.offset))]
        return out

    def overlap(self, other: Mask) -> int:
        """Number of voxels in both masks."""
        if not (self.crop.size and other.crop.size):
            return 0
        return int(np.count_nonzero(self.crop & other.within(self.slices)))


def as_mask(mask) -> Mask:
    """``mask`` itself if it is a :class:`Mask`, else the :class:`Mask` of a 3D array's
    non-zero voxels (masks handed in whole by callers and older layouts)."""
    return mask if isinstance(mask, Mask) else Mask.from_array(np.asarray(mask))


def mask_from_source_box(array, lo, hi, source_axis, flipped, value=None, *, shape=None,
                         k0=0) -> Mask:
    """The :class:`Mask` of the non-zero voxels (or those equal to ``value``) of
    ``array[lo:hi]`` (source ``[i, j, k]``), reoriented (``source_axis``, ``flipped``: see
    :func:`~pipeline.core.geometry.canonical_grid`): only that box is copied.  ``array`` is
    the whole grid, or its source slices from ``k0`` on of a grid of canonical ``shape``."""
    box = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]  # compared in the buffer's order, then
    test = np.not_equal(box, 0) if value is None else np.equal(box, value)  # reordered: 15
    if source_axis[2] == 2:  # not 34 ms (liver, 0.8 mm)
        test = _k_fastest(test)
    crop = np.ascontiguousarray(canonical_view(test, source_axis, flipped))
    shape = tuple(int(n) for n in shape or [array.shape[source_axis[a]] for a in range(3)])
    whole = [shape[list(source_axis).index(s)] for s in range(3)]  # the source grid's shape
    lo, hi = (*lo[:2], lo[2] + k0), (*hi[:2], hi[2] + k0)
    return Mask(shape, canonical_offset(lo, hi, whole, source_axis, flipped), crop)


def _k_fastest(test: np.ndarray) -> np.ndarray:
    """``test`` (``[i, j, k]``) with the same values laid out k fastest in memory, when it is
    laid out i fastest (``F`` order: a NIfTI's and ITK's buffer order, kept by the comparison
    in :func:`mask_from_source_box`); else ``test`` itself.

    A crop's canonical ``[i, j, k]`` is C-contiguous (k fastest): copied from i-fastest
    memory in one go, its innermost loop reads one byte per ``i x j`` plane and finds those
    planes' cache lines evicted before it comes back for the next ``i`` (3.8 ms of a 1.5 mm
    case's 22 non-empty masks, 31 ms of a 0.8 mm case's, measured).  Here the ``[k, (j, i)]``
    rows are transposed as one 2D array, whose consecutive rows reuse the same ``k`` lines,
    then the ``i`` and ``j`` axes swapped as whole k-rows: 2.7 and 21 ms for the same crops.
    """
    if not test.flags.f_contiguous:
        return test
    ni, nj, nk = test.shape
    rows = np.ascontiguousarray(test.T.reshape(nk, nj * ni).T)  # [(j, i), k]
    return rows.reshape(nj, ni, nk).transpose(1, 0, 2)
