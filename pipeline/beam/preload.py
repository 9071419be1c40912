"""The warm workers' forkserver, startable without importing Apache Beam.

The launcher calls :func:`start_forkserver` first thing in a ``--workers N`` build, so the
forkserver imports the worker's modules (:data:`PRELOAD`) on the other core while the
launcher discovers and plans; :mod:`pipeline.beam.warm` forks the workers from it.
Standard library only: importing this module costs nothing.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import threading

#: Modules the forkserver imports before its first fork: Beam's SDK harness, radvqa's Beam
#: shell (which imports the engine), every kind's module (``pipeline.kinds.registry.KINDS``,
#: whose modules are imported only when asked for, so the shell does not bring them;
#: ``tests/test_warm_workers.py`` checks the two lists agree), and what extraction imports on
#: first use (SimpleITK; the readers, which ``pipeline.inputs.readers`` imports when a case is
#: first read): a worker forked per pipeline would otherwise import them on the critical
#: path, once per worker and run.  (scipy.ndimage, 0.15-0.35 s, was preloaded for the slice
#: boxes' components, which cc3d counts now.)
PRELOAD = ("apache_beam.runners.worker.sdk_worker", "pipeline.beam.transforms",
           "pipeline.kinds.slices", "pipeline.kinds.tree", "pipeline.kinds.volumes",
           "pipeline.inputs.readers.registry", "SimpleITK")

_lock = threading.Lock()


def start_forkserver() -> None:
    """Start the preloading forkserver now; returns at once (it imports in the background).
    One forkserver per launcher process, reused by every build and retry; one that died (a
    worker sweep, a signal) is started again (``ensure_running`` checks)."""
    with _lock:
        multiprocessing.set_forkserver_preload(list(PRELOAD))
        multiprocessing.forkserver.ensure_running()
