"""Units spread over local workers: claimed one by one, largest first (the launcher's input
bytes, else case counts), by whichever worker is free."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from types import SimpleNamespace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.beam.transforms import SpreadUnits, local_workers
from pipeline.beam.warm import WarmWorkers
from pipeline.engine.units import CLAIMS_PREFIX, UnitRef, claim, claim_folder, work_order
from pipeline.errors import BuildFailed
from pipeline.inputs.sample import write_sample
from pipeline.launch import build as B
from pipeline.launch import runner as R


def _refs(cases, sizes=None, modes=None):
    n = len(cases)
    return [UnitRef("train", i, n, c, mode=(modes or ["build"] * n)[i],
                    input_bytes=(sizes or [0] * n)[i]) for i, c in enumerate(cases)]


def _indices(refs):
    return [r.index for r in refs]


def test_units_are_ordered_by_input_bytes_when_every_unit_knows_them():
    # Equal case counts, one unit holding most of the bytes (a whole-body scan among heads)
    refs = _refs([2, 2, 2, 2, 2], sizes=[100, 100, 900, 100, 300])
    assert _indices(work_order(refs)) == [2, 4, 0, 1, 3]


def test_case_counts_decide_when_a_unit_has_no_size():
    refs = _refs([1, 1, 2, 2], sizes=[900, 100, 100, 0])
    assert _indices(work_order(refs)) == [2, 3, 0, 1]


def test_done_units_count_a_tenth_and_the_order_is_deterministic():
    refs = _refs([1, 1, 1], sizes=[100, 100, 100], modes=["done", "build", "build"])
    assert _indices(work_order(refs)) == [1, 2, 0]
    assert work_order(refs) == work_order(list(refs))


def test_each_unit_is_claimed_exactly_once_among_racing_claimers(tmp_path):
    order = work_order(_refs([1] * 200))
    got: list[list[int]] = [[] for _ in range(4)]

    def worker(i):
        for ref in claim(order, str(tmp_path)):
            got[i].append(ref.index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for g in got for i in g) == list(range(200))
    assert all(g == sorted(g) for g in got)  # each claimer walks the one list in order


def test_a_claim_is_taken_only_when_the_next_unit_is_asked_for(tmp_path):
    order = work_order(_refs([1, 1, 1]))
    first = claim(order, str(tmp_path))
    assert next(first).index == 0 and sorted(os.listdir(tmp_path)) == ["0"]
    assert _indices(claim(order, str(tmp_path))) == [1, 2]  # another worker takes the rest
    assert list(first) == []
    with pytest.raises(FileNotFoundError, match="run is over"):  # a worker left by a failed run
        next(claim(order, str(tmp_path / "removed")))


def test_claims_folders_a_killed_launcher_left_are_removed_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    (tmp_path / f"{CLAIMS_PREFIX}{dead.pid}-abc").mkdir()
    (tmp_path / f"{CLAIMS_PREFIX}{dead.pid}-abc" / "0").touch()
    (tmp_path / f"{CLAIMS_PREFIX}{os.getppid()}-def").mkdir()  # a live launcher's
    with claim_folder() as claims:
        assert os.path.basename(claims).startswith(f"{CLAIMS_PREFIX}{os.getpid()}-")
        assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(claims),
                                                       f"{CLAIMS_PREFIX}{os.getppid()}-def"])
    assert os.listdir(tmp_path) == [f"{CLAIMS_PREFIX}{os.getppid()}-def"]


class _Gate(beam.DoFn):
    """Unit 0 (claimed first) waits until every other unit is done; each unit leaves
    ``done-<index>-<pid>`` in ``folder``.  Under a fixed deal of 4 equal units to 2
    workers (0 and 2 to one of them), or with the claims drained before processing, unit
    0's worker would hold a unit nobody else can run: the wait times out."""

    def __init__(self, folder: str, others: int):
        self._folder, self._others = folder, others

    def process(self, ref):
        if ref.index == 0:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(os.listdir(self._folder)) < self._others:
                time.sleep(0.02)
        with open(os.path.join(self._folder, f"done-{ref.index}-{os.getpid()}"), "w"):
            pass
        yield ref.index


@pytest.mark.parametrize("mode", ["warm", "multi_processing"])
def test_a_free_worker_takes_the_next_unit_while_the_other_is_busy(tmp_path, mode):
    """Fusion is lazy on FnApiRunner's local workers: the slot's claiming generator hands
    over one unit at a time, so the worker stuck on unit 0 claims nothing more."""
    refs = _refs([1, 1, 1, 1], sizes=[100, 100, 100, 100])
    done = tmp_path / "done"
    done.mkdir()

    def build(pipeline, claims):
        _ = (pipeline | SpreadUnits(refs, claims)
             | beam.ParDo(_Gate(str(done), len(refs) - 1)))

    started = time.monotonic()
    with claim_folder() as claims:
        if mode == "warm":
            with WarmWorkers(2) as warm:
                pipeline = beam.Pipeline(runner=warm.runner(),
                                         options=PipelineOptions(warm.options_args()))
                build(pipeline, claims)
                pipeline.run().wait_until_finish()
        else:
            pipeline = beam.Pipeline(options=PipelineOptions([
                "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                "--direct_num_workers=2"]))
            build(pipeline, claims)
            pipeline.run().wait_until_finish()
        assert sorted(os.listdir(claims)) == ["0", "1", "2", "3"]
    assert time.monotonic() - started < 50, "unit 0 waited for its own worker's next unit"
    pids = {int(name.split("-")[1]): int(name.split("-")[2]) for name in os.listdir(done)}
    assert sorted(pids) == [0, 1, 2, 3]
    assert pids[0] not in {pids[1], pids[2], pids[3]}


def test_other_runners_spread_with_a_reshuffle_and_need_no_claims():
    assert local_workers(PipelineOptions(["--runner=DataflowRunner"])) == 0
    for args in (["--runner=PortableRunner"], ["--runner=FnApiRunner", "--direct_num_workers=1"]):
        pipeline = beam.Pipeline(options=PipelineOptions(args))
        _ = pipeline | "SpreadUnits" >> SpreadUnits(_refs([1, 1]))
        labels = {t.full_label for t in _applied(pipeline)}
        assert "SpreadUnits/Spread" in labels and "SpreadUnits/Claim" not in labels, args
    pipeline = beam.Pipeline(options=PipelineOptions(["--direct_num_workers=2"]))
    with pytest.raises(ValueError, match="claims folder"):
        _ = pipeline | SpreadUnits(_refs([1, 1]))


def _applied(pipeline):
    stack = [pipeline._root_transform()]
    while stack:
        t = stack.pop()
        yield t
        stack.extend(t.parts)


def test_each_pipeline_run_claims_in_a_new_folder_removed_after_it(tmp_path, monkeypatch):
    """A retry is a new run: fresh claims, none lost; the folder goes when the run ends,
    whether it finished or failed."""
    seen: list[str] = []

    class Probe(beam.PTransform):
        def __init__(self, refs, ctx, claims):
            super().__init__()
            self._fail = ctx.fail
            seen.append(claims)
            assert os.listdir(claims) == []

        def expand(self, pbegin):
            return pbegin | beam.Create([1]) | beam.Map(_fail_if, self._fail)

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(R, "BuildCorpus", Probe)
    out = str(tmp_path / "out")
    R.run_pipeline([], SimpleNamespace(output=out, fail=False), [], log=lambda m: None)
    with pytest.raises(BuildFailed, match="attempt failed"):
        R.run_pipeline([], SimpleNamespace(output=out, fail=True), [], log=lambda m: None)
    assert len(set(seen)) == 2 and all(s.startswith(str(temp)) for s in seen)
    assert os.listdir(temp) == []


def _fail_if(x, fail):
    if fail:
        raise RuntimeError("attempt failed")
    return x


@pytest.fixture()
def planned_refs(tmp_path, monkeypatch):
    """The refs the launcher plans for 8 phantom cases (the pipeline itself is not run)."""
    root = tmp_path / "in"
    write_sample(root, n_patients=8)

    class Planned(Exception):
        pass

    got = {}

    def planned(refs, *_, **__):
        got["refs"] = list(refs)
        raise Planned

    monkeypatch.setattr(R, "run_pipeline", planned)
    monkeypatch.setattr(B, "run_in_process", planned)
    with pytest.raises(Planned):
        B.build("sample", str(tmp_path / "out"), input_dir=str(root), retries=0, log=lambda m: None)
    return root, got["refs"]


def test_the_launcher_gives_each_unit_the_bytes_of_its_input_files(planned_refs):
    from pipeline.engine.units import read_plan
    from pipeline.kinds.registry import get_kind

    root, refs = planned_refs
    kind = get_kind("slices")
    out = root.parent / "out"
    for ref in refs:
        files = {os.path.join(d, f) for pc in read_plan(str(out), ref, kind)
                 for rel in kind.case_paths(pc.case)
                 for d, _, fs in os.walk(root / rel) for f in fs} | {
            str(root / rel) for pc in read_plan(str(out), ref, kind)
            for rel in kind.case_paths(pc.case) if (root / rel).is_file()}
        assert ref.input_bytes == sum(os.path.getsize(f) for f in files) > 0, ref.unit_id
