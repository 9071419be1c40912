"""Canonical orientation: any axis order and flips give the same array and grid."""

import itertools

import numpy as np
import pytest

from pipeline.core.geometry import Geometry, axis_permutation, canonicalise, geometry_mismatches
from pipeline.errors import CaseError


def reorient(canon: np.ndarray, geom: Geometry, perm, flips):
    """Store a canonical volume with source axis c = canonical axis perm[c], flipped per flips."""
    arr = np.transpose(canon, perm)
    for c, f in enumerate(flips):
        if f:
            arr = np.flip(arr, axis=c)
    d = np.zeros((3, 3))
    first = [0, 0, 0]
    for c in range(3):
        a = perm[c]
        d[a, c] = -1.0 if flips[c] else 1.0
        if flips[c]:
            first[a] = canon.shape[a] - 1
    origin = geom.index_to_lps(first)
    spacing = tuple(geom.spacing[perm[c]] for c in range(3))
    return arr, Geometry(arr.shape, spacing, tuple(origin), tuple(d.ravel()))


CANON = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
GEOM = Geometry((4, 5, 6), (0.7, 0.8, 2.5), (-10.0, 20.0, 30.0))
ORIENTATIONS = [
    (perm, flips)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product([False, True], repeat=3)
]


@pytest.mark.parametrize(
    "perm, flips", ORIENTATIONS,
    ids=[f"perm{''.join(map(str, p))}-flip{''.join('1' if f else '0' for f in fl)}"
         for p, fl in ORIENTATIONS],
)
def test_every_axis_aligned_orientation_canonicalises_to_the_same_volume(perm, flips):
    stored, geom = reorient(CANON, GEOM, perm, flips)
    out, cgeom = canonicalise(stored, geom)
    assert np.array_equal(out, CANON)
    assert cgeom.shape == GEOM.shape
    assert np.allclose(cgeom.spacing, GEOM.spacing)
    assert np.allclose(cgeom.origin, GEOM.origin)
    assert cgeom.is_canonical()


def test_voxel_positions_are_preserved():
    stored, geom = reorient(CANON, GEOM, (2, 0, 1), (True, False, True))
    out, cgeom = canonicalise(stored, geom)
    # The value at a physical point is the same before and after.
    for src in [(0, 0, 0), (5, 3, 1), (4, 2, 3)]:
        value = stored[src]
        (dst,) = np.argwhere(out == value)
        assert np.allclose(geom.index_to_lps(src), cgeom.index_to_lps(dst))


@pytest.mark.parametrize(
    "direction, reason",
    [
        ((1, 0, 0, 0, 1, 0, 0, 0.1, 0.995), "geometry.non_orthogonal"),
        ((1, 0, 0, 0, np.cos(0.2), np.sin(0.2), 0, -np.sin(0.2), np.cos(0.2)), "geometry.oblique"),
    ],
    ids=["skewed", "oblique-11-degrees"],
)
def test_non_axis_aligned_directions_are_rejected_with_the_matrix(direction, reason):
    with pytest.raises(CaseError) as err:
        axis_permutation(direction)
    assert err.value.reason == reason
    assert "direction" in err.value.message and "found" in err.value.message


def test_tiny_obliquity_is_snapped():
    eps = 5e-4
    d = np.array([[1, 0, 0], [0, np.cos(eps), -np.sin(eps)], [0, np.sin(eps), np.cos(eps)]])
    assert axis_permutation(d.ravel()) == ([0, 1, 2], [False, False, False])


def test_geometry_mismatches_name_each_field():
    other = Geometry((4, 5, 7), (0.7, 0.9, 2.5), (-10.0, 20.0, 35.0))
    problems = geometry_mismatches(other, GEOM)
    assert problems[0] == "shape (4, 5, 7) != image shape (4, 5, 6)"
    assert any(p.startswith("spacing") for p in problems)
    assert any(p.startswith("origin") for p in problems)
    assert geometry_mismatches(GEOM, GEOM) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (0, 1, 1)}, "shape"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"origin": (np.nan, 0.0, 0.0)}, "origin"),
    ],
    ids=["zero-size", "negative-spacing", "nan-origin"],
)
def test_geometry_checks_its_invariants(kwargs, message):
    base = dict(shape=(1, 1, 1), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=message):
        Geometry(**(base | kwargs))
