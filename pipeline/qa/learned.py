"""A learned text-only baseline: a model that reads the question and its options, never the
image, trained on ``train`` and scored on every other split, per config, task and question type.

The heuristic baselines of :mod:`pipeline.qa.audit` were written alongside the generators; this
one was not told what to look for.  Per group (config, task, question type) it learns from the
train rows of that group (of the config named in ``learn_from`` — the benchmark learns from
``instruct``) and answers each question of the group's other splits.

Features (:mod:`pipeline.qa.text_features`; named, a group's columns are the features its train
rows have, in sorted order):

* the question's words and word bigrams; its numbers by their position among the numbers, as
  scaled values and as quantile bins (``num2_bin7``); a quoted box's width, height, centre
  and area, binned — so a box's position and size are visible to the model;
* multiple choice: the option's text and words, its position, the rank of its text and
  length among the options, the option sequence crossed with the position, and every
  question feature crossed with the option's text and with its position.  Each (question,
  option) pair is scored by one binary logistic regression and the answer is the
  best-scoring option (an exact tie shares the credit), so option-text priors, position
  and option-order patterns and "this box → this structure" are learnable;
* closed (yes/no) and open questions: a logistic regression over the question features
  (multinomial — softmax — for more than two answers), its classes the train answers (the
  :data:`TOP_ANSWERS` most frequent; a rarer answer is never predicted).  Open questions are reported against the answer prior (the
  most frequent train answer of the group).

What it cannot see: the image; relations that need a combination of features it does not
form (e.g. two numbers compared with each other, other than a box's width, height, centre
and area); knowledge that no train question shows.

Determinism: rows are sorted by a keyed hash of ``qa_id`` (then ``qa_id``) before anything
else, which also draws the subsample: at most :data:`TRAIN_CAP` train questions and
:data:`EVAL_CAP` scored questions per group (every question of the built-in samples).  The
model is :mod:`pipeline.qa.logistic`'s (numpy only: L2-regularised, ``C`` = :data:`C`, a
fixed L-BFGS of at most ``logistic.MAX_ITER`` iterations, every sum in a fixed order and its
own ``exp`` and ``log``), so the result is the same floats for the same rows in any order,
on any machine.  The launcher merges the shards' samples their workers drew
(:mod:`pipeline.qa.learned_keys`; else reads a shard's key columns), then reads the texts
of the sampled rows (:func:`learned_from_shards`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow.parquet as pq

from pipeline.core import keys
from pipeline.core.collector import collector_paused
from pipeline.qa import learned_fit, learned_groups, learned_keys, logistic, text_features
from pipeline.qa.learned_fit import TOP_ANSWERS, C, _letter, fit_group
from pipeline.schema import kernels, pyarrays

TRAIN_CAP = 30_000
EVAL_CAP = 20_000
NAME = "learned_text"

# ------------------------------------------------------------------------------ rows


def _order_key(row: Mapping) -> tuple[str, str]:
    qa_id = str(row.get("qa_id") or "\x1f".join(
        [str(row.get("question")), *map(str, row.get("options") or []), str(row.get("answer"))]))
    return hashlib.blake2b(qa_id.encode("utf-8"), digest_size=8, person=_PERSON).hexdigest(), qa_id


def _sample(rows: list[Mapping], cap: int) -> list[Mapping]:
    """The rows in keyed-hash order, at most ``cap`` of them (the same ones in any input order)."""
    ordered = sorted(rows, key=_order_key)
    return ordered[:cap]


# ------------------------------------------------------------------------------- API


def learned_baseline(train_rows: Iterable[Mapping], eval_rows: Iterable[Mapping],
                     learn_from: Mapping[str, str] | None = None, *,
                     cache: Mapping | None = None, store: dict | None = None,
                     pool=None, pool_jobs: int = 1) -> dict:
    """Accuracy of the learned text-only baseline per group.

    Parameters
    ----------
    train_rows, eval_rows
        Dicts with ``split``, ``config``, ``task``, ``question_type``, ``question``,
        ``options`` (list; empty for closed and open questions), ``answer`` (a letter for
        multiple choice, ``yes``/``no``, or text) and optionally ``qa_id``.  Only the
        ``train`` rows of ``train_rows`` are learned from; rows of ``eval_rows`` on ``train``
        are skipped.  The two may be the same rows.
    learn_from
        Config -> the config whose train rows it learns from (default: itself).
    cache, store
        Earlier results by :func:`group_digest` (same train and scored rows, code and library
        versions): such a group is taken from ``cache``, not fitted again.  Every group's
        entry of this call goes into ``store`` (the next call's ``cache``).
    pool, pool_jobs
        An executor (a process pool) and how many of the largest groups it fits while this
        process fits the others: the groups side by side (each group's fit is its own, so
        the results are the same).

    Returns
    -------
    dict
        ``(config, split, task, question_type)`` -> ``{n, scored, correct, accuracy, chance,
        reference}``: ``n`` questions in the group, ``scored`` of them answered (the capped
        subsample), ``correct`` the credit (ties share it), ``accuracy`` = correct / scored,
        ``chance`` the mean 1 / options (multiple choice), 1/2 (closed) or the train answer
        prior's accuracy on the scored rows (open; ``reference`` says which).
    """
    learn_from = dict(learn_from or {})
    train: dict[tuple, list] = {}
    for r in train_rows:
        if r["split"] == "train":
            train.setdefault((r["config"], r["task"], r["question_type"]), []).append(r)
    groups: dict[tuple, list] = {}
    for r in eval_rows:
        if r["split"] != "train":
            groups.setdefault((r["config"], r["split"], r["task"], r["question_type"]), []).append(r)
    by_source: dict[tuple, list[tuple]] = {}
    for key in sorted(groups):
        config, split, task, qtype = key
        by_source.setdefault((learn_from.get(config, config), task, qtype), []).append(key)
    out: dict[tuple, dict] = {}
    candidates, digests = [], {}
    for source in sorted(by_source):
        rows = _sample(train.get(source, []), TRAIN_CAP)
        if source[2] == "multiple_choice":
            rows = [r for r in rows if r["answer"] in {_letter(j) for j in range(len(r["options"] or []))}]
        tests = {key: (len(groups[key]), _sample(groups[key], EVAL_CAP)) for key in by_source[source]}
        candidates.append((source, rows, tests))
    # the largest groups to the pool, the others here meanwhile; results by key.  Each
    # group's digest (its cache entry) is taken just before it is fitted or submitted: the
    # pool's groups start before the other groups' digests are made
    candidates.sort(key=lambda job: -sum(len(r["options"] or []) or 1 for r in job[1]))
    jobs, remote = [], []
    for job in candidates:
        source = job[0]
        digest = digests[source] = (group_digest(*job)
                                    if cache is not None or store is not None else None)
        hit = (cache or {}).get(digest)
        if hit is not None:
            out.update((tuple(k), dict(v)) for k, v in hit)
        elif pool and len(remote) < pool_jobs and len(candidates) > 1:
            remote.append(pool.submit(fit_group, job))
        else:
            jobs.append(job)
    for job in jobs:
        out.update(fit_group(job))
    for future in remote:
        out.update(future.result())
    out = {key: out[key] for source in sorted(by_source) for key in by_source[source]}
    if store is not None:
        for source in sorted(by_source):
            store[digests[source]] = [[list(key), dict(out[key])] for key in by_source[source]]
    return out


def group_digest(source: tuple, train: list[Mapping], tests: Mapping[tuple, tuple[int, list]]) -> str:
    """What decides one learned group's results: this code and the libraries that fit it
    (:func:`_code_digest`), the group, its train rows as learned from and, per scored group,
    its size and scored rows (each row's question, options and answer, in sample order)."""
    h = hashlib.sha256(_code_digest().encode())
    parts = [list(source), [[r["question"], list(r["options"] or []), r["answer"]] for r in train]]
    for key in sorted(tests):
        n, rows = tests[key]
        parts.append([list(key), n, [[r["question"], list(r["options"] or []), r["answer"]] for r in rows]])
    h.update(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return h.hexdigest()


@functools.cache
def _code_digest() -> str:
    """This module's, the models' and the text features' source, the caps, the model's
    version and settings (:mod:`pipeline.qa.logistic`), numpy's version."""
    return keys.source_digest(
        (__file__, learned_fit.__file__, logistic.__file__, text_features.__file__), dists=("numpy",),
        extra=(repr((TRAIN_CAP, EVAL_CAP, TOP_ANSWERS, C, logistic.VERSION, logistic.MAX_ITER,
                     logistic.TOL, logistic.MEMORY)),))


def rows_from_table(config: str, table) -> list[dict]:
    """QA rows of an Arrow table (``options`` or ``choices`` column) as :func:`learned_baseline`
    takes them."""
    opt = "choices" if "choices" in table.column_names else "options"
    cols = {c: table[c].to_pylist() for c in ("qa_id", "split", "task", "question_type", "question",
                                              opt, "answer") if c in table.column_names}
    ids = cols.get("qa_id", [None] * table.num_rows)  # once: per row it made this quadratic
    return [{"config": config, "qa_id": qa_id, "split": split, "task": task, "question_type": qtype,
             "question": question or "", "options": list(options or []), "answer": answer or ""}
            for qa_id, split, task, qtype, question, options, answer in zip(
                ids, cols["split"], cols["task"], cols["question_type"], cols["question"], cols[opt],
                cols["answer"])]


#: Columns a QA shard is read with (text only, never an image).
COLUMNS = ("qa_id", "split", "task", "question_type", "question", "options", "choices", "answer")
_META = ("qa_id", "split", "task", "question_type")


_PERSON = b"radvqa-learned"


def _hash_keys(ids: list) -> np.ndarray:
    """:func:`_order_key`'s keyed hash of each ``qa_id`` as big-endian integers: they sort as
    its hex digests do."""
    empty = hashlib.blake2b(digest_size=8, person=_PERSON)

    def one(q: str) -> bytes:  # a copy of the keyed empty hash: 0.6x the CPU of a new one
        h = empty.copy()
        h.update(q.encode("utf-8"))
        return h.digest()
    return np.frombuffer(b"".join(map(one, ids)), dtype=">u8").astype(np.uint64)


def _nsmallest(hashes: np.ndarray, ids: np.ndarray, cap: int, *carried: np.ndarray) -> tuple:
    """The ``cap`` smallest ``(hash, qa_id)``, in that order (``heapq.nsmallest`` of
    :func:`_order_key`; equal hashes, never seen in practice, sorted by their ``qa_id``);
    each of ``carried`` (one value per row) taken along in the same order."""
    order = np.argsort(hashes, kind="stable")
    hashes, ids, carried = hashes[order], ids[order], [c[order] for c in carried]
    if len(hashes) > 1 and bool(np.any(hashes[1:] == hashes[:-1])):
        if any(i is None for i in ids):  # rows of a worker's sample (learned_keys): no qa_id
            raise learned_keys.NeedIds()
        order = np.asarray(sorted(range(len(ids)), key=lambda i: (int(hashes[i]), str(ids[i]))))
        hashes, ids, carried = hashes[order], ids[order], [c[order] for c in carried]
    return (hashes[:cap], ids[:cap], *(c[:cap] for c in carried))


def sample_keys(table, config: str, kept: dict | None = None, sizes: Counter | None = None,
                shard: int | None = None) -> dict:
    """Per group ``(config, split, task, question_type)`` the ``(hashes, qa_ids)`` of the rows
    :func:`learned_baseline` would use, from a table of ``split``, ``task``,
    ``question_type`` and ``qa_id``: the first :data:`TRAIN_CAP` (train) or :data:`EVAL_CAP`
    (other splits) in keyed-hash order (:func:`_order_key`).  Pass the previous result as
    ``kept`` to add a shard's rows: memory stays bounded by the caps however large the
    corpus.  ``sizes`` counts each group's rows.  With ``shard`` (a number), each group
    also carries the rows' places, ``shard << 32 | row`` (:func:`_places`)."""
    groups = dict(kept or {})
    if not table.num_rows:
        return groups
    codes, names = [], []
    for c in ("split", "task", "question_type"):
        enc = kernels.dictionary_encode(table[c]).combine_chunks()
        codes.append(pyarrays.to_numpy(enc.indices))
        names.append(enc.dictionary.to_pylist())
    shape = tuple(len(n) for n in names)
    flat = np.ravel_multi_index(tuple(codes), shape) if all(shape) else np.zeros(table.num_rows, int)
    none = "\x1f".join(["None", "None"])  # _order_key's text of a row without a qa_id here
    ids = np.asarray([q or none for q in table["qa_id"].to_pylist()], dtype=object)
    hashes = _hash_keys(ids.tolist())
    order = np.argsort(flat, kind="stable")
    uniq, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    for code, start, n in zip(uniq.tolist(), starts.tolist(), counts.tolist()):
        split, task, qtype = (names[i][j] for i, j in enumerate(np.unravel_index(code, shape)))
        key = (config, split, task, qtype)
        rows = order[start:start + n]
        if sizes is not None:
            sizes[key] += n
        _keep(groups, key, [hashes[rows], ids[rows]] + ([] if shard is None else [(shard << 32) | rows]))
    return groups


def _keep(groups: dict, key: tuple, got: list) -> None:
    """``groups[key]``: the group's cap of its rows and ``got``'s, in hash order."""
    if key in groups:
        got = [np.concatenate([old, new]) for old, new in zip(groups[key], got)]
    groups[key] = _nsmallest(*got[:2], _cap(key[1]), *got[2:])


def shard_sample(table, config: str, sha256: str, columns: str = "") -> bytes:
    """A worker's :func:`sample_keys` of the QA shard it wrote (``table``, whose file has
    ``sha256``; ``columns``: :func:`pipeline.qa.learned_keys.columns_digest`), for the
    launcher to merge (:mod:`pipeline.qa.learned_keys`)."""
    groups = sample_keys(table, config, None, sizes := Counter(), shard=0)
    return learned_keys.encode(groups, sizes, sha256, columns)


def _places(kept: Mapping[tuple, tuple], n_shards: int) -> list[np.ndarray]:
    """Per shard, the sorted rows of :func:`sample_keys`'s sampled places (``shard << 32 | row``)."""
    places = np.sort(np.concatenate([g[2] for g in kept.values()] or [np.zeros(0, np.int64)]))
    bounds = np.searchsorted(places >> 32, np.arange(n_shards + 1))
    return [places[bounds[i]:bounds[i + 1]] & 0xFFFFFFFF for i in range(n_shards)]


def learned_from_shards(read, shards: Iterable[tuple[str, str]], learn_from: Mapping[str, str], *,
                        cache: Mapping | None = None, store: dict | None = None,
                        pool=None, pool_jobs: int = 1, sampled=None) -> dict:
    """:func:`learned_baseline` over QA shards: ``shards`` are ``(config, rel)``, ``read(rel,
    columns)`` returns an Arrow table of those of ``columns`` the shard has.  Reads the
    key columns of every shard, then the question texts of the sampled rows' shards.
    ``sampled(config, rel)``: a shard's sample as its worker drew it
    (:func:`pipeline.qa.learned_keys.decode`), or ``None`` — its key columns then read
    and hashed here.  ``cache``, ``store``, ``pool`` and ``pool_jobs`` as for
    :func:`learned_baseline`."""
    with collector_paused():  # (core/collector: 16 -> 13 s of CPU at 100K images)
        shards = sorted(shards)
        try:
            kept, sizes = _sample_shards(read, shards, sampled)
        except learned_keys.NeedIds:  # equal hashes: ordered by qa_id, every shard read here
            kept, sizes = _sample_shards(read, shards, None)
        return _learned_from_shards(read, shards, learn_from, cache, store, pool, pool_jobs,
                                    kept, sizes)


def _cap(split: str) -> int:
    return TRAIN_CAP if split == "train" else EVAL_CAP


def _sample_shards(read, shards, sampled) -> tuple[dict, Counter]:
    kept: dict[tuple, tuple] = {}
    sizes: Counter = Counter()
    for n, (config, rel) in enumerate(shards):
        got = sampled(config, rel) if sampled is not None else None
        if got is None:
            kept = sample_keys(read(rel, _META), config, kept, sizes, shard=n)
        else:
            kept = learned_keys.merged(kept, sizes, got, n, _keep)
    return kept, sizes


def _learned_from_shards(read, shards, learn_from, cache, store, pool, pool_jobs, kept,
                         sizes) -> dict:
    places = _places(kept, len(shards))

    def fit(parts) -> dict:
        rows = [r for config, t in parts for r in rows_from_table(config, t) if r["qa_id"] is not None]
        return learned_baseline(rows, rows, learn_from, pool=pool, pool_jobs=pool_jobs)
    if cache is None and store is None:
        # the sampled rows taken by their places (each qa_id is a row's own), before Python
        # objects; a row without a qa_id is never learned from (it has no identity to sample by)
        result = fit([(config, read(rel, COLUMNS).take(pyarrays.from_numpy(at.astype(np.int64))))
                      for (config, rel), at in zip(shards, places) if len(at)])
    else:  # groups whose sampled rows are unchanged are taken from the cache, never made rows
        tables = [(config, read(rel, COLUMNS) if len(at) else None)
                  for (config, rel), at in zip(shards, places)]
        result = learned_groups.cached(tables, kept, learn_from, cache or {}, store, _code_digest(), fit)
    for key, g in result.items():
        g["n"] = sizes[key]  # the group's size, not the rows drawn from it
    return result


def table_lines(result: Mapping) -> list[str]:
    """The per-group table of :func:`learned_baseline`'s result."""
    lines = [f"{'config':<10} {'split':<10} {'task':<28} {'type':<15} {'n':>7} {'scored':>7} "
             f"{'chance':>7} {'learned':>8} {'excess':>8}"]
    for key in sorted(result):
        g = result[key]
        acc = g["accuracy"]
        lines.append(
            f"{key[0]:<10} {key[1]:<10} {key[2]:<28} {key[3]:<15} {g['n']:>7} {g['scored']:>7} "
            f"{100 * g['chance']:6.1f}% " + (f"{100 * acc:7.1f}% {100 * (acc - g['chance']):+7.1f}pp"
                                             if acc is not None else "      -")
            + ("  (vs prior)" if g["reference"] == "prior" else ""))
    return lines


def _read(root: str):
    def read(rel: str, columns):
        # plain pyarrow: the qa room may not import pipeline.io
        pf = pq.ParquetFile(os.path.join(root, *rel.split("/")))
        return pf.read(columns=[c for c in columns if c in pf.schema_arrow.names])
    return read


def corpus_result(root: str) -> dict:
    """:func:`learned_from_shards` over a built corpus on disk (its manifest lists the shards;
    the configs are those its audit covers, with its ``learn_from`` and declared chances)."""
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    audit = manifest.get("audit") or {}
    configs = {g["config"] for g in audit.get("groups", [])} or {"qa"}
    shards = [(rel.split("/", 1)[0], rel) for rel in manifest.get("files", {})
              if rel.endswith(".parquet") and rel.count("/") == 1 and rel.split("/", 1)[0] in configs]
    result = learned_from_shards(_read(root), shards, dict(audit.get("learn_from") or {}))
    for key, g in result.items():  # a recipe's declared chance (audit.chance), as the audit uses it
        if key[2] in (audit.get("chance") or {}):
            g["chance"], g["reference"] = float(audit["chance"][key[2]]), "declared"
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.qa.learned CORPUS_DIR``: the learned baseline's table."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pipeline.qa.learned CORPUS_DIR", file=sys.stderr)
        return 2
    print("\n".join(table_lines(corpus_result(argv[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

