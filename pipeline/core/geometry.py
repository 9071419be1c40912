"""Volume geometry and canonical orientation.

Conventions (see ``docs/conventions.md``):

* Physical space is DICOM LPS, millimetres.
* Arrays are indexed ``[i, j, k]`` (never ITK's ``[k, j, i]``).
* ``Geometry.direction`` is the 3x3 matrix, row-major, whose column ``c`` is
  the LPS unit vector of array axis ``c``; voxel ``(i, j, k)`` sits at
  ``origin + D @ (i*si, j*sj, k*sk)``.
* The *canonical* orientation has ``D = I``: ``i`` toward the patient's left,
  ``j`` toward posterior, ``k`` toward superior.  :func:`canonicalise` brings
  any axis-aligned volume there by a transpose and flips only (no
  interpolation), so the same volume stored as DICOM, as NIfTI in RAS or as
  NIfTI in any other axis order gives the same array.
* Canonical grids are quantised (spacing to float32 — what NIfTI's pixdim
  holds —, origin to 1e-4 mm): a NIfTI header stores float32 and a DICOM
  header decimal strings, and the same grid must give the same numbers
  downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.errors import CaseError

#: Largest off-axis direction cosine accepted as axis-aligned.
AXIS_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Sampling grid of a 3D array indexed ``[i, j, k]``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"Geometry.shape must be 3 positive ints, got {self.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"Geometry.spacing must be 3 finite values > 0, got {self.spacing}")
        if len(self.origin) != 3 or not all(np.isfinite(o) for o in self.origin):
            raise ValueError(f"Geometry.origin must be 3 finite values, got {self.origin}")
        if len(self.direction) != 9 or not all(np.isfinite(d) for d in self.direction):
            raise ValueError(f"Geometry.direction must be 9 finite values, got {self.direction}")

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_lps(self, index) -> np.ndarray:
        """LPS position (mm) of (possibly fractional) voxel indices ``[..., 3]``."""
        idx = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.matrix.T

    def is_canonical(self) -> bool:
        return bool(np.allclose(self.matrix, np.eye(3), atol=AXIS_TOLERANCE))


def axis_permutation(direction, tol: float = AXIS_TOLERANCE) -> tuple[list[int], list[bool]]:
    """Signed permutation taking a direction matrix to the identity.

    Returns ``(source_axis, flipped)``: canonical axis ``a`` is source axis
    ``source_axis[a]``, reversed when ``flipped[a]``.

    Raises
    ------
    CaseError
        ``geometry.non_orthogonal`` when the columns are not orthonormal,
        ``geometry.oblique`` when an axis is more than ``tol`` off the nearest
        patient axis (found matrix in the message).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        rounded = np.array2string(d, precision=4, separator=", ").replace("\n", "")
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"direction: columns are not orthonormal: found {rounded}, expected an "
            "orthonormal matrix",
        )
    source_axis = [-1, -1, -1]
    flipped = [False, False, False]
    for c in range(3):
        a = int(np.argmax(np.abs(d[:, c])))
        off = np.delete(np.abs(d[:, c]), a)
        if off.max() > tol or source_axis[a] != -1:
            rounded = np.array2string(d, precision=4, separator=", ").replace("\n", "")
            raise CaseError(
                "read", "geometry.oblique",
                f"direction: axis {c} is oblique: found {rounded}, expected a signed "
                f"permutation within {tol:g}",
            )
        source_axis[a] = c
        flipped[a] = bool(d[a, c] < 0)
    return source_axis, flipped


def canonical_grid(geometry: Geometry) -> tuple[list[int], list[bool], Geometry]:
    """How ``geometry`` maps to the canonical orientation, without touching a voxel.

    Returns ``(source_axis, flipped, canonical geometry)`` (see :func:`axis_permutation`);
    :func:`canonical_view` applies the first two to an array, :func:`canonical_offset`
    to a box.  Remembered per grid: a TotalSegmentator case's 117 masks share one.
    """
    try:
        hash(geometry)
        remembered = _canonical_grid
    except TypeError:  # a grid built from lists is worked out afresh
        remembered = _canonical_grid.__wrapped__
    source_axis, flipped, canon = remembered(geometry)
    return list(source_axis), list(flipped), canon


@lru_cache(maxsize=32)
def _canonical_grid(geometry: Geometry) -> tuple[tuple[int, ...], tuple[bool, ...], Geometry]:
    source_axis, flipped = axis_permutation(geometry.direction)
    # The new voxel (0, 0, 0) is the source voxel at the far end of each flipped axis.
    first = [0, 0, 0]
    for a in range(3):
        if flipped[a]:
            first[source_axis[a]] = geometry.shape[source_axis[a]] - 1
    origin = geometry.index_to_lps(first)
    canon = Geometry(
        shape=tuple(int(geometry.shape[source_axis[a]]) for a in range(3)),
        spacing=tuple(float(np.float32(geometry.spacing[source_axis[a]])) for a in range(3)),
        origin=tuple(round(float(x), 4) + 0.0 for x in origin),
    )
    return tuple(source_axis), tuple(flipped), canon


def canonical_view(array: np.ndarray, source_axis, flipped) -> np.ndarray:
    """``array`` (``[i, j, k]`` in its source grid) reordered to the canonical orientation
    as a *view*: a transpose and reversed strides, no voxel copied."""
    out = np.transpose(array, source_axis)
    flips = tuple(a for a in range(3) if flipped[a])
    return np.flip(out, axis=flips) if flips else out


def canonical_offset(lo, hi, shape, source_axis, flipped) -> tuple[int, int, int]:
    """Canonical index of the first voxel of the source box ``[lo, hi)`` (source
    ``[i, j, k]`` of a grid of ``shape``): where its canonical view starts."""
    out = []
    for a in range(3):
        s = source_axis[a]
        out.append(int(shape[s] - hi[s]) if flipped[a] else int(lo[s]))
    return tuple(out)


def canonicalise(
    array: np.ndarray, geometry: Geometry, *, dtype=None
) -> tuple[np.ndarray, Geometry]:
    """Reorder ``array`` (``[i, j, k]`` in ``geometry``) to the canonical orientation.

    Only transposes and flips: voxel values are never interpolated.  The result is
    C-contiguous, made in one pass (converted to ``dtype`` on the way when given; no copy
    when ``array`` already is canonical, contiguous and of that type);
    :func:`canonical_view` gives the same voxels without copying them.
    """
    if array.shape != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} != geometry shape {geometry.shape}")
    source_axis, flipped, canon = canonical_grid(geometry)
    view = canonical_view(array, source_axis, flipped)
    return np.ascontiguousarray(view, dtype=dtype), canon


def geometry_mismatches(
    found: Geometry, expected: Geometry, *, spacing_rtol: float = 1e-3, origin_frac: float = 0.1
) -> list[str]:
    """Fields in which two grids differ, as ``field: found X != expected Y`` strings.

    Origins may differ by ``origin_frac`` of a voxel (rounding in headers).
    """
    if found == expected:  # the same header numbers: nothing to compare
        return []
    out = []
    if tuple(found.shape) != tuple(expected.shape):
        out.append(f"shape {tuple(found.shape)} != image shape {tuple(expected.shape)}")
    if not np.allclose(found.spacing, expected.spacing, rtol=spacing_rtol, atol=1e-5):
        out.append(
            f"spacing {_fmt(found.spacing)} != image spacing {_fmt(expected.spacing)}"
        )
    tol = origin_frac * min(expected.spacing)
    if np.max(np.abs(np.subtract(found.origin, expected.origin))) > tol:
        out.append(f"origin {_fmt(found.origin)} != image origin {_fmt(expected.origin)}")
    if not np.allclose(found.matrix, expected.matrix, atol=AXIS_TOLERANCE):
        out.append(f"direction {_fmt(found.direction)} != image direction {_fmt(expected.direction)}")
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


# ------------------------------------------------------------ float drift in direction cosines

#: Largest |cos| between two grid axes still read as float drift (larger: a sheared grid).
DRIFT_MAX_COSINE = 1e-3
#: Largest distance, in voxels of the smallest spacing, that orthonormalising a drifted
#: direction may move any voxel centre of the volume.
DRIFT_MAX_SHIFT_VOXELS = 0.1


def orthonormalise(geometry: Geometry, field: str = "direction",
                   shown: str | None = None) -> tuple[Geometry, float, float]:
    """``geometry`` on the nearest orthonormal axes: ``(grid, cosine, shift)``.

    Headers store direction cosines in float32 or decimal strings, and writers
    that compose rotations drift a few 1e-4 off orthonormal (ITK refuses such
    NIfTI files).  The nearest rotation to the axes (polar decomposition, same
    handedness) replaces them; origin, spacing and shape are kept.  ``cosine``
    is the largest |cos| between two axes; ``shift`` the largest distance, over
    the volume's corners (the distance is linear in the index, so the corners
    bound it), between a voxel centre placed by the stored and by the new axes,
    in voxels of the smallest spacing.

    Raises
    ------
    CaseError
        ``geometry.non_orthogonal`` when ``cosine`` exceeds
        :data:`DRIFT_MAX_COSINE` (a sheared grid) or ``shift`` exceeds
        :data:`DRIFT_MAX_SHIFT_VOXELS`; ``field`` and ``shown`` (default: the
        matrix) name what was found.
    """
    d = geometry.matrix
    norms = np.linalg.norm(d, axis=0)
    shown = shown or np.array2string(d, precision=4, separator=", ").replace("\n", "")
    if np.any(norms == 0):
        raise CaseError("read", "geometry.non_orthogonal",
                        f"{field}: found {shown}, expected three non-zero axes")
    unit = d / norms
    cosine = float(np.max(np.abs(unit.T @ unit - np.eye(3))))
    if cosine > DRIFT_MAX_COSINE:
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"{field}: axes are not orthogonal: found {shown} (axes {cosine:.1e} off "
            f"orthogonal), expected orthogonal axes within {DRIFT_MAX_COSINE:g} (a sheared grid "
            "cannot be reoriented without resampling)",
        )
    u, _, vt = np.linalg.svd(unit)
    rotation = u @ vt
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    last = np.asarray(geometry.shape, dtype=np.float64) - 1
    corners = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1])
                        for k in (0, last[2])]) * spacing
    shift = float(np.max(np.linalg.norm(corners @ (rotation - unit).T, axis=1)) / spacing.min())
    if shift > DRIFT_MAX_SHIFT_VOXELS:
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"{field}: found {shown}, axes {cosine:.1e} off orthogonal; made orthonormal they "
            f"would move voxel centres by up to {shift:.3f} voxel across the "
            f"{' x '.join(map(str, geometry.shape))} grid, expected at most "
            f"{DRIFT_MAX_SHIFT_VOXELS:g} voxel (float drift; a sheared grid cannot be "
            "reoriented without resampling)",
        )
    fixed = Geometry(geometry.shape, geometry.spacing, geometry.origin,
                     tuple(float(v) + 0.0 for v in rotation.ravel()))
    return fixed, cosine, shift


def is_orthonormal(direction, atol: float = 1e-4) -> bool:
    """Whether ``direction``'s columns are orthonormal within ``atol`` (what
    :func:`axis_permutation` requires)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return bool(np.allclose(d.T @ d, np.eye(3), atol=atol))
