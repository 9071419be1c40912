"""The learned text-only baseline's models (:mod:`pipeline.qa.learned` draws the rows and
reports): per group, a logistic regression over named text features
(:mod:`pipeline.qa.text_features`; the model: :mod:`pipeline.qa.logistic`) — the (question,
option, position) pair classifier of multiple-choice groups, the question classifier of
closed and open ones.

A group's feature rows repeat (a few templates, a few option lists): each distinct row is
featurised once (:class:`_Rows`) and is one row of the sparse matrix, fitted with how often
it was seen with each class — the same objective as the rows one by one — and scored once.
:func:`fit_group` fits and scores one group; it is a top-level function so that a process
pool can run groups side by side.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Mapping

import numpy as np

from pipeline.core.collector import collector_paused
from pipeline.qa import logistic
from pipeline.qa.logistic import Sparse, sparse
from pipeline.qa.text_features import Pairs, Scales

TOP_ANSWERS = 50
C = 1.0


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

    def matrix(self, rows: _Rows) -> Sparse:
        """The matrix of the rows' distinct feature dicts (``rows.unique``; ``rows.index``
        says which one each row is): each dict's known features, by column."""
        dicts = rows.unique
        lengths = np.fromiter(map(len, dicts), dtype=np.int64, count=len(dicts))
        chain = itertools.chain.from_iterable
        cols = np.fromiter(map(self.index.get, chain(dicts), itertools.repeat(-1)),
                           dtype=np.intp, count=int(lengths.sum()))
        data = np.fromiter(chain(map(dict.values, dicts)), dtype=np.float64, count=len(cols))
        row = np.repeat(np.arange(len(dicts), dtype=np.intp), lengths)
        known = cols >= 0
        row, cols, data = row[known], cols[known], data[known]
        order = np.lexsort((cols, row))
        return sparse(data[order], cols[order], row[order], (len(dicts), max(1, len(self.index))))


class _Model:
    """The logistic regression (:func:`pipeline.qa.logistic.fit`, ``C`` = :data:`C`) of one
    group's feature rows ``x`` with labels ``y``: ``classes`` the sorted labels, ``vocab``
    the columns.  Each distinct row is one row of the fit, with how often it was seen with
    each class (the same objective as the rows one by one)."""

    def __init__(self, x: _Rows, y: list):
        self.vocab = _Vocabulary(x)
        self.classes = sorted(set(y))
        matrix = self.vocab.matrix(x)
        x.unique.clear()  # in the matrix now
        label = {c: i for i, c in enumerate(self.classes)}
        k = len(self.classes)
        cells = np.asarray(x.index, dtype=np.int64) * k + np.fromiter(
            map(label.__getitem__, y), dtype=np.int64, count=len(y))
        counts = np.bincount(cells, minlength=matrix.shape[0] * k).reshape(matrix.shape[0], k)
        self.model = logistic.fit(matrix, counts, C)

    def scores(self, x: _Rows) -> np.ndarray:
        """Each row's scores (two classes: one column, above 0 for the second class)."""
        z = logistic.scores(self.vocab.matrix(x), self.model.coef, self.model.intercept)
        return z[np.asarray(x.index, dtype=np.intp)]

    def predict(self, x: _Rows) -> list:
        """Each row's class (:func:`pipeline.qa.logistic.predict`)."""
        best = logistic.predict(self.vocab.matrix(x), self.model)[np.asarray(x.index, dtype=np.intp)]
        return [self.classes[i] for i in best.tolist()]


def _fit(x: _Rows, y: list) -> _Model:
    return _Model(x, y)


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
        spans, start = [], 0
        for r in test:
            spans.append((start, len(r["options"]), r["answer"]))
            start += len(r["options"])
        scores = self.model.scores(_pairs(test, self.pairs))[:, 0]
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
        guesses = self.model.predict(_questions(test, self.scales))
        return float(sum(g == r["answer"] for g, r in zip(guesses, test)))


@functools.cache
def _letter(j: int) -> str:
    return chr(ord("A") + j)


def fit_group(job: tuple) -> dict[tuple, dict]:
    """One learned group: ``(source, train rows, {key: (n, scored rows)})`` -> its results
    (:func:`learned_baseline`'s); a top-level function, so that a process pool can run it."""
    with collector_paused():  # millions of small objects, no cycle (core/collector)
        return _fit_group(*job)


def _fit_group(source: tuple, rows: list[Mapping], tests: Mapping) -> dict[tuple, dict]:
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
