"""Freed memory kept for the next array: glibc's malloc thresholds set to its adaptive maxima.

glibc's ``malloc`` serves a block of 128 KB or more with its own ``mmap`` and unmaps it
when freed, and gives back the free top of its heaps above 128 KB (``M_MMAP_THRESHOLD``,
``M_TRIM_THRESHOLD``).  It raises both as it sees large blocks freed — up to 32 MB and
64 MB — but only one block size at a time, so work that frees a burst of arrays at once
(a slice's window indices, bands and PNGs; a case's masks) keeps handing its memory back
and faulting it in again, each page zeroed by the kernel, and on a VM also backed again
by its host.  Measured on the 1.5 mm slices stage (16 TotalSegmentator cases, one a
unit): 9-16K page faults a unit in the launcher and in warm workers, 0.25-0.28 s of CPU a
unit and 0.31-0.49 s for a worker's first; with :func:`keep_freed_memory` 0.7-5K faults
and 0.22-0.25 s, first units 0.27-0.28 s.  Ten 1 MB arrays made and freed ten times:
25,280 page faults, none with it (``tests/test_heap.py``).

:func:`keep_freed_memory` sets the two thresholds where glibc's own adjustment stops
(:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`): blocks under 32 MB come from the heap,
and up to 64 MB of freed heap is kept per arena for the next allocation.  A process's
peak RSS can grow by what it keeps (``make bench`` reports each build's).  The setting
is process state: every process that runs a unit sets it as the unit starts
(:func:`pipeline.engine.execute`'s unit wrapper) — the launcher when units run in it,
warm workers, Beam's worker processes on any runner.  Anything but glibc (musl, macOS):
left alone.
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit: the most its adjustment raises the
#: mmap threshold to; it then sets the trim threshold to twice that.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

_set = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (module docstring) once per process; ``True``
    when they are set (now or before), ``False`` where the C library is not glibc."""
    global _set
    if _set:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 — glibc only: musl's mallopt ignores these
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _set = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _set
