"""Connected-component counts, by connected-components-3d (``cc3d``): of a whole 2D or 3D
mask (:func:`count_components`) and of each slice of a stack (:func:`slice_components`, one
cc3d call for all of them).

Both work around what cc3d 4.1.1 gets wrong (measured): its 26-connected union-find holds a
quarter of the voxels plus two, which a small or thin volume with an odd side can outgrow
(it raises "maximum length exception"), and its 2D 8-connected labelling writes wrong label
images (right counts) for images of odd width.
"""

from __future__ import annotations

import cc3d
import numpy as np


def count_components(mask: np.ndarray, *, fully_connected: bool = True) -> int:
    """Number of connected components (8-/26-connectivity by default; 4-/6- without
    ``fully_connected``), by connected-components-3d (``cc3d``): at the 1.5 mm release
    geometry about 570 slice crops and 22 whole structures a case, 0.04 s in all against
    SimpleITK's filter (3D) and scipy's ``ndimage.label`` (2D) 0.05 s, at 0.8 mm 0.06
    against 0.13 s (measured; the same counts, ``tests/test_nifti_plain.py``; extraction
    now counts the slices with :func:`slice_components`).

    cc3d 4.1.1 sizes its 26-connected union-find to a quarter of the voxels plus two, and a
    small or thin volume with an odd side can start more labels than that (a voxel starts
    one when none of its scanned neighbours is set: at most one voxel in each 2x2x2 block,
    the halved sides rounded up multiplied): cc3d then raises ("maximum length exception"),
    as on a 3x3x3 crop holding its eight corners.  Such a volume is counted with a zero
    plane after each odd side (even sides: at most an eighth of the voxels start a label)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"count_components: expected a 2D or 3D mask, got shape {mask.shape}")
    if mask.ndim == 2:  # (an empty mask: cc3d counts 0)
        connectivity = 8 if fully_connected else 4
    else:
        connectivity = 26 if fully_connected else 6
        a, b, c = mask.shape
        if fully_connected and -(-a // 2) * -(-b // 2) * -(-c // 2) > (a * b * c >> 2) + 1:
            mask = np.pad(mask, [(0, n & 1) for n in mask.shape])
    return int(cc3d.connected_components(mask, connectivity=connectivity, return_N=True)[1])


def slice_components(stack: np.ndarray) -> np.ndarray:
    """:func:`count_components` (8-connected) of every slice ``stack[s]`` of a ``[slice, row,
    column]`` boolean stack, int64: from one cc3d call, not one a slice.

    The slices are laid one under the other in a single plane, a row of zeros after each: no
    component then reaches from one slice into the next, and 26-connectivity within one plane
    is 8-connectivity.  cc3d numbers components in the order of their first voxel in memory
    (its relabelling pass renumbers the provisional labels in creation order, and a
    component's first label is created at its first voxel), so each slice's labels follow
    the previous slices' and a slice's count is its largest label less the largest before
    it.  A column of zeros widens an odd width: cc3d 4.1.1 labels planes of odd width wrongly
    (2D, 8-connected: wrong label images, 315 of 2,020 noise images, though right counts;
    26-connected, thin ones: a union-find overflow error), none of even width (measured); the
    plane goes to cc3d as a one-voxel-deep volume, 26-connected (its union-find bounds are
    checked).  At the 1.5 mm release geometry 66 calls a case for 566 slices, 3.4 ms against
    6.0 ms one a slice (measured); the very counts (``tests/test_plane_boxes.py``)."""
    n, h, w = stack.shape
    if not stack.size:
        return np.zeros(n, dtype=np.int64)
    spaced = np.zeros((n, h + 1, w + (w & 1)), dtype=bool)
    spaced[:, :h, :w] = stack
    labels = cc3d.connected_components(spaced.reshape(1, n * (h + 1), -1), connectivity=26)
    last = labels.reshape(n, -1).max(axis=1).astype(np.int64)
    np.maximum.accumulate(last, out=last)
    last[1:] -= last[:-1].copy()
    return last
