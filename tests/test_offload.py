"""Launcher and worker work moved off the RadImageNet build's critical path, with the same
bytes: the report's statistics made while a pool process fits the learned baseline's
largest group (report.prepare_report, launch/finalise._Meanwhile), and a unit's image
buffer reused from unit to unit (kinds/tree_tables.read_buffer)."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from pipeline.config.resources import resource_dir
from pipeline.inputs.sample_tree import write_tree
from pipeline.launch.build import build
from pipeline.qa import learned
from pipeline.qa.label_pools import load_label_pools

# ------------------------------------------------------- the report scanned while the pool fits


def test_report_prepared_ahead_gives_the_same_page(tmp_path):
    """``prepare_report`` (run by the launcher while a pool process fits the learned
    baseline's largest group, from the manifest without its audit) then ``write_report``
    with it: the same page as ``write_report`` alone, the shards scanned once."""
    from pipeline import report as R
    from pipeline.schema.layout import REPORT, REPORT_CACHE_DIR

    out, tree = tmp_path / "c", tmp_path / "tree"
    write_tree(tree, 120, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
    build("radimagenet-vqa", str(out), input_dir=str(tree), log=lambda m: None)
    page = (out / REPORT).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    early = dict(manifest, audit=None, files={k: v for k, v in manifest["files"].items()
                                               if k not in (REPORT, "README.md")})
    import shutil
    shutil.rmtree(out / REPORT_CACHE_DIR)
    prepared = R.prepare_report(str(out), early)
    scans = Counter()
    real = R._scan
    R._scan = lambda *a: scans.update(["scan"]) or real(*a)
    try:
        R.write_report(str(out), prepared=prepared)
        assert (out / REPORT).read_bytes() == page and not scans
        # a prepared scan of other shards is not used
        other = R.Prepared(prepared.kind, {"instruct": []}, prepared.stats, prepared.pool)
        R.write_report(str(out), prepared=other)
        assert (out / REPORT).read_bytes() == page and scans["scan"] == 1
    finally:
        R._scan = real


def test_meanwhile_runs_once_before_the_first_wait_and_never_breaks_the_fit():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.launch.finalise import _Meanwhile

    rows = [{"qa_id": f"{s}-{i}", "config": "qa", "split": s, "task": t, "question_type": "closed",
             "question": f"Is it {i % 5} {t}?", "options": [], "answer": ("yes", "no")[i % 2]}
            for t in ("a", "b", "c") for s in ("train", "test") for i in range(60)]
    ran = []
    plain = learned.learned_baseline(rows, rows)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        assert learned.learned_baseline(rows, rows, pool=_Meanwhile(pool, lambda: ran.append(1)),
                                        pool_jobs=2) == plain
        assert ran == [1]

        def broken():
            ran.append(2)
            raise RuntimeError("no report today")
        assert learned.learned_baseline(rows, rows, pool=_Meanwhile(pool, broken), pool_jobs=2) == plain
        assert ran == [1, 2]


# -------------------------------------------------- a unit's image buffer, reused between units


def test_read_buffer_is_reused_only_when_nothing_refers_to_it():
    """``kinds/tree_tables.read_buffer``: the next unit's images go into the same memory
    only once the last unit's table, views and memoryviews are gone; else a new array."""
    from pipeline.kinds import tree_tables as T

    a = T.read_buffer(1000)
    base = id(T._READ["base"])
    a[:] = 7
    busy = T.read_buffer(500)  # ``a`` is alive: never the same memory
    assert busy.base is None or id(busy.base) != base
    del a, busy
    again = T.read_buffer(800)
    assert id(again.base) == base
    held = pa.py_buffer(again)  # an Arrow column over it (the alignment table's images)
    del again
    other = T.read_buffer(800)
    assert (other.base is None or id(other.base) != base) and held.to_pybytes() == b"\x07" * 800
    del held, other
    big = T.read_buffer(len(T._READ["base"]) + 1)  # grown: a new, larger buffer
    assert big.base is T._READ["base"] and len(T._READ["base"]) > len(big)
