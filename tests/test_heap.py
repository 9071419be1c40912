"""pipeline.core.heap: freed memory kept by glibc's malloc for the next arrays (measured by
page faults in a fresh interpreter, never by time)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from tests.probe import python_probe

# Ten 1 MB arrays made and freed, ten times over, after ten rounds to settle: the page
# faults of the last ten rounds.
_ROUNDS = (
    "import resource, numpy as np\n"
    "for i in range(20):\n"
    "    if i == 10:\n"
    "        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "    arrays = [np.ones(1 << 20, np.uint8) for _ in range(10)]\n"
    "    del arrays\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")
def test_arrays_freed_in_a_burst_are_not_faulted_in_again():
    """glibc by default hands the burst back and faults it in again (its threshold follows
    one block size at a time): thousands of faults a round; with keep_freed_memory, the
    memory stays in the heap: next to none."""
    default = int(python_probe(_ROUNDS))
    kept = python_probe("from pipeline.core.heap import keep_freed_memory\n"
                        "assert keep_freed_memory() and keep_freed_memory()\n" + _ROUNDS)
    assert default > 10 * 1000  # ~2,500 a round (10 MB of 4 KB pages) on glibc 2.36
    assert int(kept) < 100


@pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")
def test_a_unit_sets_them_in_the_process_that_runs_it(tmp_path):
    """engine.execute's unit wrapper sets them (every runner's worker runs units there)."""
    out = python_probe(
        "from pipeline.core import heap; from pipeline.engine import execute\n"
        "before = heap._set\n"
        "execute._gc_frozen(lambda: None)()\n"
        "print(before, heap._set)")
    assert out == "False True"
