"""The learned baseline's own logistic regression (pipeline/qa/logistic.py): it finds
scikit-learn's solution, gives the same floats every time (a fixed order of every sum, its
own exp and log), and counts stand for repeated rows."""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.qa import logistic
from pipeline.qa.logistic import fit, predict, scores, sparse

ROOT = Path(__file__).resolve().parent.parent


def _problem(classes: int, n: int = 240, d: int = 30, seed: int = 0):
    """Sparse rows (a fifth of the entries set, some binary, some valued), labels drawn from
    a planted softmax model."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, d)) < 0.2) * np.where(rng.random((n, d)) < 0.5, 1.0, rng.normal(size=(n, d)))
    truth = rng.normal(size=(d, classes)) * 1.5
    y = np.argmax(dense @ truth + rng.gumbel(size=(n, classes)), axis=1)
    r, c = np.nonzero(dense)
    counts = np.zeros((n, classes), dtype=np.int64)
    counts[np.arange(n), y] = 1
    return dense, y, sparse(dense[r, c], c, r, (n, d)), counts


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("c", [1.0, 0.1])
def test_same_solution_as_scikit_learn(classes, c):
    # here, not at the top: the SIMD test's child process imports this module (1 s less)
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    dense, y, x, counts = _problem(classes, seed=classes)
    ours = fit(x, counts, c, max_iter=5000, tol=1e-10)
    theirs = LogisticRegression(C=c, solver="lbfgs", tol=1e-12, max_iter=10_000).fit(csr_matrix(dense), y)
    coef = ours.coef.T  # classes (or 1) x columns, as scikit-learn's coef_
    assert np.abs(coef - theirs.coef_).max() < 1e-5
    assert np.abs(ours.intercept - theirs.intercept_).max() < 1e-5
    assert (predict(x, ours) == theirs.predict(dense)).all()
    z = scores(x, ours.coef, ours.intercept)
    assert np.abs(z - theirs.decision_function(dense).reshape(z.shape)).max() < 1e-5
    # the default settings (scikit-learn's tol, 200 iterations): the same answers
    default = fit(x, counts, c)
    plain = LogisticRegression(C=c, solver="lbfgs").fit(csr_matrix(dense), y)
    assert default.iterations < logistic.MAX_ITER
    assert (predict(x, default) == plain.predict(dense)).all()
    assert np.abs(default.coef.T - plain.coef_).max() < 0.02


def test_counts_stand_for_repeated_rows():
    """A row seen three times with one class and once with another is one row with counts
    (3, 1): the objective of the rows one by one."""
    dense, y, _, _ = _problem(3, n=60, d=12)
    unique = dense[:20]
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 4, size=(20, 3))
    counts[counts.sum(axis=1) == 0, 0] = 1
    rows = np.repeat(np.arange(20), counts.sum(axis=1))
    labels = np.concatenate([np.repeat(np.arange(3), k) for k in counts])
    r, c = np.nonzero(unique)
    once = fit(sparse(unique[r, c], c, r, unique.shape), counts, 1.0, max_iter=5000, tol=1e-10)
    expanded = unique[rows]
    r, c = np.nonzero(expanded)
    one_hot = np.zeros((len(rows), 3), dtype=np.int64)
    one_hot[np.arange(len(rows)), labels] = 1
    each = fit(sparse(expanded[r, c], c, r, expanded.shape), one_hot, 1.0, max_iter=5000, tol=1e-10)
    assert np.abs(once.coef - each.coef).max() < 1e-6


def _golden_problem(classes: int):
    """A problem drawn with Python's random (no BLAS anywhere: the same on every machine)."""
    rng = random.Random(11)
    data, cols, rows, counts = [], [], [], []
    for i in range(200):
        picked = sorted(rng.sample(range(25), 6))
        values = [rng.choice([1.0, 1.0, 0.5, -1.25]) for _ in picked]
        data += values
        cols += picked
        rows += [i] * len(picked)
        label = (sum(picked) + rng.randrange(4)) % classes
        counts.append([int(k == label) * (1 + i % 3) for k in range(classes)])
    return sparse(np.asarray(data), np.asarray(cols), np.asarray(rows), (200, 25)), np.asarray(counts)


def _golden_digest() -> str:
    h = hashlib.sha256()
    for classes in (2, 4):
        model = fit(*_golden_problem(classes), 1.0)
        h.update(model.coef.astype("<f8").tobytes() + model.intercept.astype("<f8").tobytes()
                 + str(model.iterations).encode())
    return h.hexdigest()


def test_two_fits_give_identical_floats():
    """Fitting is a function of its input: the same bytes every time — and on every machine:
    :data:`GOLDEN` was taken when the solver was written (it changes only with this module's
    arithmetic or numpy's summation, and then :data:`logistic.VERSION` must be bumped)."""
    assert _golden_digest() == _golden_digest() == GOLDEN


def test_same_floats_without_numpy_simd_kernels():
    """numpy picks SIMD kernels by CPU (its exp differs in the last bit with and without
    AVX-512): with every kernel this CPU offers above numpy's baseline turned off
    (``NPY_DISABLE_CPU_FEATURES``, another CPU in effect), the fits are the same bytes."""
    import numpy._core._multiarray_umath as umath

    found = [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]
    if not found:
        pytest.skip("numpy dispatches no kernel above its baseline on this CPU")
    probe = ("import hashlib, numpy as np; from tests.test_logistic import _golden_digest; "
             "x = np.linspace(-30, 30, 100001); "
             "print(_golden_digest(), hashlib.sha256(np.exp(x).tobytes()).hexdigest())")
    env = os.environ | {"NPY_DISABLE_CPU_FEATURES": " ".join(found), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True).stdout.split()
    x = np.linspace(-30, 30, 100001)
    assert out[0] == GOLDEN
    if out[1] == hashlib.sha256(np.exp(x).tobytes()).hexdigest():
        pytest.skip("numpy's exp is the same without its SIMD kernels here: nothing was compared")


#: The golden fits' digest (numpy 2.4, x86-64 with AVX-512; logistic.VERSION numpy-lbfgs-1).
GOLDEN = "05f2495868defaf73b15ae805368e3b6c459035420f1c883cb501dc14ca0346d"


def _pairwise(values: list[float]) -> float:
    """numpy's pairwise summation (``loops_utils.h.src``), in Python."""
    n = len(values)
    if n < 8:
        total = 0.0
        for v in values:
            total += v
        return total
    if n <= 128:
        r = values[:8]
        i = 8
        while i < n - n % 8:
            r = [r[j] + values[i + j] for j in range(8)]
            i += 8
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for v in values[i:]:
            total += v
        return total
    half = n // 2
    half -= half % 8
    return _pairwise(values[:half]) + _pairwise(values[half:])


def test_sums_have_a_fixed_order():
    """Every sum of the solver in an order fixed by code, not by the CPU: whole vectors by
    numpy's pairwise summation, a row's products its first entry plus the pairwise sum of
    the others (``np.add.reduceat``), scatters one by one in index order (``np.bincount``)."""
    rng = random.Random(3)
    for n in (1, 7, 9, 130, 1000, 4099):
        values = [rng.uniform(-1, 1) * 10 ** rng.uniform(-8, 8) for _ in range(n)]
        assert logistic._total(np.asarray(values)) == _pairwise(values)
        total = 0.0
        for v in values:
            total += v
        assert logistic._sum_by(np.zeros(n, dtype=np.intp), np.asarray(values), 1)[0] == total
        x = sparse(np.asarray(values), np.arange(n), np.zeros(n), (1, n))
        z = scores(x, np.ones((n, 1)), np.zeros(1))[0, 0]
        assert z == values[0] + _pairwise(values[1:])


def test_exp_and_log_are_accurate():
    """The module's own exp and log (IEEE basic operations only) agree with the C library's
    within about one unit in the last place."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-700, 700, 5000), rng.uniform(-40, 40, 5000), [0.0, -1e-300]])
    expected = np.array([math.exp(v) for v in x])
    assert (np.abs(logistic._exp(x) - expected) <= 2.3e-16 * expected).all()
    v = np.concatenate([np.exp(rng.uniform(-300, 300, 5000)), 1 + rng.uniform(0, 1e-6, 100),
                        rng.uniform(0.5, 2, 5000), [1.0]])
    expected = np.array([math.log(t) for t in v])
    assert (np.abs(logistic._log(v) - expected) <= 4.5e-16 * np.maximum(np.abs(expected), 1.0)).all()
