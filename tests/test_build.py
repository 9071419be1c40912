"""The sample built end to end: twice (in memory, and 2 worker processes), compared
byte for byte, read back with the real Hugging Face ``datasets`` client, and
checked against the phantoms' ground truth."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core import keys
from pipeline.core.slices import display_slice
from pipeline.inputs.phantoms import make_phantom, situs_inversus
from pipeline.inputs.sample import USER_LABELS, form_of, write_sample
from pipeline.launch.build import build
from pipeline.qa.learned import corpus_result

N_PATIENTS = 10


def _all_files(root: Path) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            rel = p.relative_to(root).as_posix()
            if rel.startswith(".radvqa/"):
                continue  # build state: receipts, sample input, wall-clock times
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def sample_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, n_patients=N_PATIENTS)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_input):
    out = tmp_path_factory.mktemp("corpus-inmem")
    result = build("sample", str(out), input_dir=str(sample_input),
                   beam_args=["--direct_running_mode=in_memory"], log=lambda m: None)
    assert result.exit_code == 0
    return out, result


@pytest.fixture(scope="module")
def corpus_2_workers(tmp_path_factory, sample_input):
    out = tmp_path_factory.mktemp("corpus-mp")
    result = build("sample", str(out), input_dir=str(sample_input),
                   beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                   log=lambda m: None)
    return out, result


@pytest.fixture(scope="module")
def corpus_warm_workers(tmp_path_factory, sample_input):
    out = tmp_path_factory.mktemp("corpus-warm")
    result = build("sample", str(out), input_dir=str(sample_input), workers=2, log=lambda m: None)
    return out, result


def test_in_memory_and_two_worker_builds_are_byte_identical(corpus, corpus_2_workers):
    a, b = _all_files(corpus[0]), _all_files(corpus_2_workers[0])
    assert set(a) == set(b)
    assert a == b
    assert len([p for p in a if p.endswith(".parquet")]) >= 9


def test_warm_workers_build_is_byte_identical(corpus, corpus_warm_workers):
    """``--workers 2``: Beam's FnApiRunner with an EXTERNAL environment served by workers
    forked from a preloaded forkserver — the same bytes as the other local modes."""
    a, b = _all_files(corpus[0]), _all_files(corpus_warm_workers[0])
    assert a == b


def test_audit_includes_the_learned_baseline(corpus):
    """Every scored group carries the learned text-only baseline, and the CLI's reading of the
    built shards gives the manifest's numbers."""
    manifest = json.loads((corpus[0] / "manifest.json").read_text())
    assert manifest["audit"]["learned"] is True
    again = corpus_result(str(corpus[0]))
    scored = [g for g in manifest["audit"]["groups"] if g["split"] != "train"]
    assert scored and all(g["baselines"]["learned_text"] is not None for g in scored)
    for g in scored:
        key = (g["config"], g["split"], g["task"], g["question_type"])
        assert again[key]["accuracy"] == g["baselines"]["learned_text"]
        assert g["learned_text"]["scored"] == again[key]["scored"] == g["n"]


def test_learned_audit_on_a_pool_or_after_a_broken_one_gives_the_same_result(corpus, monkeypatch,
                                                                           tmp_path):
    """``--workers N`` on a large corpus fits the learned groups on a process pool; a pool
    whose process died is not a failed build: the groups are fitted in the launcher."""
    import shutil
    from concurrent.futures.process import BrokenProcessPool

    from pipeline.launch import finalise as fin

    out = tmp_path / "corpus"
    shutil.copytree(corpus[0], out)  # learned_audit writes its cache into the corpus
    manifest = json.loads((out / "manifest.json").read_text())
    merged = {f"{g['config']}{fin.SEP}{g['split']}": None for g in manifest["audit"]["groups"]}
    settings = {"learn_from": manifest["audit"]["learn_from"]}

    def run(workers):
        (out / fin.LEARNED_CACHE).unlink(missing_ok=True)
        return fin.learned_audit(str(out), manifest["files"], merged, settings, workers)

    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, *args):
            raise BrokenProcessPool("a pool process died")

    plain = run(1)
    monkeypatch.setattr(fin, "POOL_MIN_ROWS", 0)
    pooled = run(2)
    import concurrent.futures  # (imported by learned_audit when it makes a pool)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", lambda *a, **k: Broken())
    assert plain == pooled == run(2) and len(plain) > 1


def test_manifest_lists_every_file_with_its_sha256_and_counts_balance(corpus):
    out, result = corpus
    manifest = json.loads((out / "manifest.json").read_text())
    files = _all_files(out)
    listed = set(manifest["files"])
    assert listed == set(files) - {"manifest.json"}
    for rel, info in manifest["files"].items():
        assert files[rel] == info["sha256"], rel
        if rel.endswith(".parquet"):
            assert pq.ParquetFile(out / rel).metadata.num_rows == info["rows"]
    for stage, c in manifest["counts"].items():
        assert c["inputs"] == c["accepted"] + c["rejected"], stage
    assert manifest["counts"]["discover"]["inputs"] == N_PATIENTS
    assert manifest["counts"]["extract"]["accepted"] == N_PATIENTS
    assert set(manifest["tasks"]) == {"anatomy", "existence", "laterality", "spatial", "size",
                                      "counting", "grounding", "measurement", "physiology"}
    assert "wall" not in json.dumps(manifest) and "seconds" not in json.dumps(manifest)
    # a user's own label set is reported, not rejected
    assert "renal_parenchyma_left" in manifest["labels_unknown_to_pools"]


def test_loads_with_the_real_datasets_client(corpus):
    from datasets import load_dataset
    from PIL import Image

    out, result = corpus
    for config in ("qa", "images", "structures"):
        for split, info in result.manifest["splits"].items():
            if info["cases"] == 0:
                continue
            ds = load_dataset(str(out), config, split=split)
            expected = {"qa": info["qa"], "images": info["images"]}.get(config)
            if expected is not None:
                assert ds.num_rows == expected
    images = load_dataset(str(out), "images", split="train")
    row = images[0]
    assert isinstance(row["image"], Image.Image)
    assert row["image"].size == (row["width"], row["height"])
    assert row["window"]["name"] in ("soft_tissue",) or row["window"]["name"].startswith("mr_p")


def test_patients_never_straddle_splits(corpus):
    out, _ = corpus
    table = pq.read_table(out / "images", columns=["patient_key", "split"]).to_pylist()
    splits = {}
    for r in table:
        splits.setdefault(r["patient_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "validation", "test"}


def _expected_masks(index: int) -> dict[str, np.ndarray]:
    """Ground-truth masks as each case stores them, under the names it uses."""
    p = make_phantom(index)
    if form_of(index) != "multilabel":
        return p.masks
    masks = {USER_LABELS[n]: m for n, m in p.masks.items() if n in USER_LABELS}
    if "liver_tumor" in p.masks:  # the label map gives the lesion precedence over its organ
        masks["liver"] = masks["liver"] & ~p.masks["liver_tumor"]
    return masks


def test_boxes_are_exact_on_the_phantoms(corpus):
    out, _ = corpus
    key = keys.DEFAULT_PSEUDONYM_KEY
    truth = {keys.pseudonym(key, "case", f"s{i + 1:04d}"): _expected_masks(i) for i in range(N_PATIENTS)}
    rows = pq.read_table(out / "images", columns=["case_key", "plane", "slice_index", "boxes"]).to_pylist()
    checked = 0
    for row in rows:
        masks = truth[row["case_key"]]
        present = set()
        for label, m in masks.items():
            if display_slice(m, row["plane"], row["slice_index"]).any():
                present.add(label)
        assert {b["label"] for b in row["boxes"]} == present
        for b in row["boxes"]:
            mask = display_slice(masks[b["label"]], row["plane"], row["slice_index"])
            ys, xs = np.nonzero(mask)
            assert (b["x_min"], b["y_min"], b["x_max"], b["y_max"]) == (
                xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), (b["label"], row["plane"])
            assert b["area_px"] == xs.size
            checked += 1
    assert checked > 500


def test_laterality_follows_the_anatomy_not_the_names(corpus):
    """Sides come from patient coordinates: mirrored phantoms (situs inversus) have the
    liver on the left and the spleen on the right, under the same names."""
    out, _ = corpus
    key = keys.DEFAULT_PSEUDONYM_KEY
    mirrored = {keys.pseudonym(key, "case", f"s{i + 1:04d}"): situs_inversus(i) for i in range(N_PATIENTS)}
    rows = pq.read_table(out / "structures", columns=["case_key", "label", "laterality"]).to_pylist()
    side = {(r["case_key"], r["label"]): r["laterality"] for r in rows}
    checked = 0
    for case, flip in mirrored.items():
        expect = {"liver": "right", "spleen": "left", "inferior_vena_cava": "right",
                  "kidney_left": "left", "kidney_right": "right", "vertebrae_L1": "midline"}
        if flip:
            expect |= {"liver": "left", "spleen": "right", "inferior_vena_cava": "left"}
        for label, want in expect.items():
            if (case, label) in side:
                assert side[(case, label)] == want, (case, label, flip)
                checked += 1
    assert checked >= 40 and any(mirrored.values())
    # The user's renamed kidneys get their side from coordinates, not from a name.
    assert {s for (c, lab), s in side.items() if lab == "renal_parenchyma_left"} == {"left"}


def test_no_identifying_text_reaches_the_corpus(corpus):
    out, _ = corpus
    needles = [b"PAT-00", b"Phantom^", b"Phantom General", b"ACC0000", b"s0001", b"s0010", b"19700101"]
    for rel in _all_files(out):
        if rel.startswith("dead_letters/"):
            continue
        data = (out / rel).read_bytes()
        if rel.endswith(".parquet"):
            table = pq.read_table(out / rel)
            data += json.dumps(table.drop_columns(
                [c for c in ("image",) if c in table.column_names]).to_pylist(), default=str).encode()
            data += str(pq.ParquetFile(out / rel).metadata.metadata).encode()
        for needle in needles:
            assert needle not in data, (rel, needle)


def test_questions_are_balanced_and_mc_positions_spread(corpus):
    out, _ = corpus
    qa = pq.read_table(out / "qa").to_pylist()
    closed = [r["answer"] for r in qa if r["question_type"] == "closed"]
    assert 0.4 < closed.count("yes") / len(closed) < 0.6
    mc = [r for r in qa if r["question_type"] == "multiple_choice"]
    positions = [r["answer"] for r in mc]
    assert set(positions) == set("ABCD")
    for r in mc:
        assert r["options"][ord(r["answer"]) - 65] == r["answer_text"]
        assert len(set(r["options"])) == (2 if r["task"] == "size" else 4)


def test_spatial_and_quantitative_questions_survive_balancing(corpus):
    """RadVUQA's spatial (laterality, relative position) and quantitative (size, counts,
    extents) questions stay at least a tenth of the corpus each after balancing dropped
    the ones whose answer the text alone would give; and the test split holds them too."""
    out, _ = corpus
    qa = pq.read_table(out / "qa", columns=["task", "split"]).to_pylist()
    spatial = [r for r in qa if r["task"] in ("laterality", "spatial")]
    quantitative = [r for r in qa if r["task"] in ("size", "counting", "measurement")]
    assert len(spatial) >= 0.1 * len(qa) and len(quantitative) >= 0.1 * len(qa)
    assert {r["task"] for r in spatial + quantitative if r["split"] == "test"} >= {
        "laterality", "spatial", "size", "measurement"}


def test_sample_build_exits_3_when_too_many_cases_are_rejected(tmp_path, sample_input):
    import shutil

    inp = tmp_path / "in"
    shutil.copytree(sample_input, inp)
    (inp / "s0002" / "ct.nii.gz").write_bytes(b"not a volume")
    result = build("sample", str(tmp_path / "out"), input_dir=str(inp), max_reject_fraction=0.05,
                   log=lambda m: None)
    assert result.exit_code == 3
    letters = [json.loads(line) for line in (tmp_path / "out" / "dead_letters" / "dead_letters.jsonl").open()]
    assert [(d["source"], d["stage"], d["reason"]) for d in letters] == [
        ("s0002/ct.nii.gz", "read", "volume.unreadable")]
    counts = result.manifest["counts"]
    assert counts["read"]["rejected_by_reason"] == {"volume.unreadable": 1}


def test_radvqa_report_rebuilds_the_report_of_the_build(corpus):
    """`radvqa report DIR` gives the very bytes the build wrote and listed in the manifest."""
    import hashlib as _h

    from pipeline.cli import main

    out, result = corpus
    listed = result.manifest["files"]["report/index.html"]["sha256"]
    assert _h.sha256((out / "report" / "index.html").read_bytes()).hexdigest() == listed
    assert main(["report", str(out)]) == 0
    assert _h.sha256((out / "report" / "index.html").read_bytes()).hexdigest() == listed
