"""The benchmark's own measuring devices (``bench/``): what a number in ``make bench``
rests on must be checked like any other code — the isolated slices stage's stand-in for
a loaded case, and the 2-worker ratio taken over alternating rounds."""

from __future__ import annotations

import mmap
import pickle

import numpy as np
import pytest

from pipeline.core.geometry import Geometry


def _mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a file mapping (somewhere down its ``base`` chain)."""
    while a is not None:
        if isinstance(a, np.memmap) or isinstance(getattr(a, "base", None), mmap.mmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


def test_a_loaded_case_reads_back_equal_with_its_large_arrays_memory_mapped(tmp_path):
    """bench.stages.write_loaded / read_loaded: the loaded case comes back equal (values,
    dtypes, Fortran or C order, writable like load_case's own arrays), its large arrays
    mapped from their .npy files rather than copied, small ones and the rest pickled; a
    write into a read-back array never reaches the file (copy-on-write)."""
    from bench.stages import MAPPED_BYTES, read_loaded, write_loaded

    rng = np.random.default_rng(7)
    volume = np.asfortranarray(rng.normal(size=(64, 48, 40)).astype(np.float32))
    mask = rng.integers(0, 2, size=(50, 40, 40), dtype=np.uint8) > 0
    small = np.arange(12, dtype=np.int16).reshape(3, 4)
    grid = Geometry(shape=(64, 48, 40), spacing=(1.5, 1.5, 1.5), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    loaded = ({"array": volume, "grid": grid}, {"liver": mask, "tiny": small}, "sha256:ab",
              {"empty_masks": ["spleen"]})
    assert volume.nbytes >= MAPPED_BYTES and mask.nbytes >= MAPPED_BYTES > small.nbytes

    write_loaded(loaded, tmp_path, "case1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case1.0.npy", "case1.1.npy", "case1.pkl"]
    back = read_loaded(str(tmp_path), "case1")

    assert back[0]["grid"] == grid and back[2:] == loaded[2:]
    for got, want in ((back[0]["array"], volume), (back[1]["liver"], mask),
                      (back[1]["tiny"], small)):
        assert type(got) is np.ndarray and got.dtype == want.dtype
        assert got.flags.f_contiguous == want.flags.f_contiguous
        assert got.flags.writeable
        np.testing.assert_array_equal(got, want)
    assert _mapped(back[0]["array"]) and _mapped(back[1]["liver"])
    assert not _mapped(back[1]["tiny"])

    back[0]["array"][0, 0, 0] = 1234.0  # copy-on-write: the cache stays as written
    again = read_loaded(str(tmp_path), "case1")
    assert again[0]["array"][0, 0, 0] == volume[0, 0, 0]
    with open(tmp_path / "case1.pkl", "rb") as f:  # no array bytes inside the pickle
        assert len(f.read()) < MAPPED_BYTES
    with pytest.raises(pickle.UnpicklingError):  # the ids need read_loaded's unpickler
        with open(tmp_path / "case1.pkl", "rb") as f:
            pickle.load(f)


def _stage(one: float, two: float, rounds=None) -> dict:
    sec = {"plain loop": one * 0.97, "1 worker": one, "2 warm workers": two}
    res = {"items": 100, "unit": "slices", "seconds": sec, "plain_loop_cpu_s": one,
           "two_worker_bound": 2.0}
    if rounds is not None:
        res["rounds"] = rounds
    return {"beam_startup_s": {"1 worker": 0.1, "2 warm workers": 0.2}, "cases": 16,
            "units": 16, "slices": res}


def _warm_row(res: dict) -> dict:
    from bench.run import _stage_rows

    rows = _stage_rows(res, "release", 1.98, decides=True)
    return next(r for r in rows if "2 warm workers (--workers 2) / 1 worker" in r["measure"])


def test_the_two_worker_verdict_is_the_median_of_the_rounds_own_ratios():
    """With rounds, the slices stage's 2-worker ratio is the median of each round's own
    1-worker / 2-worker ratio (runs next to each other, the machine most alike), not a
    ratio of medians taken from different rounds; each round's ratio is listed."""
    rounds = [{"1 worker": 4.0, "2 warm workers": 2.6},   # 1.54x
              {"1 worker": 5.0, "2 warm workers": 2.5},   # 2.00x
              {"1 worker": 4.4, "2 warm workers": 2.4}]   # 1.83x
    # measure() stores each runner's median seconds: 4.4 / 2.5 = 1.76x, from two rounds
    row = _warm_row(_stage(4.4, 2.5, rounds))
    assert row["measured"] == "1.83x" and row["verdict"] == "PASS"
    assert "median of 3 rounds: 1.54x, 2.00x, 1.83x" in row["note"]
    row = _warm_row(_stage(4.3, 2.5, [{"1 worker": 4.0, "2 warm workers": 2.5}] * 3))
    assert row["measured"] == "1.60x" and row["verdict"] == "MISS"
    # one round (the phantoms' stages): the runners' own seconds, as before
    row = _warm_row(_stage(4.0, 2.0, [{"1 worker": 4.0, "2 warm workers": 2.0}]))
    assert row["measured"] == "2.00x" and "rounds" not in row["note"]


def test_a_totalseg_case_is_judged_on_the_median_of_its_rounds():
    """bench.totalseg.case_row: each figure is its rounds' median and the ratio the median
    of the rounds' own ratios, so one round with a slow read (the machine busy for it)
    neither lowers nor raises the verdict; with one round it is that round's figures."""
    from bench.totalseg import case_row

    def t(read, load, extract):
        return {"read": read, "load": load, "extract": extract, "shape": [4, 4, 4],
                "non_empty_masks": 2, "empty_masks": 1, "images": 9}

    rounds = [t(0.33, 0.34, 0.17), t(0.45, 0.35, 0.17), t(0.32, 0.33, 0.16)]
    row = case_row("s0001", 4, rounds, read_sitk=0.5)
    assert row["round_ratios"] == [1.545, 1.156, 1.531]
    assert row["ratio"] == 1.531  # one slow read (1.156) does not carry the case under 1.5
    assert (row["read_cpu_s"], row["load_cpu_s"], row["extract_cpu_s"]) == (0.33, 0.34, 0.17)
    assert row["load_ratio"] == pytest.approx(1.03, abs=1e-3)
    one = case_row("s0001", 4, rounds[1:2], read_sitk=0.5)
    assert one["ratio"] == 1.156 and one["read_cpu_s"] == 0.45
