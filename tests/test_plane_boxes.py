"""Boxes found once for all of a plane's chosen slices: ``plane_boxes`` equals the
per-slice reference ``slice_boxes`` exactly."""

import numpy as np
import pytest

from pipeline.core.boxes import plane_boxes, slice_boxes
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


@pytest.mark.parametrize("plane", PLANES)
def test_plane_boxes_equal_slice_boxes(plane):
    rng = np.random.default_rng(7)
    geometry = Geometry(SHAPE, (0.8, 1.1, 2.5), (-12.5, 30.25, 7.0))
    midline = rng.uniform(8, 14, size=SHAPE[2])
    for _ in range(3):
        masks = _masks(rng)
        n = SHAPE[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]
        indices = sorted({int(i) for i in rng.integers(0, n, size=9)} | {0, n - 1, 6})
        got = plane_boxes(masks, plane, indices, geometry, midline)
        assert list(got) == indices
        for index in indices:
            assert got[index] == slice_boxes(masks, plane, index, geometry, midline), (plane, index)

