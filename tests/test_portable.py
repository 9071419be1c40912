"""The sample built on Beam's portable protocol, byte-identical to the FnApiRunner build.

The same job API (JobService) and worker protocol (Fn API through an EXTERNAL
worker pool) that Flink, Spark and Dataflow use, without their jars or
containers: Beam's Python job service and worker pool, started here on free
loopback ports and stopped (with every SDK worker they started) afterwards.

The portable build runs as a ``radvqa build`` subprocess with a deadline: a
job whose workers never connect waits on Beam's 300 s timeouts, and this test
fails within ``BUILD_TIMEOUT`` with the services' logs instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.inputs.sample import write_sample
from pipeline.launch.build import build
from tests.test_build import _all_files

ROOT = Path(__file__).resolve().parent.parent
N_PATIENTS = 10
START_TIMEOUT = 60.0  # seconds for both services to accept connections
BUILD_TIMEOUT = 180.0  # seconds for the whole portable build


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"--- {path.name}: (missing)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines):\n" + "\n".join(text)


def _env() -> dict[str, str]:
    """This interpreter's bin first on PATH: the worker pool starts SDK workers as
    plain ``python``; the checkout first on PYTHONPATH: workers import the same
    ``pipeline`` as the launcher."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(proc: subprocess.Popen) -> None:
    """Terminate ``proc``'s process group: the service and every worker it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the whole group is gone
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:  # whatever is left of the group (a worker ignoring SIGTERM, a hung leader)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """Beam's job service + an EXTERNAL worker pool; yields (beam args, log paths)."""
    logs = tmp_path_factory.mktemp("portable-logs")
    job_port, pool_port = _free_port(), _free_port()
    while pool_port == job_port:
        pool_port = _free_port()
    commands = {
        "job_service": [
            sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
            f"--port={job_port}", f"--staging_dir={logs / 'staging'}",
        ],
        "worker_pool": [
            sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={pool_port}",
        ],
    }
    env = _env()
    procs: dict[str, subprocess.Popen] = {}
    files = {name: logs / f"{name}.log" for name in commands}
    try:
        for name, cmd in commands.items():
            with open(files[name], "wb") as out:
                procs[name] = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, cwd=logs, start_new_session=True,
                )
        deadline = time.monotonic() + START_TIMEOUT
        for name, port in (("job_service", job_port), ("worker_pool", pool_port)):
            while not _accepts(port):
                if procs[name].poll() is not None or time.monotonic() > deadline:
                    state = (f"exited with {procs[name].returncode}" if procs[name].poll() is not None
                             else f"not listening after {START_TIMEOUT:.0f} s")
                    pytest.fail(f"{name} on port {port} {state}\n"
                                + "\n".join(_tail(f) for f in files.values()))
                time.sleep(0.2)
        args = [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}",
            "--job_server_timeout=60",
        ]
        yield args, files
    finally:
        for proc in procs.values():
            _stop(proc)


@pytest.fixture(scope="module")
def sample_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable-sample")
    write_sample(root, n_patients=N_PATIENTS)
    return root


def test_portable_runner_build_is_byte_identical_to_fnapi_runner(
    portable_services, sample_input, tmp_path
):
    beam_args, service_logs = portable_services
    reference = tmp_path / "fnapi"
    result = build("sample", str(reference), input_dir=str(sample_input), log=lambda m: None)
    assert result.exit_code == 0

    portable = tmp_path / "portable"
    build_log = tmp_path / "portable-build.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "build", "--recipe", "sample",
           "--input", str(sample_input), "--output", str(portable), *beam_args]
    with open(build_log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_env(), cwd=tmp_path, start_new_session=True)
        try:
            code = proc.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop(proc)
            code = None
    logs = "\n".join(_tail(p) for p in (build_log, *service_logs.values()))
    if code is None:
        pytest.fail(f"portable build did not finish within {BUILD_TIMEOUT:.0f} s (an SDK worker "
                    f"that cannot start, e.g. a `python` without apache_beam or radvqa on the "
                    f"worker pool's PATH, leaves the job waiting)\n{logs}")
    assert code == 0, f"portable build exited with {code}\n{logs}"

    # the work ran in an SDK worker started by the EXTERNAL pool, not in the launcher
    assert "Starting worker with command" in service_logs["worker_pool"].read_text(), logs

    a, b = _all_files(reference), _all_files(portable)
    assert sorted(a) == sorted(b)
    different = sorted(rel for rel in a if a[rel] != b[rel])
    assert not different, f"files differ between FnApiRunner and PortableRunner: {different}"
    assert len([p for p in a if p.endswith(".parquet")]) >= 9
