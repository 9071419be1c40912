"""Running the Beam pipeline once: options, progress, and a dead worker turned into an error.

:func:`run_pipeline` builds the pipeline (:class:`~pipeline.beam.transforms.BuildCorpus`
over the unit refs) and blocks until it finishes; any failure — a worker error, a worker
process that died — is raised as :class:`~pipeline.errors.BuildFailed`, after the
remaining SDK worker processes are killed, so the launcher can retry: finished units keep
their receipts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.beam.transforms import BuildCorpus
from pipeline.beam.warm import WarmWorkers
from pipeline.engine.state import delete_tree
from pipeline.engine.units import BuildContext, UnitRef, claim_folder
from pipeline.errors import BuildFailed
from pipeline.io import shards
from pipeline.schema.layout import PROGRESS_DIR, UNITS_DIR

DEFAULT_RUNNER = "FnApiRunner"


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's options from the command line's extra arguments (runner default: FnApiRunner)."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args)


# ---------------------------------------------------------------------------- progress


#: Seconds between two looks at the receipts and progress markers.
PROGRESS_EVERY_S = 2.0


class Progress:
    """Polls unit receipts and the units' progress markers while the runner blocks
    (``FnApiRunner.run()`` exposes no metrics mid-run); prints cases done / total, rate and
    ETA whenever the count moves.  A unit's cases count as done when its receipt is written;
    before that, as many as its marker ``.radvqa/progress/<unit>`` says were extracted
    (:class:`pipeline.engine.state.ProgressMarker`), so a build of a few large units still moves."""

    def __init__(self, output: str, units: list[tuple[str, int]], log, every: float | None = None):
        self._markers = [f"{PROGRESS_DIR}/{unit_id}" for unit_id, _ in units]
        self._paths = [f"{UNITS_DIR}/{unit_id}.json" for unit_id, _ in units]
        self._cases = [n for _, n in units]
        self._output, self._log = output, log
        self._every = PROGRESS_EVERY_S if every is None else every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def done(self) -> tuple[int, int]:
        """``(units whose receipt is written, cases done)``."""
        units = cases = 0
        for path, marker, n in zip(self._paths, self._markers, self._cases):
            if shards.exists(self._output, path):
                units += 1
                cases += n
                continue
            try:
                cases += min(n, int(shards.read_bytes(self._output, marker)))
            except (OSError, ValueError):
                continue  # no marker yet (or one being replaced)
        return units, cases

    def _run(self):
        total = sum(self._cases)
        last = None
        while not self._stop.wait(self._every):
            units, cases = self.done()
            if (units, cases) == last:
                continue
            last = (units, cases)
            elapsed = time.monotonic() - self._start
            rate = cases / elapsed if elapsed > 0 else 0.0
            eta = f"{(total - cases) / rate:.0f} s" if rate > 0 else "-"
            self._log(f"  progress: {cases}/{total} cases in {units}/{len(self._paths)} units, "
                      f"{rate:.2f} cases/s, ETA {eta}")


# ------------------------------------------------------------------------------ running


class _Watchdog:
    """Turns a dead worker into an error instead of a hang.

    When a ``multi_processing`` worker dies, Beam's worker handler thread raises, but the
    runner's main loop keeps waiting for it forever.  The watchdog sees that thread's
    exception (``threading.excepthook``) and interrupts the main thread — again every
    two seconds until the launcher acknowledges, since an interrupt can land in code that
    swallows it — so the launcher can clean up and retry.
    """

    def __init__(self, every: float = 2.0):
        self.errors: list[str] = []
        self.acknowledged = threading.Event()
        self._lock = threading.Lock()
        self._every = every
        self._previous = None
        self._nagger: threading.Thread | None = None

    def __enter__(self):
        self._previous = threading.excepthook

        def hook(args):
            self.errors.append(f"{args.exc_type.__name__}: {args.exc_value}")
            if threading.current_thread() is not threading.main_thread() and self._nagger is None:
                self._nagger = threading.Thread(target=self._nag, daemon=True)
                self._nagger.start()

        threading.excepthook = hook
        return self

    def _nag(self) -> None:
        while True:
            with self._lock:
                if self.acknowledged.is_set():
                    return
                os.kill(os.getpid(), signal.SIGINT)
            self.acknowledged.wait(self._every)

    def acknowledge(self) -> None:
        """Stop interrupting; drop an interrupt already on its way (main thread only)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            with self._lock:
                self.acknowledged.set()
            if self._nagger is not None:
                self._nagger.join()
        finally:
            signal.signal(signal.SIGINT, previous)

    def __exit__(self, *exc):
        with self._lock:
            self.acknowledged.set()
        threading.excepthook = self._previous


def _kill_workers(warm: WarmWorkers | None = None) -> int:
    """SIGKILL this process's remaining Beam SDK worker processes (Linux /proc) and the
    warm workers still alive.

    ``multi_processing`` starts each worker through a shell (``Popen(..., shell=True)``):
    the launcher's child is ``sh -c '… sdk_worker_main …'`` and the worker is its child.
    Killing only the shell would leave the worker running under init, still connected and
    working into the retry, so every descendant whose command names ``sdk_worker_main`` is
    killed, found from one snapshot of the process table."""
    killed = warm.kill_workers() if warm is not None else 0
    pids = worker_processes(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            continue
    _wait_gone(pids)
    return killed


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Until every process of ``pids`` has exited (gone, or a zombie: it runs no more code),
    so that no killed worker writes after the launcher cleans up for its retry; they are
    not the launcher's children (the shell's), so they cannot be waited for."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if _stat(pid)[0] == "Z":
                    break
            except (OSError, IndexError):
                break
            time.sleep(0.01)


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and
    parentheses): ``[state, ppid, …]``."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def worker_processes(root: int) -> list[int]:
    """Descendants of process ``root`` whose command line names Beam's worker module
    (``-m apache_beam.runners.worker.sdk_worker_main``, and the shell that started one), from
    one snapshot of ``/proc`` (empty where there is none); not the warm workers'
    forkserver, whose command names the ``sdk_worker`` module only."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    children: dict[int, list[int]] = {}
    for pid in pids:
        try:
            children.setdefault(int(_stat(pid)[1]), []).append(pid)
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, ())
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sdk_worker_main" in f.read():
                    out.append(pid)
        except OSError:
            continue
    return sorted(out)


def run_pipeline(refs: list[UnitRef], ctx: BuildContext, beam_args, log, workers: int = 1) -> None:
    """Run the Beam pipeline once; raises :class:`BuildFailed` when it fails.

    ``workers`` > 1: Beam's FnApiRunner with that many warm worker processes
    (:mod:`pipeline.beam.warm`; ``beam_args`` then name no runner or running mode).  Local
    workers claim the units one by one in a claims folder made for this run
    (:class:`~pipeline.beam.transforms.SpreadUnits`), so a retry claims afresh."""
    todo = [(r.unit_id, r.n_cases) for r in refs if r.mode != "done"]
    delete_tree(ctx.output, PROGRESS_DIR)  # markers of an earlier run would count twice
    warm = WarmWorkers(workers) if workers > 1 else None
    # the claims folder outlives the workers (its block is left last): a new run, a new one
    with claim_folder() as claims, Progress(ctx.output, todo, log), _Watchdog() as watchdog, \
            warm or contextlib.nullcontext():
        try:
            if warm is None:
                pipeline = beam.Pipeline(options=beam_options(beam_args))
            else:
                pipeline = beam.Pipeline(runner=warm.runner(),
                                         options=PipelineOptions([*beam_args, *warm.options_args()]))
            _ = pipeline | "BuildCorpus" >> BuildCorpus(refs, ctx, claims)
            pipeline.run().wait_until_finish()
        except KeyboardInterrupt:
            if not watchdog.errors:
                raise
            watchdog.acknowledge()
            _kill_workers(warm)
            raise BuildFailed("a worker died: " + "; ".join(watchdog.errors[:3])) from None
        except Exception as err:  # noqa: BLE001 — the runner wraps any worker error
            _kill_workers(warm)
            text = str(err).strip().splitlines()
            raise BuildFailed(f"{type(err).__name__}: {text[-1] if text else ''}") from err

