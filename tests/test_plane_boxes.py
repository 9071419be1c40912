"""Boxes found once for all of a plane's chosen slices: ``plane_boxes`` equals the
per-slice reference ``slice_boxes`` exactly, and its batched parts (component counts,
rounding, sides, positions) equal the per-value operations they replace, bit for bit."""

import math

import numpy as np
import pytest

from pipeline.core.boxes import (
    _index_points_to_lps,
    lateralities,
    laterality,
    plane_boxes,
    rounded,
    slice_boxes,
)
from pipeline.core.components import count_components, slice_components
from pipeline.core.geometry import Geometry
from pipeline.core.masks import Mask
from pipeline.core.slices import PLANES

SHAPE = (23, 19, 17)


def _masks(rng) -> dict[str, Mask]:
    """Blobs and speckles at random places, one with an empty plane inside its crop, one
    touching the grid's faces, one empty."""
    out = {}
    for n in range(5):
        a = np.zeros(SHAPE, dtype=bool)
        lo = rng.integers(0, 8, size=3)
        hi = lo + rng.integers(3, 11, size=3)
        a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = rng.random(tuple(hi - lo)) < 0.4 + 0.1 * n
        out[f"s{n}"] = Mask.from_array(a)
    gap = np.zeros(SHAPE, dtype=bool)
    gap[2:9, 3:7, 4] = gap[2:9, 3:7, 9] = gap[5, 1:18, 4:10] = True
    gap[:, :, 6] = False  # a plane of the crop without a voxel
    out["gap"] = Mask.from_array(gap)
    edge = np.zeros(SHAPE, dtype=bool)
    edge[0, :, 0] = edge[-1, -1, :] = edge[:, 0, -1] = True
    out["edge"] = Mask.from_array(edge)
    out["empty"] = Mask(SHAPE)
    return out


def _exact(value):
    """``value`` with every float spelt out bit for bit (``==`` takes -0.0 for 0.0)."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return (type(value).__name__, value)


def _rotation(rng) -> tuple[float, ...]:
    """A random proper rotation: every direction cosine a long binary fraction."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return tuple(float(v) for v in q.ravel())


@pytest.mark.parametrize("oblique", [False, True], ids=["canonical", "oblique"])
@pytest.mark.parametrize("plane", PLANES)
def test_plane_boxes_equal_slice_boxes(plane, oblique):
    rng = np.random.default_rng(7)
    direction = _rotation(rng) if oblique else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(SHAPE, (0.8, 1.1, 2.5), (-12.5, 30.25, 7.0), direction)
    midline = rng.uniform(8, 14, size=SHAPE[2])
    for _ in range(3):
        masks = _masks(rng)
        n = SHAPE[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]
        indices = sorted({int(i) for i in rng.integers(0, n, size=9)} | {0, n - 1, 6})
        got = plane_boxes(masks, plane, indices, geometry, midline)
        assert list(got) == indices
        for index in indices:
            want = slice_boxes(masks, plane, index, geometry, midline)
            assert _exact(got[index]) == _exact(want), (plane, index)


def _stacks(rng):
    """Random ``[slice, row, column]`` stacks: every size from one pixel up, odd and even
    widths, empty and full slices, noise of every density, and the patterns that make the
    most components (isolated pixels two apart) and the most provisional labels (combs)."""
    for t in range(600):
        n, h, w = (int(v) for v in rng.integers(1, 12 if t < 300 else 40, size=3))
        stack = rng.random((n, h, w)) < rng.uniform(0.02, 0.95)
        kind = t % 6
        if kind == 1:  # isolated pixels: ceil(h/2) * ceil(w/2) components a slice
            stack[:] = False
            stack[:, ::2, ::2] = True
        elif kind == 2:  # combs: teeth down from a bar, many labels merged late
            stack[:] = False
            stack[:, :, ::2] = True
            stack[:, -1, :] = True
        elif kind == 3:  # empty and full slices among noisy ones
            stack[rng.random(n) < 0.3] = False
            stack[rng.random(n) < 0.2] = True
        elif kind == 4:  # a transposed, reversed view, as plane_boxes never hands it
            stack = stack[:, ::-1].transpose(0, 2, 1)
        yield stack


def test_slice_components_equal_count_components():
    rng = np.random.default_rng(11)
    for stack in _stacks(rng):
        want = [count_components(s) for s in stack]
        got = slice_components(stack)
        assert got.dtype == np.int64
        assert got.tolist() == want, stack.shape


@pytest.mark.parametrize("shape", [(0, 4, 4), (3, 0, 4), (3, 4, 0), (1, 1, 1), (5, 1, 1),
                                   (4, 1, 7), (4, 7, 1), (2, 5, 3)])
def test_slice_components_edges(shape):
    """No slices, empty slices, single pixels, and thin odd-width slices full of isolated
    pixels (their plane, given cc3d unwidened, overflows its union-find and raises)."""
    stack = np.zeros(shape, dtype=bool)
    stack[:, ::2, ::2] = True
    assert slice_components(stack).tolist() == [count_components(s) for s in stack]


def test_rounded_is_pythons_round():
    rng = np.random.default_rng(5)
    values = [0.0, -0.0, 0.5, -0.5, 0.00005, -0.00005, 0.00004999, 1.23445, 2.5e-5, -2.5e-5,
              1e15, -1e15, 1e300, 1.7e308, 5e-324, math.inf, -math.inf, math.nan, 123.45675]
    values += [k / 1e4 + 5e-5 for k in range(-3000, 3000)]  # near ties, every one
    values += [k / 2 ** 14 for k in range(-3000, 3000)]  # exact binary ties and neighbours
    values += (rng.normal(size=20000) * 10.0 ** rng.integers(-6, 6, size=20000)).tolist()
    values += (rng.integers(0, 10 ** 6, size=5000) * 0.0125).tolist()  # areas x spacings
    array = np.array(values)
    got = rounded(array)
    assert len(got) == len(values)
    for v, g in zip(values, got):
        want = round(v, 4)
        assert type(g) is float
        assert g.hex() == want.hex() or (math.isnan(g) and math.isnan(want)), (v, g, want)
    finite = array[np.isfinite(array)]
    for digits in (0, 2, 7):
        assert [r.hex() for r in rounded(finite, digits)] == [round(v, digits).hex()
                                                              for v in finite.tolist()]
    with pytest.raises(ValueError, match="digits must be 0 to 22"):
        rounded(array, -1)


def test_lateralities_are_laterality():
    rng = np.random.default_rng(3)
    n = 4000
    i_min = rng.integers(0, 60, size=n).astype(np.float64)
    i_max = i_min + rng.integers(0, 40, size=n)  # zero widths too
    centroid = rng.uniform(i_min - 1, i_max + 1)
    midline = rng.uniform(20, 40, size=n)
    centroid[::7] = midline[::7]  # on the midline
    centroid[1::7] = midline[1::7] + 10.0 / 1.5  # at the margin exactly
    i_max[2::7] = 2 * midline[2::7] - i_min[2::7]  # symmetric about it
    got = lateralities(i_min, i_max, centroid, midline, 1.5)
    want = [laterality(*args, 1.5) for args in zip(i_min.tolist(), i_max.tolist(),
                                                    centroid.tolist(), midline.tolist())]
    assert got == want
    assert set(got) == {"left", "right", "midline"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_points_to_lps_is_index_to_lps_point_by_point(seed):
    rng = np.random.default_rng(seed)
    geometry = Geometry((200, 210, 300), tuple(rng.uniform(0.5, 3.0, size=3)),
                        tuple(rng.uniform(-300, 300, size=3)), _rotation(rng))
    points = rng.uniform(-1, 300, size=(3000, 3))
    got = _index_points_to_lps(geometry, points)
    for p, g in zip(points, got):
        assert [v.hex() for v in g.tolist()] == [v.hex() for v in
                                                 geometry.index_to_lps(p).tolist()]

