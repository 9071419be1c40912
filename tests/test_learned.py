"""The learned text-only baseline (pipeline/qa/learned.py): it finds planted leaks, stays at
chance on balanced rows, is deterministic and order-free, and gates in the audit."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from pipeline.qa import learned, learned_fit
from pipeline.qa.audit import audit, merge, partial_counts
from pipeline.qa.learned import learned_baseline

POOL = ["liver", "spleen", "kidney", "aorta", "stomach", "pancreas", "gallbladder", "bladder"]
LETTERS = "ABCD"


def _mc(rng, i, split, question, answer_text, options=None):
    """A multiple-choice row whose options hold ``answer_text`` and three others at random."""
    if options is None:
        options = [answer_text] + rng.sample([p for p in POOL if p != answer_text], 3)
        rng.shuffle(options)
    return {"qa_id": f"{split}-{i:05d}", "config": "qa", "split": split, "task": "anatomy",
            "question_type": "multiple_choice", "question": question, "options": options,
            "answer": LETTERS[options.index(answer_text)]}


def _rows(make, n_train=1200, n_test=600, seed=0):
    rng = random.Random(seed)
    return ([make(rng, i, "train") for i in range(n_train)]
            + [make(rng, i, "test") for i in range(n_test)])


def _keyword_position(rng, i, split):
    # the answer's letter follows a keyword of the question
    pos = rng.randrange(4)
    word = ("first", "second", "third", "fourth")[pos]
    answer = rng.choice(POOL)
    options = [answer] + rng.sample([p for p in POOL if p != answer], 3)
    rng.shuffle(options)
    options[options.index(answer)], options[pos] = options[pos], answer
    return _mc(rng, i, split, f"Which structure is shown ({word} view)?", answer, options)


def _box_bin(rng, i, split):
    # the box's horizontal position decides the structure
    k = rng.randrange(len(POOL))
    x0 = 25 * k + rng.randrange(15)
    y0 = rng.randrange(200)
    q = f"Which structure is outlined by the box [{x0}, {y0}, {x0 + 20}, {y0 + 25}]?"
    return _mc(rng, i, split, q, POOL[k])


def _option_order(rng, i, split):
    # the answer is always the alphabetically first option, wherever it stands
    options = rng.sample(POOL, 4)
    return _mc(rng, i, split, "Which structure is shown?", min(options), options)


def _balanced(rng, i, split):
    k = rng.randrange(len(POOL))
    x0, y0 = rng.randrange(200), rng.randrange(200)
    q = f"Which structure is outlined by the box [{x0}, {y0}, {x0 + 20}, {y0 + 25}]?"
    return _mc(rng, i, split, q, POOL[k])


def _closed(leak):
    def make(rng, i, split):
        yes = rng.random() < 0.5
        side = ("left" if yes else "right") if leak else rng.choice(("left", "right"))
        return {"qa_id": f"{split}-{i:05d}", "config": "qa", "split": split, "task": "laterality",
                "question_type": "closed", "question": f"Is the {side} kidney in the image?",
                "options": [], "answer": "yes" if yes else "no"}
    return make


def _accuracy(rows):
    result = learned_baseline(rows, rows)
    (key,) = [k for k in result if k[1] == "test"]
    return result[key]


@pytest.mark.parametrize("make", [_keyword_position, _box_bin, _option_order, _closed(True)],
                         ids=["keyword-position", "box-coordinate-bin", "option-order", "yes-no-wording"])
def test_finds_planted_leaks(make):
    g = _accuracy(_rows(make))
    assert g["accuracy"] > g["chance"] + 0.3, g


@pytest.mark.parametrize("make", [_balanced, _closed(False)], ids=["multiple-choice", "yes-no"])
def test_stays_at_chance_on_balanced_rows(make):
    g = _accuracy(_rows(make, n_test=2000))
    assert abs(g["accuracy"] - g["chance"]) < 0.04, g


def test_open_questions_are_reported_against_the_prior():
    def make(rng, i, split):
        answer = "liver" if rng.random() < 0.6 else rng.choice(POOL[1:])
        return {"qa_id": f"{split}-{i}", "config": "qa", "split": split, "task": "anatomy",
                "question_type": "open", "question": "What organ is this?", "options": [],
                "answer": answer}
    g = _accuracy(_rows(make))
    assert g["reference"] == "prior"
    assert g["accuracy"] == g["chance"]  # the wording says nothing: the prior is all it has


def test_deterministic_and_order_free():
    rows = _rows(_box_bin, n_train=400, n_test=200) + _rows(_closed(True), 300, 100, seed=1)
    first = learned_baseline(rows, rows)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert learned_baseline(shuffled, shuffled) == first == learned_baseline(rows, rows)


def test_learn_from_another_config():
    rows = _rows(_box_bin, n_train=600, n_test=0)
    bench = [r | {"config": "benchmark"} for r in _rows(_box_bin, 0, 300, seed=3)]
    result = learned_baseline(rows + bench, rows + bench, {"benchmark": "qa"})
    g = result[("benchmark", "test", "anatomy", "multiple_choice")]
    assert g["train"] == 600 and g["accuracy"] > 0.6


def test_audit_gates_on_the_learned_baseline():
    rows = _rows(_box_bin)
    merged = merge([partial_counts("qa", rows)])
    plain = audit(merged)
    gated = audit(merged, learned=learned_baseline(rows, rows))
    test = [g for g in gated["groups"] if g["split"] == "test"][0]
    assert plain["verdict"] == "ok" and gated["verdict"] == "fail"
    assert test["best_baseline"] == "learned_text" and test["learned_text"]["scored"] == 600
    assert [g for g in gated["groups"] if g["split"] == "train"][0]["baselines"]["learned_text"] is None


def test_capped_sample_is_the_same_from_shards_and_rows(monkeypatch):
    """Large groups are scored on a keyed-hash sample; reading shard by shard (key columns
    first, texts of the drawn rows after) draws the same rows as the whole list."""
    monkeypatch.setattr(learned, "TRAIN_CAP", 150)
    monkeypatch.setattr(learned, "EVAL_CAP", 60)
    rows = _rows(_box_bin, n_train=400, n_test=200)
    tables = {f"qa/part-{i}": pa.Table.from_pylist([{k: v for k, v in r.items() if k != "config"}
                                                    for r in rows[i::3]]) for i in range(3)}
    result = learned.learned_from_shards(lambda rel, cols: tables[rel].select(
        [c for c in cols if c in tables[rel].column_names]), [("qa", rel) for rel in tables], {})
    g = result[("qa", "test", "anatomy", "multiple_choice")]
    assert (g["n"], g["scored"], g["train"]) == (200, 60, 150)
    assert result == learned_baseline(rows, rows)


def test_cached_groups_are_not_fitted_again(monkeypatch):
    """``cache``/``store``: an unchanged group's result comes from the last call's store (no
    fit, same result through JSON); a group whose rows changed is fitted again."""
    import json

    rows = _rows(_box_bin, n_train=300, n_test=100) + _rows(_closed(True), 200, 80, seed=1)
    store: dict = {}
    first = learned_baseline(rows, rows, cache={}, store=store)
    assert first == learned_baseline(rows, rows) and len(store) == 2
    cache = json.loads(json.dumps(store))  # as the launcher keeps it in .radvqa/
    fitted = []
    real = learned_fit._fit
    monkeypatch.setattr(learned_fit, "_fit", lambda x, y: fitted.append(1) or real(x, y))
    again: dict = {}
    assert learned_baseline(rows, rows, cache=cache, store=again) == first and not fitted
    assert again == cache
    edited = [r | {"question": r["question"].replace("Which", "What")} if r["question_type"]
              == "multiple_choice" else r for r in rows]
    assert learned_baseline(edited, edited, cache=cache, store={}) == learned_baseline(edited, edited)
    assert len(fitted) == 3  # the edited group with the cache; both groups without it


def test_groups_fitted_by_a_process_pool_give_the_same_result():
    """``pool``: the launcher's pool (``--workers N`` on a large corpus) fits the largest groups
    while the launcher fits the others; each group's fit is its own, so the result and the
    cache entries are the same."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rows = (_rows(_box_bin, n_train=300, n_test=100) + _rows(_closed(True), 200, 80, seed=1)
            + _rows(_keyword_position, 200, 80, seed=2))
    plain_store: dict = {}
    plain = learned_baseline(rows, rows, cache={}, store=plain_store)
    pooled_store: dict = {}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pooled = learned_baseline(rows, rows, cache={}, store=pooled_store, pool=pool)
    assert pooled == plain and list(pooled) == list(plain)
    assert pooled_store == plain_store and list(pooled_store) == list(plain_store)


def test_rows_repeated_in_a_group_give_the_matrix_built_row_by_row():
    """A distinct feature row is built once and stands for its repeats: the matrix of the
    distinct rows, each row read through ``index``, equals the one built row by row (the fit
    sees the same numbers)."""
    from pipeline.qa.text_features import Pairs, Scales, pair_features

    rows = _rows(_keyword_position, n_train=200, n_test=0)
    scales = Scales(r["question"] for r in rows)
    x = learned_fit._pairs(rows, Pairs(scales))
    assert len(x.unique) < len(x)
    vocab = learned_fit._Vocabulary(x)
    dicts = [x.unique[i] for i in x.index]
    plain = [sorted((vocab.index[k], v) for k, v in d.items() if k in vocab.index) for d in dicts]
    got = vocab.matrix(x)
    assert got.shape == (len(x.unique), len(vocab.index))
    assert (got.rows[1:] >= got.rows[:-1]).all()  # by row, then by column
    by_row = [[] for _ in range(got.shape[0])]
    for r, c, v in zip(got.rows.tolist(), got.indices.tolist(), got.data.tolist()):
        by_row[r].append((c, v))
    assert [by_row[i] for i in x.index] == plain
    assert all(d == pair_features(scales.features(r["question"]), r["options"], j)
               for d, (r, j) in zip(dicts, [(r, j) for r in rows for j in range(len(r["options"]))]))


def test_cache_digest_names_the_model_version(monkeypatch):
    """A group's cache digest covers the model's version (pipeline/qa/logistic.py): a cached
    fit of another model (or of scikit-learn's, before) is never taken for this one's."""
    from pipeline.qa import logistic

    rows = _rows(_box_bin, n_train=50, n_test=20)
    source = ("qa", "anatomy", "multiple_choice")
    tests = {("qa", "test", "anatomy", "multiple_choice"): (20, rows[50:])}
    before = learned.group_digest(source, rows[:50], tests)
    try:
        monkeypatch.setattr(logistic, "VERSION", logistic.VERSION + "-other")
        learned._code_digest.cache_clear()
        assert learned.group_digest(source, rows[:50], tests) != before
    finally:
        monkeypatch.undo()
        learned._code_digest.cache_clear()
    assert learned.group_digest(source, rows[:50], tests) == before


def test_shards_with_a_cache_fit_only_the_groups_whose_rows_changed(monkeypatch):
    """``learned_from_shards`` with ``cache``/``store`` (the launcher's way, qa/learned_groups.py):
    the same result as without; a second call taking the first's store fits nothing; an edit of
    one group's questions fits that group only, with the result of a fresh call; a group whose
    learned-from config is another (the benchmark's) follows its train rows."""
    import json

    rows = (_rows(_box_bin, n_train=300, n_test=100) + _rows(_closed(True), 200, 80, seed=1))
    bench = [r | {"config": "benchmark", "qa_id": "b" + r["qa_id"]} for r in rows if r["split"] == "test"]

    def shards(rows):
        out = {}
        for config in ("qa", "benchmark"):
            mine = [{k: v for k, v in r.items() if k != "config"} for r in rows if r["config"] == config]
            for i in range(2):
                out[(config, f"{config}/part-{i}")] = pa.Table.from_pylist(mine[i::2])
        return out

    def run(rows, **kw):
        tables = shards(rows)
        by_rel = {rel: t for (_, rel), t in tables.items()}
        return learned.learned_from_shards(lambda rel, cols: by_rel[rel].select(
            [c for c in cols if c in by_rel[rel].column_names]), list(tables), {"benchmark": "qa"}, **kw)

    plain = run(rows + bench)
    store: dict = {}
    assert run(rows + bench, cache={}, store=store) == plain and len(store) == 2
    cache = json.loads(json.dumps(store))
    fitted = []
    real = learned_fit._fit
    monkeypatch.setattr(learned_fit, "_fit", lambda x, y: fitted.append(1) or real(x, y))
    again: dict = {}
    assert run(rows + bench, cache=cache, store=again) == plain and not fitted and again == cache
    edited = [r | {"question": r["question"].replace("Is the", "Can you see the")}
              if r["question_type"] == "closed" else r for r in rows + bench]
    assert run(edited, cache=cache, store={}) == run(edited)
    assert len(fitted) == 3  # the closed group with the cache; both groups without it


def test_group_digest_is_a_function_of_the_values_alone():
    """A group's cache digest (qa/learned_groups.py) hashes its rows' values: the groups are
    slices of one take, and a slice's Arrow IPC stream also depends on where it lies in its
    buffers (at offset 0 it carries the parent's whole text) — the same rows sliced, chunked
    or built afresh give one digest; a changed value, a null for an empty text or list, or
    one option moved into the next row, gives another."""
    from pipeline.qa.learned_groups import _digest

    rows = [{"question": "Is the liver shown?", "options": [], "answer": "yes"},
            {"question": "Which organ?", "options": ["liver", "spleen"], "answer": "A"},
            {"question": "", "options": None, "answer": None},
            {"question": "Which side?", "options": ["left", "right"], "answer": "B"}]
    schema = pa.schema([("question", pa.string()), ("options", pa.list_(pa.string())),
                        ("answer", pa.string())])
    fresh = pa.Table.from_pylist(rows, schema=schema)
    twice = pa.Table.from_pylist(rows + rows, schema=schema)
    chunked = pa.concat_tables([fresh.slice(0, 1), fresh.slice(1, 2), fresh.slice(3)])
    digest = _digest(fresh)
    assert _digest(twice.slice(0, 4)) == _digest(twice.slice(4, 4)) == _digest(chunked) == digest
    changed = [rows[:2] + [rows[2] | {"question": None}] + rows[3:],
               rows[:2] + [rows[2] | {"options": []}] + rows[3:],
               rows[:1] + [rows[1] | {"options": ["liver"]}, rows[2] | {"options": ["spleen"]}] + rows[3:],
               rows[:3] + [rows[3] | {"question": "Which side ?"}]]
    digests = {_digest(pa.Table.from_pylist(r, schema=schema)) for r in changed}
    assert len(digests) == len(changed) and digest not in digests
