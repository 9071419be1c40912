"""Warm local workers: Beam's FnApiRunner with N worker processes started before they are needed.

``--direct_running_mode=multi_processing`` starts each SDK worker as a new interpreter
when the pipeline starts (``python -m apache_beam.runners.worker.sdk_worker_main``): every
worker imports Apache Beam and then radvqa — 2.5 s of a 2-core machine's time (measured),
on the critical path, since no worker can run a unit before it. ``radvqa build --workers N``
takes it off:

1. At the start of the build, before discovery and planning, a ``multiprocessing``
   *forkserver* is started with the worker's modules to preload (:data:`PRELOAD`: Beam's
   SDK harness and :mod:`pipeline.beam.transforms`, hence every kind). It imports them in
   its own process, on the other core, while the launcher plans.
2. The launcher serves Beam's worker-pool API (``BeamFnExternalWorkerPool``, the one
   ``worker_pool_main`` serves for portable runners) on a local port and runs the pipeline on
   Beam's ``FnApiRunner`` with an ``EXTERNAL`` environment pointing at it and
   ``direct_num_workers=N``.
3. For each of its N workers the runner asks the pool to ``StartWorker``; the pool hands the
   runner's control endpoint to one of N children the forkserver forked when the pool
   opened (while the pipeline was being built; else it forks one now), which runs Beam's
   ``SdkHarness`` against it — the same harness, protocol and bundles as
   ``multi_processing``; only the imports and the fork are already done.

The forkserver never opens a gRPC channel before forking (it only imports), so each child
creates its own. A worker that dies is reported as an exception on a thread (the launcher's
watchdog turns it into a failed attempt and a retry, as with ``multi_processing``);
:func:`kill_workers` kills the children that are left. Outputs are byte-identical to the
other local modes (``tests/test_warm_workers.py``).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent import futures

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import ExternalEnvironment

from pipeline.beam.preload import start_forkserver

#: Beam's default for a worker's state cache (``--max_cache_memory_usage_mb`` = 100).
STATE_CACHE_BYTES = 100 << 20


def _run_harness(control_url: str, worker_id: str) -> None:
    """In the forked child: Beam's SDK harness against the runner's control endpoint."""
    from apache_beam.runners.worker.sdk_worker import SdkHarness  # preloaded: no cost

    SdkHarness(control_url, worker_id=worker_id, state_cache_size=STATE_CACHE_BYTES).run()


def _await_harness(conn) -> None:
    """In a child forked ahead of need (:meth:`_Pool.fork_spares`): wait for the runner's
    control endpoint and worker id, then run the harness; ``None`` (an unused spare) ends it."""
    try:
        job = conn.recv()
    except EOFError:  # the launcher closed the pipe: never needed
        return
    finally:
        conn.close()
    if job is not None:
        _run_harness(*job)


class WorkerDied(RuntimeError):
    """A warm worker process exited with a non-zero status before the pool was closed."""


class _Pool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    def __init__(self):
        self.processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self.closing = threading.Event()
        self._context = multiprocessing.get_context("forkserver")
        self._spares: list[tuple[multiprocessing.process.BaseProcess, object]] = []
        self._lock = threading.Lock()
        self._forking: threading.Thread | None = None

    def fork_spares_soon(self, n: int) -> None:
        """:meth:`fork_spares` on a thread: the launcher builds the pipeline meanwhile (a
        forkserver still importing would hold the forks back, not the launcher)."""
        self._forking = threading.Thread(target=self.fork_spares, args=(n,), daemon=True,
                                         name="radvqa-fork-spares")
        self._forking.start()

    def fork_spares(self, n: int) -> None:
        """Fork ``n`` workers now, each waiting for its endpoint, so that the runner's
        ``StartWorker`` only sends it: a fork through the forkserver took 15-150 ms per
        worker (measured, contended) on the stage's critical path, the runner asking for
        its workers one after the other once the pipeline is built."""
        for _ in range(n):
            parent, child = self._context.Pipe()
            process = self._context.Process(target=_await_harness, args=(child,),
                                            name="radvqa-worker-spare", daemon=True)
            process.start()
            child.close()
            with self._lock:
                self._spares.append((process, parent))

    def _spare(self, url: str, worker_id: str):
        """A spare that took the job, or ``None`` (none left, or each one left is dead)."""
        if self._forking is not None:
            self._forking.join()  # forks under way: waiting for them is no slower than forking
        while True:
            with self._lock:
                if not self._spares:
                    return None
                process, conn = self._spares.pop(0)
            try:
                conn.send((url, worker_id))
                return process
            except OSError:  # died before it was needed: the next, or a fork now
                process.join(timeout=1)
            finally:
                conn.close()

    def close_spares(self) -> None:
        """End the spares no run asked for."""
        if self._forking is not None:
            self._forking.join()
        with self._lock:
            spares, self._spares = self._spares, []
        for process, conn in spares:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    def StartWorker(self, request, context):  # noqa: N802 — gRPC's method name
        try:
            process = self._spare(request.control_endpoint.url, request.worker_id)
            if process is None:
                process = self._context.Process(
                    target=_run_harness, args=(request.control_endpoint.url, request.worker_id),
                    name=f"radvqa-worker-{request.worker_id}", daemon=True)
                process.start()
        except Exception as err:  # noqa: BLE001 — returned to the runner, which raises it
            return beam_fn_api_pb2.StartWorkerResponse(error=f"{type(err).__name__}: {err}")
        self.processes[request.worker_id] = process
        threading.Thread(target=self._watch, args=(request.worker_id, process), daemon=True,
                         name=f"radvqa-watch-{request.worker_id}").start()
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):  # noqa: N802 — gRPC's method name
        process = self.processes.pop(request.worker_id, None)
        if process is not None and process.is_alive():
            process.terminate()
        return beam_fn_api_pb2.StopWorkerResponse()

    def _watch(self, worker_id: str, process) -> None:
        process.join()
        if process.exitcode and not self.closing.is_set():
            # An exception on a thread: the launcher's watchdog (threading.excepthook)
            # turns it into a failed attempt, as Beam's own worker handler does.
            raise WorkerDied(f"worker {worker_id} (pid {process.pid}) exited with status "
                             f"{process.exitcode}")


class WarmWorkers:
    """``with WarmWorkers(n) as warm: beam.Pipeline(runner=warm.runner(), options=…)``.

    Serves the worker pool on a local port for the duration of the block; on exit stops
    the server and terminates any worker still alive (normally each has exited when the
    runner closed its control stream)."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = _Pool()
        self._server: grpc.Server | None = None
        self.address = ""

    def __enter__(self) -> WarmWorkers:
        start_forkserver()
        self._pool.fork_spares_soon(self.workers)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(self._pool, self._server)
        port = self._server.add_insecure_port("localhost:0")
        self._server.start()
        self.address = f"localhost:{port}"
        return self

    def runner(self) -> FnApiRunner:
        """Beam's FnApiRunner whose workers are this pool's (``direct_num_workers`` = N must
        be in the pipeline's options: :func:`options_args`)."""
        return FnApiRunner(default_environment=ExternalEnvironment(self.address))

    def options_args(self) -> list[str]:
        return [f"--direct_num_workers={self.workers}"]

    def pids(self) -> list[int]:
        return [p.pid for p in self._pool.processes.values() if p.pid is not None]

    def kill_workers(self) -> int:
        """SIGKILL every worker still alive (the attempt has failed: their deaths are not
        reported again); the number killed."""
        self._pool.closing.set()
        self._pool.close_spares()
        killed = 0
        for process in list(self._pool.processes.values()):
            if process.is_alive():
                process.kill()
                killed += 1
        return killed

    def __exit__(self, *exc):
        self._pool.closing.set()
        self._pool.close_spares()
        for process in list(self._pool.processes.values()):
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self._pool.processes.clear()
        if self._server is not None:
            self._server.stop(grace=None)


class _QuietNumWorkers(logging.Filter):
    """FnApiRunner warns that ``direct_num_workers`` > 1 wants ``multi_processing`` when the
    running mode is ``in_memory``; with an EXTERNAL environment that advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_running_mode" not in record.getMessage()


logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").addFilter(
    _QuietNumWorkers())
