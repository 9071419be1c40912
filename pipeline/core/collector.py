"""Python's cyclic garbage collector paused around work that makes many objects and no cycle.

Each full collection walks every live object of the process; work that allocates ~10^5
to 10^6 short-lived objects starts several, for nothing freed.  Measured: a report figure
10-15 % of its time (``report/drawing``), the learned baseline at 100K images 16 -> 13 s
of CPU (``qa/learned``, ``qa/learned_fit``), a unit 0.6-0.7 s of CPU per 16K 224 px
images (``engine/execute``).  Garbage that does form cycles is collected once the
collector runs again.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector off inside, on again after if it was on before."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
