"""Units dealt to local workers by their work: the launcher's input bytes, else case counts."""

from __future__ import annotations

import os

import pytest

from pipeline.engine.units import UnitRef, balance
from pipeline.inputs.sample import write_sample
from pipeline.launch import build as B
from pipeline.launch import runner as R


def _refs(cases, sizes=None, modes=None):
    n = len(cases)
    return [UnitRef("train", i, n, c, mode=(modes or ["build"] * n)[i],
                    input_bytes=(sizes or [0] * n)[i]) for i, c in enumerate(cases)]


def test_units_are_dealt_by_input_bytes_when_every_unit_knows_them():
    # Equal case counts, one unit holding most of the bytes (a whole-body scan among heads):
    # by bytes it gets a worker to itself; by case count it would share one.
    refs = _refs([2, 2, 2, 2, 2], sizes=[900, 100, 100, 100, 100])
    bins = balance(refs, 2)
    assert [[r.index for r in b] for b in bins] == [[0], [1, 2, 3, 4]]


def test_case_counts_decide_when_a_unit_has_no_size():
    refs = _refs([1, 1, 2, 2], sizes=[900, 100, 100, 0])
    assert [[r.index for r in b] for b in balance(refs, 2)] == [[2, 0], [3, 1]]


def test_done_units_count_a_tenth_and_dealing_is_deterministic():
    refs = _refs([1, 1, 1], sizes=[100, 100, 100], modes=["done", "build", "build"])
    assert [[r.index for r in b] for b in balance(refs, 2)] == [[1, 0], [2]]
    assert balance(refs, 2) == balance(list(refs), 2)
    assert balance(refs, 1) == [[refs[1], refs[2], refs[0]]]


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
