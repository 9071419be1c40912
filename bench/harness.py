"""Shared pieces of the benchmarks: cached inputs, the launcher's planning, Beam runner
options, peak-RSS sampling, quiet worker logs and machine facts.

Nothing here measures anything by itself; each benchmark module says what it times.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
RADVQA = Path(sys.executable).with_name("radvqa")

#: The runner configurations every pipeline number comes from: one in-process worker, Beam's
#: ``multi_processing`` (workers started as new interpreters when the pipeline starts), and
#: radvqa's ``--workers 2`` (warm workers forked from a forkserver that preloads them while
#: the launcher plans: pipeline/beam/warm.py).  ``--workers=N`` is radvqa's option, not Beam's:
#: :func:`split_workers` takes it out.
RUNNERS = {
    "1 worker": ["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    "2 workers": ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                  "--direct_num_workers=2"],
    "2 warm workers": ["--runner=FnApiRunner", "--workers=2"],
}


def split_workers(args: list[str]) -> tuple[list[str], int]:
    """``(Beam's options, radvqa's --workers N)`` of a :data:`RUNNERS` entry."""
    rest, workers = [], 1
    for a in args:
        if a.startswith("--workers="):
            workers = int(a.split("=", 1)[1])
        else:
            rest.append(a)
    return rest, workers


def setup_imports() -> None:
    """Make ``pipeline`` and ``bench`` importable here and in Beam's worker processes
    (``multi_processing`` workers are fresh interpreters: they see ``PYTHONPATH``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    import logging

    logging.disable(logging.WARNING)  # Beam's start-up chatter in this process


# ------------------------------------------------------------------------------ inputs


def cached_dir(name: str, stamp: str, write: Callable[[Path], object]) -> tuple[Path, float | None]:
    """``.cache/bench/<name>``, written by ``write(path)`` unless its stamp matches.

    Returns ``(path, seconds spent writing it)``; the seconds are ``None`` when the cached
    copy was reused.  A stale or half-written folder is removed first.
    """
    path = CACHE / name
    stamp_file = path / ".bench-stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return path, None
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t0 = time.perf_counter()
    write(path)
    seconds = time.perf_counter() - t0
    stamp_file.write_text(stamp)
    return path, seconds


def source_digest(*sources) -> str:
    """Digest of source files (paths relative to the repository) or of functions' source:
    a cache stamp that changes whenever the code writing the cached data does."""
    import hashlib
    import inspect

    texts = sorted(inspect.getsource(s) if callable(s) else str(s) + "\0" + (ROOT / s).read_text()
                   for s in sources)
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def phantoms(n_patients: int) -> tuple[Path, float | None]:
    """The built-in sample's phantom cases (``pipeline.inputs.sample.write_sample``), cached."""
    from pipeline.inputs import sample

    stamp = f"{sample.SAMPLE_VERSION}:{n_patients}:{source_digest('pipeline/inputs/sample.py', 'pipeline/inputs/phantoms.py')}"
    return cached_dir(f"phantoms-{n_patients}", stamp,
                      lambda p: sample.write_sample(p, n_patients=n_patients))


# ---------------------------------------------------------------------------- launcher


@dataclass
class Launch:
    """What ``pipeline.launch.build.build`` has in hand just before ``run_pipeline``."""

    kind: object
    refs: list
    ctx: object
    n_cases: int
    seconds: float


class _Planned(Exception):
    """Raised in place of running the pipeline, carrying what the launcher planned."""

    def __init__(self, refs, ctx):
        super().__init__("planned")
        self.refs, self.ctx = refs, ctx


def launch(recipe_name: str, input_dir: str | Path, output: str | Path) -> Launch:
    """``pipeline.launch.build.build`` up to the point where it starts the Beam pipeline.

    The real launcher runs (discovery, planning, plan files, the kind's ``before_run``)
    with ``pipeline.launch.runner.run_pipeline`` (and the launcher's Beam-free
    ``run_in_process``) swapped, for this call only, for a function that records the unit
    refs and the worker context and stops the build.  The benchmarks then
    run those units themselves: through a Beam pipeline or a plain loop.  ``seconds`` is
    the launcher's time.
    """
    from pipeline.kinds.registry import get_kind
    from pipeline.launch import build as B
    from pipeline.launch import runner as R

    def planned(refs, ctx, *_, **__):
        raise _Planned(refs, ctx)

    original, in_process = R.run_pipeline, B.run_in_process
    R.run_pipeline = B.run_in_process = planned
    t0 = time.perf_counter()
    try:
        B.build(recipe_name, str(output), input_dir=str(input_dir), retries=0,
                log=lambda msg: None)
    except _Planned as got:
        return Launch(get_kind(got.ctx.kind), list(got.refs), got.ctx,
                      sum(r.n_cases for r in got.refs), time.perf_counter() - t0)
    finally:
        R.run_pipeline, B.run_in_process = original, in_process
    raise AssertionError("pipeline.launch.build.build finished without calling run_pipeline")


# ------------------------------------------------------------------------------ memory


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree_rss(pid: int) -> int:
    """Summed resident set size (bytes) of ``pid`` and all its descendants (Linux /proc).

    A sum of RSS counts shared library pages once per process: an upper bound on the
    memory the build really holds.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children(p))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            pass
    return total


def tree_ticks(pid: int) -> dict[int, int]:
    """User + system CPU clock ticks of ``pid`` and each of its descendants, by pid
    (``/proc/<pid>/stat``; children already reaped are not in the tree)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children(p))
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return out


class PeakRSS:
    """Peak of :func:`tree_rss` of one process tree, sampled every ``every`` seconds
    on a background thread while the ``with`` block runs; and :attr:`cpu_seconds`, the
    CPU seconds of every process seen in the tree (each one's last sample: the Beam
    workers included, which ``getrusage`` of the launcher does not count, since they
    are the forkserver's children; a process's last ``every`` seconds may be missed)."""

    def __init__(self, pid: int | None = None, every: float = 0.05):
        self.pid = pid or os.getpid()
        self.peak = 0
        self.samples = 0
        self._ticks: dict[int, int] = {}
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._ticks.values()) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pid))
            self._ticks.update(tree_ticks(self.pid))
            self.samples += 1
            if self._stop.wait(self._every):
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


#: CPU seconds (user + system) of the last :func:`run_cli` child and its reaped workers:
#: comparable across runs on a shared machine, where wall time is not.
LAST_CLI_CPU = {"seconds": 0.0}


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cli(args: list[str], log: Path) -> tuple[float, int, int]:
    """Run ``radvqa ARGS`` as a child process, its output appended to ``log``.

    Returns ``(wall seconds, peak summed RSS of the child and its Beam workers in bytes,
    exit code)``; its CPU seconds go to :data:`LAST_CLI_CPU`.  Exit codes 3/4 (reject
    fraction, audit) still mean a finished build.
    """
    cpu0 = _children_cpu()
    with open(log, "ab") as out:
        out.write(f"\n$ radvqa {' '.join(args)}\n".encode())
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(RADVQA), *args], stdout=out, stderr=subprocess.STDOUT)
        with PeakRSS(proc.pid) as rss:
            code = proc.wait()
        seconds = time.perf_counter() - t0
    LAST_CLI_CPU["seconds"] = _children_cpu() - cpu0
    if code not in (0, 3, 4):
        raise RuntimeError(f"radvqa {' '.join(args)} exited with {code}; see {log}")
    return seconds, rss.peak, code


# ------------------------------------------------------------------------------- beam


@contextlib.contextmanager
def worker_output_to(log: Path):
    """Send this process's stderr (fd 2, inherited by Beam's worker processes, which log
    every start-up step there) to ``log`` for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def run_beam(build: Callable, beam_args: list[str]) -> float:
    """Wall seconds of one Beam pipeline: ``build(pipeline)`` adds its transforms, then
    the pipeline is constructed, run and waited for (start-up and shut-down included)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.beam.warm import WarmWorkers

    beam_args, workers = split_workers(beam_args)
    t0 = time.perf_counter()
    if workers == 1:
        pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
        build(pipeline)
        pipeline.run().wait_until_finish()
    else:
        with WarmWorkers(workers) as warm:
            pipeline = beam.Pipeline(runner=warm.runner(),
                                     options=PipelineOptions([*beam_args, *warm.options_args()]))
            build(pipeline)
            pipeline.run().wait_until_finish()
    return time.perf_counter() - t0


def warm_preload_seconds() -> float:
    """Wall seconds from starting the warm workers' forkserver to its first fork done: the
    start-up a ``--workers N`` build overlaps with discovery and planning.  Meaningful only
    the first time in a process (the forkserver then stays up)."""
    import multiprocessing

    from pipeline.beam.preload import start_forkserver

    t0 = time.perf_counter()
    start_forkserver()
    child = multiprocessing.get_context("forkserver").Process(target=os.getpid)
    child.start()
    child.join()
    return time.perf_counter() - t0


def startup_seconds(n_elements: int, beam_args: list[str]) -> float:
    """Wall time of the stage pipelines' shape (Create → Reshuffle → ParDo) with a DoFn
    that does nothing: Beam's fixed cost (workers started, bundles scheduled)."""
    import apache_beam as beam

    return run_beam(lambda p: (p | "Create" >> beam.Create(list(range(n_elements)))
                               | "Spread" >> beam.Reshuffle()
                               | "Noop" >> beam.Map(lambda x: x)), beam_args)


# ------------------------------------------------------------------------------- facts


def machine() -> dict:
    """Where and with what the numbers were taken."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("radvqa", "apache-beam", "numpy", "pyarrow", "SimpleITK", "pydicom",
                 "jinja2", "matplotlib"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "missing"
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
        "commit": commit,
        "versions": versions,
    }


def rounded(x: float, digits: int = 3) -> float:
    return round(float(x), digits)
