"""A CT's body edges along ``i`` on each axial level (:func:`ct_body_columns`), for
:func:`~pipeline.core.boxes.body_midline`: read at the edges of each row of the volume's
buffer first, where a body's outermost columns usually lie."""

from __future__ import annotations

import numpy as np


def ct_body_columns(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, last)``: per axial level ``k``, the first and last column ``i`` holding a
    voxel of :func:`~pipeline.core.boxes.body_mask` (above -500 HU, at any ``j``); ``-1`` at
    a level without one.

    The largest value along ``j`` of every ``(i, k)``, read in the buffer's own order (every
    axis whose stride is negative — a reoriented NIfTI's — flipped back first): numpy then
    reduces rows that lie end to end in memory.  At the 1.5 mm TotalSegmentator geometry
    1.9 ms against 13-29 ms for the same maximum over the reoriented view, or for a scan of
    32-column blocks from both edges inward (0.8 mm: 11 against 75-200 ms; measured).

    An integer volume whose rows ``i`` lie end to end (a NIfTI's buffer) is read only at its
    edges first (:func:`_edge_maxima`): a level whose outermost columns hold body on both
    sides has its first and last column there, and only the other levels are read whole
    (1.5 mm: 1.3 against 2.0 ms, a quarter of the cache lines; 0.8 mm: 8.5 against 11.7;
    measured)."""
    n_i, n_j, n_k = volume.shape
    as_stored = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in volume.strides)
    stored = volume[as_stored]
    size = stored.itemsize
    width = 64 // size  # the columns of a 64-byte cache line from each edge, then wider
    if (stored.dtype.kind not in "iu" or n_j < 2 or stored.strides[0] != size
            or stored.strides[1] != n_i * size or 8 * width > n_i):
        present = stored.max(axis=1) > -500
    else:  # False where not read: only a read level's edges decide it
        present = np.zeros((n_i, n_k), dtype=bool)
        step = _EDGE_LEVELS
        for k0 in range(0, n_k, step):
            k1 = min(k0 + step, n_k)
            missing = np.arange(k0, k1)
            if 8 * width <= n_i:  # edges of at most a quarter of each row
                left, right = _edge_maxima(stored, k0, k1, width)
                left, right = left > -500, right > -500
                present[:width, k0:k1] = left.T
                present[n_i - width:, k0:k1] = right.T
                found = left.any(axis=1) & right.any(axis=1)
                missing = missing[~found]
            if missing.size:  # read whole (a level at a time: a gather of them is slower);
                for k in missing:  # the next levels' edges read twice as wide
                    present[:, k] = stored[:, :, k].max(axis=1) > -500
                width *= 2
    present = present[as_stored[0], as_stored[2]]  # [i, k]
    hit = present.any(axis=0)
    first = np.where(hit, present.argmax(axis=0), -1)
    last = np.where(hit, n_i - 1 - present[::-1].argmax(axis=0), -1)
    return first, last


#: Levels :func:`ct_body_columns` reads the edges of at once (1.5 mm: 2 MB of runs).
_EDGE_LEVELS = 64


def _edge_maxima(stored: np.ndarray, k0: int, k1: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The largest values along ``j`` of the first and of the last ``width`` columns ``i`` of
    the levels ``k0:k1`` of a volume whose rows lie end to end (``[k, i]`` arrays each).

    A row's last columns and the next row's first are one run of memory: the runs are
    copied as single elements of their size (one copy of 10 ns a run; numpy's reductions
    cost about as much for every row they step through), then halved along ``j``."""
    n_i, n_j = stored.shape[:2]
    size, dtype = stored.itemsize, stored.dtype
    planes = stored[n_i - width:, :, k0:k1]
    runs = np.lib.stride_tricks.as_strided(
        planes, (k1 - k0, n_j - 1, 2 * width), (planes.strides[2], n_i * size, size),
        writeable=False,
    ).view(np.dtype((np.void, 2 * width * size)))[..., 0]
    both = runs.copy().view(dtype).reshape(k1 - k0, n_j - 1, 2 * width)
    n = n_j - 1
    while n > 1:  # [:, :n] halved in place: its rows h.. fold onto 0.. (an odd middle row stays)
        h = n // 2
        np.maximum(both[:, :h], both[:, n - h:n], out=both[:, :h])
        n -= h
    right = np.maximum(both[:, 0, :width], stored[n_i - width:, n_j - 1, k0:k1].T)
    left = np.maximum(both[:, 0, width:], stored[:width, 0, k0:k1].T)
    return left, right
