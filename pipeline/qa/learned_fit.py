"""The learned text-only baseline's models (:mod:`pipeline.qa.learned` draws the rows and
reports): per group, a logistic regression over named text features
(:mod:`pipeline.qa.text_features`) — the (question, option, position) pair classifier of
multiple-choice groups, the question classifier of closed and open ones.

A group's feature rows repeat (a few templates, a few option lists): each distinct row is
featurised once and copied into the CSR matrix (:class:`_Rows`), the same matrix as one
built row by row.  :func:`fit_group` fits and scores one group; it is a top-level function
so that a process pool can run groups side by side.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections import Counter
from collections.abc import Mapping

import numpy as np

from pipeline.qa.text_features import Pairs, Scales

TOP_ANSWERS = 50
C = 1.0
MAX_ITER = 200


def _model(classes: int):
    # scikit-learn only when a group is fitted: its import (scipy.stats and pandas behind
    # it) costs 0.85-1.4 s of CPU (measured), more than the rest of a regenerate whose
    # groups all come from the cache (learned_baseline's ``cache``).
    from sklearn.linear_model import LogisticRegression

    # liblinear's dual solver: 7.5 s where its primal one took 100 s on 25,664 option pairs
    # (radimagenet-vqa pathology); measured
    if classes > 2:
        return LogisticRegression(solver="lbfgs", C=C, max_iter=MAX_ITER)
    return LogisticRegression(solver="liblinear", dual=True, C=C, max_iter=MAX_ITER, random_state=0)


class _Rows:
    """Feature dicts of a matrix's rows, each distinct one stored once: ``unique`` the dicts,
    ``index`` each row's position in ``unique`` (a group's questions repeat a few templates)."""

    def __init__(self):
        self.unique: list[dict] = []
        self.index: list[int] = []
        self._seen: dict = {}

    def add(self, key, make, *args) -> None:
        """A row whose features are ``make(*args)``, the same as every earlier row's with ``key``."""
        i = self._seen.get(key)
        if i is None:
            i = self._seen[key] = len(self.unique)
            self.unique.append(make(*args))
        self.index.append(i)

    def __len__(self) -> int:
        return len(self.index)


class _Vocabulary:
    """Feature name -> column, the train features in sorted order (unseen ones are dropped)."""

    def __init__(self, rows: _Rows):
        self.index = {k: i for i, k in enumerate(sorted({k for d in rows.unique for k in d}))}

    def matrix(self, rows: _Rows):
        """The rows' CSR matrix: each row's known features, by column (the same matrix as
        one built row by row: a repeated row is a copy of its first)."""
        from scipy.sparse import csr_matrix  # with scikit-learn, only to fit (see _model)

        dicts = rows.unique
        lengths = np.fromiter(map(len, dicts), dtype=np.int64, count=len(dicts))
        chain = itertools.chain.from_iterable
        cols = np.fromiter(map(self.index.get, chain(dicts), itertools.repeat(-1)),
                           dtype=np.int64, count=int(lengths.sum()))
        data = np.fromiter(chain(map(dict.values, dicts)), dtype=np.float64, count=len(cols))
        row = np.repeat(np.arange(len(dicts), dtype=np.int64), lengths)
        known = cols >= 0
        row, cols, data = row[known], cols[known], data[known]
        order = np.lexsort((cols, row))
        ptr = np.zeros(len(dicts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=len(dicts)), out=ptr[1:])
        unique = csr_matrix((data[order], cols[order], ptr),
                            shape=(len(dicts), max(1, len(self.index))))
        return unique[np.asarray(rows.index, dtype=np.intp)]


def _fit(x: _Rows, y) -> tuple:
    vocab = _Vocabulary(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a capped iteration count is part of the definition
        matrix = vocab.matrix(x)
        x.unique.clear()  # in the matrix now: freed before the solver makes its own copy
        return _model(len(set(y))).fit(matrix, np.asarray(y)), vocab


def _pairs(rows: list[Mapping], pairs: Pairs) -> _Rows:
    """The (question, option, position) feature rows of multiple-choice ``rows``, in order."""
    x = _Rows()
    for r in rows:
        question, options = r["question"], r["options"]
        key = (question, tuple(options))
        for j in range(len(options)):
            x.add((key, j), pairs.features, question, options, j)
    return x


class _Choice:
    """The (question, option, position) pair classifier of one group, learned on its train rows."""

    def __init__(self, train: list[Mapping], scales: Scales):
        self.pairs = Pairs(scales)
        y = [int(_letter(j) == r["answer"]) for r in train for j in range(len(r["options"]))]
        self.model = _fit(_pairs(train, self.pairs), y) if len(set(y)) == 2 else None

    def credit(self, test: list[Mapping]) -> float:
        """Share of ``test`` answered by the best-scoring option (an exact tie shares it)."""
        if self.model is None:
            return sum(1.0 / len(r["options"]) for r in test)
        model, vocab = self.model
        spans, start = [], 0
        for r in test:
            spans.append((start, len(r["options"]), r["answer"]))
            start += len(r["options"])
        scores = model.decision_function(vocab.matrix(_pairs(test, self.pairs)))
        credit = 0.0
        for start, k, answer in spans:
            s = np.round(scores[start:start + k], 9)
            top = [j for j in range(k) if s[j] == s.max()]
            credit += sum(_letter(j) == answer for j in top) / len(top)
        return credit


def _questions(rows: list[Mapping], scales: Scales) -> _Rows:
    x = _Rows()
    for r in rows:
        x.add(r["question"], scales.features, r["question"])
    return x


class _Classes:
    """The question classifier of one closed or open group; ``prior`` its most frequent answer."""

    def __init__(self, train: list[Mapping], scales: Scales):
        self.scales = scales
        counts = Counter(r["answer"] for r in train)
        self.prior = max(sorted(counts), key=lambda a: counts[a]) if counts else None
        keep = set(sorted(counts, key=lambda a: (-counts[a], a))[:TOP_ANSWERS])
        kept = [r for r in train if r["answer"] in keep]
        self.model = (_fit(_questions(kept, scales), [r["answer"] for r in kept])
                      if len(keep) > 1 else None)

    def credit(self, test: list[Mapping]) -> float:
        if self.model is None:
            return float(sum(r["answer"] == self.prior for r in test))
        model, vocab = self.model
        guesses = model.predict(vocab.matrix(_questions(test, self.scales)))
        return float(sum(g == r["answer"] for g, r in zip(guesses, test)))


@functools.cache
def _letter(j: int) -> str:
    return chr(ord("A") + j)


def fit_group(job: tuple) -> dict[tuple, dict]:
    """One learned group: ``(source, train rows, {key: (n, scored rows)})`` -> its results
    (:func:`learned_baseline`'s); a top-level function, so that a process pool can run it."""
    source, rows, tests = job
    scales = Scales(r["question"] for r in rows)
    learner = (_Choice if source[2] == "multiple_choice" else _Classes)(rows, scales)
    out = {}
    for key, (n, test) in tests.items():
        qtype = key[3]
        if qtype == "multiple_choice":
            test = [r for r in test if r["options"]]
            chance = sum(1.0 / len(r["options"]) for r in test) / len(test) if test else 0.0
            reference = "uniform"
        elif qtype == "closed":
            chance, reference = 0.5, "uniform"
        else:
            hits = sum(r["answer"] == learner.prior for r in test)
            chance, reference = (hits / len(test) if test else 0.0), "prior"
        credit = learner.credit(test) if test else 0.0
        out[key] = {"n": n, "scored": len(test), "correct": round(credit, 4),
                    "accuracy": round(credit / len(test), 4) if test else None,
                    "chance": round(chance, 4), "reference": reference, "train": len(rows)}
    return out
