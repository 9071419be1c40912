"""Masks held cropped to their extent give exactly what whole boolean volumes give."""

import itertools

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.boxes import slice_boxes, structure_stats
from pipeline.core.geometry import Geometry, canonical_grid, canonical_offset, canonicalise
from pipeline.core.masks import Mask, as_mask, mask_from_source_box, nonzero_extent
from pipeline.core.slices import PLANES, select_slices, structure_areas
from pipeline.core.volume_facts import lesion_facts
from pipeline.inputs.readers import read_label_map, read_mask, read_volume

SHAPE = (13, 11, 9)
GEOM = Geometry(SHAPE, (0.8, 0.9, 2.0), (-10.0, 5.0, 30.0))


def blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros(SHAPE, dtype=bool)
    lo = rng.integers(0, 5, 3)
    m[tuple(slice(a, a + int(n)) for a, n in zip(lo, rng.integers(2, 6, 3)))] = True
    m &= rng.random(SHAPE) > 0.2  # holes and several components
    return m


def test_nonzero_extent_and_empty():
    a = np.zeros((4, 5, 6), np.uint8)
    assert nonzero_extent(a) is None
    a[1, 2:4, 5] = 255
    assert nonzero_extent(a) == ((1, 2, 5), (2, 4, 6))
    assert nonzero_extent(np.transpose(a, (2, 0, 1))[::-1]) == ((0, 1, 2), (1, 2, 4))
    empty = as_mask(np.zeros(SHAPE, bool))
    assert not empty.any() and empty.box is None and empty.voxels() == 0
    with pytest.raises(ValueError, match="tight"):
        Mask(SHAPE, (0, 0, 0), np.ones((2, 2, 2), bool) & (np.arange(2) > 0))


def test_nonzero_extent_takes_the_callers_first_reduction():
    # read_mask has the (j, i) plane of a mask's largest values already: the extent uses it
    rng = np.random.default_rng(2)
    for _ in range(20):
        a = (rng.random(tuple(int(n) for n in rng.integers(1, 9, 3))) < 0.05).astype(np.uint8)
        a *= np.uint8(rng.choice([1, 255]))
        assert nonzero_extent(a, a.max(axis=0) != 0) == nonzero_extent(a)
    with pytest.raises(ValueError, match="plane"):
        nonzero_extent(np.ones((2, 3, 4), np.uint8), np.ones((4, 3), bool))


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.uint16, np.int8, np.int16, np.float32])
def test_nonzero_extent_is_the_box_of_the_nonzero_elements(dtype):
    # byte planes with rows of a multiple of 8 are read a word at a time: every type and row
    # length gives the box np.nonzero gives
    rng = np.random.default_rng(3)
    for shape in [(5, 16, 24), (3, 8, 8), (4, 7, 9), (2, 1, 8), (6, 24, 1)]:
        for density in (0.0, 0.002, 0.05, 1.0):
            a = ((rng.random(shape) < density) * rng.integers(1, 3, shape)).astype(dtype)
            if dtype is not bool and np.issubdtype(dtype, np.signedinteger):
                a *= -1
            where = np.nonzero(a)
            expected = None if not a.any() else (
                tuple(int(w.min()) for w in where), tuple(int(w.max()) + 1 for w in where))
            assert nonzero_extent(a) == expected
            if a.dtype.kind in "ub":
                assert nonzero_extent(a, a.max(axis=0)) == expected


@pytest.mark.parametrize("seed", range(4))
def test_boxes_areas_and_stats_equal_those_of_the_whole_volume(seed):
    dense = {"a": blob(seed), "b": blob(seed + 10)}
    cropped = {n: Mask.from_array(m) for n, m in dense.items()}
    assert all(np.array_equal(cropped[n].dense(), dense[n]) for n in dense)
    midline = np.full(SHAPE[2], 6.0)
    for plane in PLANES:
        assert select_slices(dense, plane) == select_slices(cropped, plane)
        for n in dense:
            assert np.array_equal(structure_areas(dense[n], plane),
                                  structure_areas(cropped[n], plane))
        for index in range(SHAPE[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]):
            whole = slice_boxes({n: m for n, m in dense.items()}, plane, index, GEOM, midline)
            assert slice_boxes(cropped, plane, index, GEOM, midline) == whole
    for n in dense:
        assert structure_stats(n, cropped[n], GEOM, midline) == structure_stats(
            n, Mask.from_array(dense[n]), GEOM, midline)
        assert structure_stats(n, cropped[n], GEOM, midline)["voxels"] == int(dense[n].sum())


def test_lesion_facts_equal_those_of_the_whole_volume():
    organ, lesion = blob(1) | blob(2), blob(1) & blob(3)
    if not lesion.any():
        lesion = blob(1)
    image = np.random.default_rng(0).normal(40, 20, SHAPE).astype(np.float32)
    dense = {"organ": organ, "lesion": lesion}
    whole = lesion_facts("lesion", lesion, image, dense, GEOM, ["organ"])
    cropped = lesion_facts("lesion", Mask.from_array(lesion), image,
                           {n: Mask.from_array(m) for n, m in dense.items()}, GEOM, ["organ"])
    assert cropped == whole


def write(path, array, orientation):
    """Store a canonical (i→L, j→P, k→S) array as NIfTI in LAS or RAS, as the releases do."""
    stored = array[:, ::-1, :]
    if orientation == "RAS":
        stored = stored[::-1]
    affine = np.diag([-0.8 if orientation == "LAS" else 0.8, 0.9, 2.0, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(stored), affine)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


@pytest.mark.parametrize("orientation", ["LAS", "RAS"])
def test_masks_and_label_maps_read_cropped_on_the_image_grid(tmp_path, orientation):
    ct = (np.arange(np.prod(SHAPE)) % 200 - 100).reshape(SHAPE).astype(np.int16)
    write(tmp_path / "ct.nii.gz", ct, orientation)
    image = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    assert np.array_equal(image.array, ct)
    a, b = blob(5), blob(6) & ~blob(5)
    write(tmp_path / "a.nii.gz", a.astype(np.uint8), orientation)
    write(tmp_path / "e.nii.gz", np.zeros(SHAPE, np.uint8), orientation)
    write(tmp_path / "l.nii.gz", (a * 1 + b * 3).astype(np.uint8), orientation)
    mask, _ = read_mask(str(tmp_path / "a.nii.gz"), "a", image.geometry)
    assert isinstance(mask, Mask) and np.array_equal(mask.dense(), a)
    assert mask.crop.size < a.size
    empty, _ = read_mask(str(tmp_path / "e.nii.gz"), "e", image.geometry)
    assert not empty.any() and empty.shape == SHAPE
    split, _ = read_label_map(str(tmp_path / "l.nii.gz"), "l", image.geometry,
                              {1: "a", 2: "absent", 3: "b"})
    assert sorted(split) == ["a", "b"]
    assert np.array_equal(split["a"].dense(), a) and np.array_equal(split["b"].dense(), b)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3)))[:3])
def test_from_array_of_a_view_equals_the_copy(perm):
    m = blob(7)
    view = np.transpose(m.astype(np.uint8), perm)[::-1]
    assert np.array_equal(Mask.from_array(view).dense(), np.ascontiguousarray(view) != 0)


def test_axis_counts_are_the_planes_voxel_counts():
    """Mask.axis_counts (counted once for slice areas and centroids) is the count of the
    crop's voxels on each plane, for every axis; an empty mask has none."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        dense = rng.random(tuple(int(n) for n in rng.integers(1, 12, 3))) < rng.uniform(0.05, 0.9)
        mask = Mask.from_array(dense)
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            assert np.array_equal(mask.axis_counts(axis), mask.crop.sum(axis=other))
            assert mask.axis_counts(axis).dtype == np.int64
    assert all(Mask((3, 4, 5)).axis_counts(a).size == 0 for a in range(3))


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [(), (0,), (1,), (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("order", ["F", "C"])
def test_cropped_masks_equal_the_canonicalised_whole_volume(perm, flips, order):
    """mask_from_source_box: a box of the reader's array (i fastest in memory, as a NIfTI's or
    ITK's buffer, or not), compared and reordered to a tight C-contiguous canonical crop —
    the voxels of the canonicalised whole volume, for every signed axis permutation (k
    fastest by one 2D transpose when canonical k is the source's k)."""
    canon = blob(11).astype(np.uint8) * 255
    # the source grid this canonical volume was stored on: direction = signed permutation
    direction = np.zeros((3, 3))
    for a, s in enumerate(perm):  # canonical axis a is source axis s
        direction[a, s] = -1.0 if a in flips else 1.0
    shape = tuple(SHAPE[perm.index(s)] for s in range(3))
    geom = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(direction.ravel()))
    source = np.empty(shape, np.uint8, order=order)
    view = np.transpose(source, perm)
    view[...] = np.flip(canon, axis=flips) if flips else canon  # source voxels, canonical order
    assert np.array_equal(canonicalise(source, geom)[0], canon)
    found = nonzero_extent(source)
    source_axis, flipped, cgeom = canonical_grid(geom)
    mask = mask_from_source_box(source, *found, source_axis, flipped)
    assert mask.crop.flags.c_contiguous and mask.shape == SHAPE == cgeom.shape
    assert np.array_equal(mask.dense(), canon != 0)
    assert mask.offset == canonical_offset(*found, shape, source_axis, flipped)
    labels = mask_from_source_box(source, *found, source_axis, flipped, 255)
    assert np.array_equal(labels.dense(), canon == 255)
