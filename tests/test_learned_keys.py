"""The learned baseline's samples drawn by the workers (pipeline/qa/learned_keys.py): merged on
the launcher they give the sample, and the result, the launcher draws itself; a missing,
stale or unreadable one, or equal hashes, fall back to the launcher's own drawing."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config.resources import resource_dir
from pipeline.engine import learned_samples
from pipeline.inputs.sample_tree import write_tree
from pipeline.launch.build import build
from pipeline.qa import learned, learned_keys
from pipeline.qa.label_pools import load_label_pools
from pipeline.schema.layout import LEARNED_KEYS_DIR, learned_keys_path

SPLITS = ("train", "train", "train", "validation", "test")


def _tables(n_shards=4, rows=300, seed=0):
    rng = random.Random(seed)
    out = {}
    for s in range(n_shards):
        qa_id = [f"q{s}-{i}-{rng.random():.6f}" for i in range(rows)]
        if s == 1:  # a row without an identity: never learned from (in two shards, its
            qa_id[rng.randrange(rows)] = None  # equal hashes would need the launcher's drawing)
        out[f"qa/part-{s}.parquet"] = pa.table({
            "qa_id": pa.array(qa_id, pa.string()),
            "split": [rng.choice(SPLITS) for _ in range(rows)],
            "task": [rng.choice(("anatomy", "pathology")) for _ in range(rows)],
            "question_type": [rng.choice(("closed", "open", "multiple_choice")) for _ in range(rows)],
            "question": [f"Is it {rng.choice('abcdef')}?" for _ in range(rows)],
            "options": [[] for _ in range(rows)],
            "answer": [rng.choice(("yes", "no")) for _ in range(rows)]})
    return out


def _reader(tables):
    return lambda rel, cols: tables[rel].select([c for c in cols if c in tables[rel].column_names])


def _launcher_sample(tables):
    return learned._sample_shards(_reader(tables), [("qa", rel) for rel in sorted(tables)], None)


def _worker_files(tables):
    return {rel: learned.shard_sample(t, "qa", f"sha-{rel}") for rel, t in tables.items()}


def _same(a, b):
    (kept_a, sizes_a), (kept_b, sizes_b) = a, b
    assert sizes_a == sizes_b and sorted(kept_a) == sorted(kept_b)
    for key in kept_a:
        assert np.array_equal(kept_a[key][0], kept_b[key][0])  # hashes, in sample order
        assert np.array_equal(kept_a[key][2], kept_b[key][2])  # places (shard << 32 | row)


@pytest.mark.parametrize("caps", [(10_000, 10_000), (40, 15)], ids=["uncapped", "capped"])
def test_worker_samples_merged_equal_the_launchers(monkeypatch, caps):
    monkeypatch.setattr(learned, "TRAIN_CAP", caps[0])
    monkeypatch.setattr(learned, "EVAL_CAP", caps[1])
    tables = _tables()
    files = _worker_files(tables)
    shards = [("qa", rel) for rel in sorted(tables)]

    def sampled(config, rel):
        return learned_keys.decode(files[rel], config, f"sha-{rel}")
    assert all(sampled("qa", rel) is not None for _, rel in shards)
    _same(learned._sample_shards(_reader(tables), shards, sampled), _launcher_sample(tables))
    # some shards' samples missing (a killed worker): those shards drawn here, same sample
    half = {rel: files[rel] for rel in sorted(files)[::2]}
    _same(learned._sample_shards(_reader(tables), shards, lambda c, rel: learned_keys.decode(
        half.get(rel), c, f"sha-{rel}")), _launcher_sample(tables))
    # and the learned baseline's result through learned_from_shards
    assert (learned.learned_from_shards(_reader(tables), shards, {}, sampled=sampled)
            == learned.learned_from_shards(_reader(tables), shards, {}))


def test_a_sample_of_other_bytes_or_unreadable_is_not_used():
    table = _tables(n_shards=1)["qa/part-0.parquet"]
    data = learned.shard_sample(table, "qa", "abc")
    assert learned_keys.decode(data, "qa", "abc")
    assert learned_keys.decode(data, "qa", "other") is None  # the shard was written again
    assert learned_keys.decode(data[:100], "qa", "abc") is None
    assert learned_keys.decode(b"", "qa", "abc") is None
    assert learned_keys.decode(None, "qa", "abc") is None


def test_equal_hashes_fall_back_to_the_launchers_drawing(monkeypatch):
    """Two rows of different shards with the same hash: only their qa_ids order them, which
    a worker's file does not hold — every shard is drawn on the launcher instead."""
    real = learned._hash_keys

    def colliding(ids):
        h = real(ids)
        return np.where(np.array([str(i).endswith("7") for i in ids]), np.uint64(5), h)
    monkeypatch.setattr(learned, "_hash_keys", colliding)
    tables = _tables()
    files = _worker_files(tables)
    shards = [("qa", rel) for rel in sorted(tables)]
    with pytest.raises(learned_keys.NeedIds):
        learned._sample_shards(_reader(tables), shards,
                               lambda c, rel: learned_keys.decode(files[rel], c, f"sha-{rel}"))
    assert (learned.learned_from_shards(_reader(tables), shards, {}, sampled=lambda c, rel:
                                        learned_keys.decode(files[rel], c, f"sha-{rel}"))
            == learned.learned_from_shards(_reader(tables), shards, {}))


def _corpus_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".radvqa" not in p.parts}


def test_build_with_worker_samples_missing_or_stale_gives_the_same_bytes(tmp_path, monkeypatch):
    """A tree build's workers leave one sample per instruct shard; a build that finds them
    missing (killed workers) or stale (a shard of other bytes) draws them on the launcher and
    writes the same corpus."""
    out, tree = tmp_path / "c", tmp_path / "tree"
    write_tree(tree, 400, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
    recipe = tmp_path / "r.yaml"
    text = (Path(__file__).resolve().parent.parent / "recipes" / "radimagenet-vqa.yaml").read_text()
    recipe.write_text(text.replace("images_per_shard: 10000", "images_per_shard: 100")
                      .replace("images: 1000", "images: 30"))
    build(str(recipe), str(out), input_dir=str(tree), log=lambda m: None)
    first = _corpus_files(out)
    manifest = json.loads((out / "manifest.json").read_text())
    instruct = [rel for rel in manifest["files"] if rel.startswith("instruct/")]
    samples = sorted((out / LEARNED_KEYS_DIR).rglob("*.npz"))
    assert len(instruct) > 1 and [str(p.relative_to(out)) for p in samples] == sorted(
        learned_keys_path(rel) for rel in instruct)
    # finalise again with every sample gone, then with stale ones: same bytes
    from pipeline.launch import finalise as F

    calls = Counter()
    real = learned.sample_keys

    def counting(*a, **k):
        calls["launcher"] += 1
        return real(*a, **k)
    samples[0].unlink()
    stale = tmp_path / "stale.npz"
    samples[1].rename(stale)
    (out / LEARNED_KEYS_DIR / "instruct" / "gone-00000-of-00001.npz").write_bytes(b"x")
    learned.sample_keys, saved = counting, learned.sample_keys
    try:
        shards_ = [("instruct", rel) for rel in instruct]
        sampled = learned_samples.reader(str(out), manifest["files"], set(instruct))
        assert not (out / LEARNED_KEYS_DIR / "instruct" / "gone-00000-of-00001.npz").exists()
        assert sampled("instruct", instruct[0]) is None
        stale.rename(samples[1])
        wrong = dict(manifest["files"]) | {instruct[1]: dict(manifest["files"][instruct[1]], sha256="0" * 64)}
        got = learned.learned_from_shards(F.Corpus(str(out)).read_columns, shards_, {}, sampled=
                                          learned_samples.reader(str(out), wrong, set(instruct)))
        assert calls["launcher"] == 2  # the missing and the stale one; the others merged
    finally:
        learned.sample_keys = saved
    assert got == learned.learned_from_shards(F.Corpus(str(out)).read_columns, shards_, {})
    # a fresh build whose workers' samples are all unreadable: the same corpus
    monkeypatch.setattr(learned_samples, "shard_sample", lambda *a: b"not a sample")
    build(str(recipe), str(tmp_path / "again"), input_dir=str(tree), log=lambda m: None)
    assert _corpus_files(tmp_path / "again") == first


def _decoded_equal(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) and np.array_equal(a[k][2], b[k][2])
        for k in a)


@pytest.mark.parametrize("change", ["question", "qa_id", "split", "task", "question_type",
                                    "config", "rows", "code"])
def test_a_shard_written_again_keeps_its_sample_only_while_its_key_columns_are_the_same(
        monkeypatch, change):
    """A QA shard written again (a wording edit: new bytes, the same ``qa_id``s, splits, tasks
    and question types) takes its earlier sample, restamped with the new sha256: the sample a
    fresh drawing gives.  Any change of what the sample is drawn from — a key column, the
    config, the rows, the sampling code — draws it again."""
    table = _tables(n_shards=1)["qa/part-0.parquet"]
    earlier = learned_samples.sample_bytes(table, "qa", "old")
    config = "qa"
    if change == "question":  # the wording: not a key column
        table = table.set_column(table.schema.get_field_index("question"), "question",
                                 pa.array([f"Now {q}" for q in table["question"].to_pylist()]))
    elif change == "config":
        config = "benchmark"
    elif change == "rows":
        table = table.slice(1)
    elif change == "code":
        monkeypatch.setattr(learned_keys, "_sampling_code", lambda: "other code")
    else:
        values = table[change].to_pylist()
        values[3] = {"qa_id": "q-new", "split": "test" if values[3] != "test" else "train",
                     "task": "other", "question_type": "open" if values[3] != "open" else "closed"}[change]
        table = table.set_column(table.schema.get_field_index(change), change, pa.array(values, pa.string()))
    drawn = learned_samples.sample_bytes(table, config, "new")  # no earlier sample: drawn here
    calls = []
    real = learned.sample_keys
    monkeypatch.setattr(learned, "sample_keys", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = learned_samples.sample_bytes(table, config, "new", earlier)
    assert bool(calls) == (change != "question")  # drawn again, or the earlier one restamped
    assert learned_keys.decode(got, config, "old") is None
    assert _decoded_equal(learned_keys.decode(got, config, "new"), learned_keys.decode(drawn, config, "new"))
    assert learned_keys.restamped(b"not a sample", "x", "new") is None


def test_the_key_columns_digest_is_of_their_values_alone():
    """Equal values give equal digests whatever their buffers (chunks, slices, unset bits of a
    null's validity), and each value counts."""
    table = _tables(n_shards=1)["qa/part-0.parquet"]  # (its qa_id column has a null)
    digest = learned_keys.columns_digest(table, "qa")
    rebuilt = pa.concat_tables([table.slice(0, 7), table.slice(7)])
    assert learned_keys.columns_digest(rebuilt, "qa") == digest
    assert learned_keys.columns_digest(pa.Table.from_pylist(table.to_pylist()), "qa") == digest
    assert learned_keys.columns_digest(table.slice(1), "qa") != digest
    swapped = table.set_column(0, "qa_id", pa.array(table["qa_id"].to_pylist()[::-1], pa.string()))
    assert learned_keys.columns_digest(swapped, "qa") != digest
