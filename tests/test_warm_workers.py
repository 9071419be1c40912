"""``--workers N``: warm local workers (pipeline/beam/warm.py).  Byte-identity with the other
local modes is in tests/test_build.py, a killed warm worker in tests/test_incremental.py."""

from __future__ import annotations

import importlib.util

import pytest

from pipeline import cli
from pipeline.errors import ConfigError
from pipeline.launch import build as build_module
from pipeline.launch.build import check_workers
from tests.probe import python_probe


@pytest.mark.parametrize("args", [["--runner=PortableRunner"], ["--runner=DataflowRunner"],
                                  ["--direct_running_mode=multi_processing"],
                                  ["--direct_num_workers=4"], ["--environment_type=EXTERNAL"]])
def test_workers_refuse_a_second_way_to_choose_workers(args):
    with pytest.raises(ConfigError, match="--workers 2"):
        check_workers(2, args)


def test_one_worker_accepts_any_beam_option():
    check_workers(1, ["--runner=PortableRunner", "--direct_num_workers=4"])
    check_workers(2, ["--runner=FnApiRunner", "--max_cache_memory_usage_mb=50"])
    with pytest.raises(ConfigError, match="at least 1"):
        check_workers(0, [])


def test_the_cli_reports_a_conflict_with_exit_status_2(tmp_path, capsys):
    code = cli.main(["build", "--output", str(tmp_path / "out"), "--workers", "2",
                     "--direct_running_mode=multi_processing"])
    assert code == 2
    assert "--workers 2" in capsys.readouterr().err


def test_the_forkserver_starts_before_the_recipe_is_even_loaded(tmp_path, monkeypatch):
    """Start-up off the critical path: the workers' imports begin before discovery and
    planning, not when the pipeline starts."""
    from pipeline.beam import preload

    order = []  # (the launcher imports the forkserver's module only for workers)
    monkeypatch.setattr(preload, "start_forkserver", lambda: order.append("forkserver"))

    def load_recipe(name):
        order.append("recipe")
        raise ConfigError("stop here")

    monkeypatch.setattr(build_module, "load_recipe", load_recipe)
    with pytest.raises(ConfigError, match="stop here"):
        build_module.build("sample", str(tmp_path / "out"), workers=2, log=lambda m: None)
    assert order == ["forkserver", "recipe"]
    order.clear()
    with pytest.raises(ConfigError, match="stop here"):
        build_module.build("sample", str(tmp_path / "out"), workers=1, log=lambda m: None)
    assert order == ["recipe"]



def test_every_warm_run_asks_for_a_live_forkserver(monkeypatch):
    """A sweep of worker processes may take the forkserver with it: each run calls
    ``ensure_running`` (which starts a dead server again), never a remembered "started"."""
    import multiprocessing.forkserver

    from pipeline.beam import preload

    calls = []
    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", lambda: calls.append(1))
    preload.start_forkserver()
    preload.start_forkserver()
    assert len(calls) == 2


def test_spare_workers_forked_ahead_end_when_no_run_asks_for_them():
    """WarmWorkers forks its N workers when it opens (each waits for the runner's endpoint);
    spares no run asked for exit cleanly when it closes."""
    from pipeline.beam.preload import start_forkserver
    from pipeline.beam.warm import _Pool

    start_forkserver()
    pool = _Pool()
    pool.fork_spares_soon(2)
    pool._forking.join()
    spares = [process for process, _ in pool._spares]
    assert len(spares) == 2 and all(p.is_alive() for p in spares)
    spares[0].kill()  # one dies before it is needed: closing still ends the other
    spares[0].join()
    pool.close_spares()
    assert not pool._spares
    assert not spares[1].is_alive() and spares[1].exitcode == 0


def test_the_forkserver_preloads_every_kind_and_the_worker_shell():
    """A kind's module left out of ``PRELOAD`` is imported by every warm worker on its first
    unit, on the critical path (the registry imports kinds only when asked for)."""
    from pipeline.beam.preload import PRELOAD
    from pipeline.kinds.registry import KINDS

    assert set(KINDS.values()) <= set(PRELOAD)
    assert {"pipeline.beam.transforms", "apache_beam.runners.worker.sdk_worker"} <= set(PRELOAD)
    for name in PRELOAD:
        assert importlib.util.find_spec(name) is not None, name


def test_a_warm_workers_first_case_imports_nothing_of_ours_but_the_dicom_decoders(tmp_path):
    """What a worker imports on its first case (read, masks, slices) is on the critical path
    of every warm worker: after the forkserver's PRELOAD, reading and extracting a NIfTI
    case of the built-in sample imports no module of ``pipeline``; a DICOM case then only
    the DICOM reader's own modules, which bring pydicom (0.1 s of CPU, measured) and are
    imported by the first DICOM case read on purpose (docs/architecture.md)."""
    probe = (
        "import sys, importlib; from pipeline.beam.preload import PRELOAD\n"
        "for m in PRELOAD: importlib.import_module(m)\n"
        "from pipeline.inputs.sample import write_sample; from pipeline.inputs.discovery import discover_cases\n"
        "from pipeline.config.recipes import load_recipe\n"
        f"write_sample({str(tmp_path)!r}, n_patients=2)\n"
        f"found, _ = discover_cases({str(tmp_path)!r}, pseudonym_key='probe')\n"
        "from pipeline.engine.extract import SliceSettings, extract_case, load_case\n"
        "settings = SliceSettings.from_recipe(load_recipe('sample').section('slices'))\n"
        "for case in sorted(found, key=lambda c: c.layout != 'totalseg'):\n"
        "    before = set(sys.modules)\n"
        f"    volume, masks, _, _ = load_case(case, {str(tmp_path)!r}, settings.max_voxels)\n"
        "    extract_case(case, 'train', volume, masks, settings)\n"
        "    print(case.layout, sorted(m for m in set(sys.modules) - before if m.startswith('pipeline')))")
    assert python_probe(probe).splitlines()[-2:] == [
        "totalseg []",
        "dicom ['pipeline.inputs.readers.dicom_decode', 'pipeline.inputs.readers.dicom_files', "
        "'pipeline.inputs.readers.dicom_series']"]
