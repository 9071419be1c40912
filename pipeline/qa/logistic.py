"""L2-regularised logistic regression in numpy alone, bit-for-bit deterministic: the model of
the learned text-only baseline (:mod:`pipeline.qa.learned_fit`).

The problem: rows ``x_u`` (a sparse matrix, :class:`Sparse`) with ``counts[u, k]``, how many
times row ``u`` was seen with class ``k`` (a group's questions repeat a few templates: a
repeated row is one row with its counts, the same objective as the rows one by one).  With
``N`` the total count, :func:`fit` minimises

    (1/N) · Σ_u Σ_k counts[u, k] · loss_k(z_u)  +  ‖W‖² / (2·C·N),     z_u = x_u·W + b

— scikit-learn's ``LogisticRegression(C=C)`` objective (its ``lbfgs`` scaling; the
intercept ``b`` is not penalised): for two classes one column and the logistic loss
(``z > 0`` is the second class), for more one column per class and the softmax loss.  The
optimiser is fixed: L-BFGS from zero with :data:`MEMORY` pairs, a backtracking (Armijo)
line search halving the step, stopping when the largest gradient entry is at most ``tol``
(:data:`TOL`, scikit-learn's), after ``max_iter`` iterations (:data:`MAX_ITER`), or when a
step no longer lowers the objective (the function's relative decrease at most
:data:`FTOL`, SciPy's L-BFGS-B setting in scikit-learn).

Determinism.  Every floating-point operation that decides a result is an IEEE-754 basic
operation (+ − × ÷, ``rint``, ``ldexp``/``frexp``, max, comparisons: exactly rounded, the
same on every CPU) in a fixed order:

* every sum is in an order fixed by code, never by the CPU: a whole vector's by numpy's
  pairwise summation (:func:`_total`; its eight accumulators are written so that SIMD
  code keeps their order), a row's products by :func:`numpy.add.reduceat` (one score
  column: the first plus the pairwise sum of the others), a scatter by
  :func:`numpy.bincount` (one by one, in index order) — never BLAS (``np.dot``/``@``: OpenBLAS picks its kernel, and with it
  the order of the additions and the use of FMA, by CPU);
* ``exp`` and ``log`` are computed here from those operations (:func:`_exp`, :func:`_log`:
  a Cody-Waite reduction and a Taylor / ``atanh`` series, within a few units in the last
  place), not by numpy: numpy dispatches them to AVX-512 code where the CPU has it,
  whose results differ from the C library's in the last bit (measured: 4.6 % of a million
  ``np.exp`` results differ from ``math.exp`` on an AVX-512 machine);
* each operation is its own numpy call, so no compiler can fuse a multiply and an add.

``tests/test_logistic.py`` checks the orders against Python, and that the fits are the
same bytes with numpy's SIMD kernels turned off (``NPY_DISABLE_CPU_FEATURES``) as with them.

The same rows and counts in the same order give the same floats on every machine; the
caller orders them (:mod:`pipeline.qa.learned_fit`: columns by feature name, rows by first
appearance in hash order).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

#: Version of this model: part of the learned baseline's cache digest (a change of the
#: solver or of its settings must not reuse fits of the old one).
VERSION = "numpy-lbfgs-1"
MAX_ITER = 200
TOL = 1e-4
FTOL = 64 * np.finfo(np.float64).eps
MEMORY = 10
ARMIJO = 1e-4
HALVINGS = 40


class Sparse(NamedTuple):
    """A sparse matrix by its entries, sorted by row: ``data[i]`` at row ``rows[i]``, column
    ``indices[i]``; ``shape`` (rows, columns).  :func:`sparse` makes one."""

    data: np.ndarray
    indices: np.ndarray
    rows: np.ndarray
    shape: tuple[int, int]
    filled: np.ndarray  # the rows with an entry
    starts: np.ndarray  # where each of them starts in the entries


def sparse(data: np.ndarray, indices: np.ndarray, rows: np.ndarray, shape: tuple[int, int]) -> Sparse:
    """The matrix of entries ``(rows[i], indices[i]) = data[i]``, ``rows`` sorted."""
    rows = np.asarray(rows, dtype=np.intp)
    starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]])) if len(rows) else rows
    return Sparse(np.asarray(data, dtype=np.float64), np.asarray(indices, dtype=np.intp), rows,
                  (int(shape[0]), int(shape[1])), rows[starts], starts)


class Model(NamedTuple):
    """``coef`` (columns × 1 for two classes, columns × classes for more), ``intercept``;
    ``iterations`` the L-BFGS iterations it took."""

    coef: np.ndarray
    intercept: np.ndarray
    iterations: int


# ----------------------------------------------------------------------- fixed-order arithmetic


def _total(v: np.ndarray) -> float:
    """The sum of ``v``'s entries: numpy's pairwise summation (a fixed order, the same with
    or without SIMD: ``loops_utils.h``'s eight accumulators; tested)."""
    return float(np.add.reduce(np.ravel(v)))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return _total(a * b)


def _sum_by(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """``out[j]`` = the sum of ``values[i]`` with ``index[i] == j``, added in order of ``i``."""
    return np.bincount(index, weights=values, minlength=size)


_LN2_HI = 6.93147180369123816490e-01  # low 32 bits zero: k · _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_EXP_TERMS = tuple(1.0 / math.factorial(n) for n in range(14))
_LOG_TERMS = tuple(1.0 / n for n in range(3, 24, 2))


def _exp(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` (``x`` clipped to ±700): ``x = k·ln 2 + r``, ``|r| ≤ ln 2 / 2``, the Taylor
    series of ``exp(r)`` to degree 13 (relative error below 2e-16), times ``2**k``."""
    x = np.clip(x, -700.0, 700.0)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_TERMS[13])
    for c in _EXP_TERMS[12::-1]:
        p = p * r + c
    return np.ldexp(p, k.astype(np.int64))


def _log(v: np.ndarray) -> np.ndarray:
    """``log(v)`` for ``v > 0``: ``v = m·2**e`` with ``m`` in ``[√½, √2)``, ``log m = 2·atanh(s)``,
    ``s = (m − 1)/(m + 1)``, ``|s| ≤ 0.172``, by its series to ``s**23``."""
    m, e = np.frexp(v)
    small = m < 0.7071067811865476
    m = np.where(small, m * 2.0, m)
    e = (e - small).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    q = np.full_like(s, _LOG_TERMS[-1])
    for c in _LOG_TERMS[-2::-1]:
        q = q * s2 + c
    log_m = (s + s * (s2 * q)) * 2.0
    return e * _LN2_HI + (log_m + e * _LN2_LO)


# ------------------------------------------------------------------------------ the model


def scores(x: Sparse, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """``z = x·coef + intercept``, rows × columns of ``coef``; each row's products added in
    the order of its entries (:func:`numpy.add.reduceat`)."""
    n, k = x.shape[0], coef.shape[1]
    products = x.data * np.take(coef[:, 0], x.indices) if k == 1 else x.data[:, None] * coef[x.indices]
    z = np.zeros((n, k))
    if len(x.starts):
        z[x.filled] = np.add.reduceat(products, x.starts, axis=0).reshape(-1, k)
    return z + intercept


def _transposed(x: Sparse, r: np.ndarray) -> np.ndarray:
    """``xᵀ·r`` (columns × ``r``'s columns), in the order of ``x``'s entries."""
    d, k = x.shape[1], r.shape[1]
    if k == 1:
        return _sum_by(x.indices, x.data * np.take(r[:, 0], x.rows), d)[:, None]
    cells = (x.indices[:, None] * k + np.arange(k)).ravel()
    return _sum_by(cells, (x.data[:, None] * r[x.rows]).ravel(), d * k).reshape(d, k)


def _loss(z: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed loss of ``z`` (rows × 1 or rows × classes) and its derivative by ``z``."""
    seen = counts.sum(axis=1)  # integers: exact in any order
    if z.shape[1] == 1:
        z0 = z[:, 0]
        t = _exp(-np.abs(z0))
        softplus = np.maximum(z0, 0.0) + _log(1.0 + t)  # log(1 + e^z)
        sigmoid = np.where(z0 >= 0, 1.0 / (1.0 + t), t / (1.0 + t))
        positive = counts[:, 1].astype(np.float64)
        loss = _total(seen * softplus) - _total(positive * z0)
        return loss, (seen * sigmoid - positive)[:, None]
    top = z.max(axis=1)
    e = _exp(z - top[:, None])
    n, k = z.shape
    norm = _sum_by(np.repeat(np.arange(n), k), e.ravel(), n)
    lse = top + _log(norm)
    loss = _total(seen * lse) - _total(counts * z)
    return loss, seen[:, None] * (e / norm[:, None]) - counts


def fit(x: Sparse, counts: np.ndarray, c: float, *, max_iter: int = MAX_ITER,
        tol: float = TOL) -> Model:
    """The regularised logistic regression of rows ``x`` seen ``counts[u, k]`` times with
    class ``k`` (rows × classes, at least two classes; two: one score column, positive for the
    second class) — the module docstring's objective and optimiser."""
    counts = np.asarray(counts, dtype=np.int64)
    d, classes = x.shape[1], counts.shape[1]
    k = 1 if classes == 2 else classes
    total = float(counts.sum())
    penalty = 1.0 / (c * total)

    def value_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, intercept = theta[:d * k].reshape(d, k), theta[d * k:]
        loss, dz = _loss(scores(x, coef, intercept), counts)
        grad = np.concatenate([(_transposed(x, dz) / total + coef * penalty).ravel(),
                               _sum_by(np.tile(np.arange(k), len(dz)), dz.ravel(), k) / total])
        return loss / total + 0.5 * penalty * _dot(coef, coef), grad

    theta, iterations = lbfgs(value_grad, np.zeros(d * k + k), max_iter, tol)
    return Model(theta[:d * k].reshape(d, k), theta[d * k:], iterations)


def lbfgs(value_grad, theta: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """Minimise ``value_grad``'s function from ``theta``: L-BFGS with :data:`MEMORY` pairs,
    backtracking line search (Armijo, step halved at most :data:`HALVINGS` times).  Returns
    the point and the number of iterations."""
    f, g = value_grad(theta)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for it in range(max_iter):
        if float(np.max(np.abs(g))) <= tol:
            return theta, it
        q, alphas = g, []
        for s, y, rho in reversed(pairs):
            a = rho * _dot(s, q)
            alphas.append(a)
            q = q - y * a
        if pairs:
            s, y, rho = pairs[-1]
            q = q * (1.0 / (rho * _dot(y, y)))  # s·y / y·y
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            q = q + s * (a - rho * _dot(y, q))
        direction = -q
        slope = _dot(g, direction)
        if not slope < 0:  # not a descent direction (rounding): steepest descent, memory cleared
            pairs, direction = [], -g
            slope = -_dot(g, g)
        step = 1.0
        for _ in range(HALVINGS):
            trial = theta + direction * step
            f_new, g_new = value_grad(trial)
            if f_new <= f + ARMIJO * step * slope:
                break
            step *= 0.5
        else:
            return theta, it  # no step lowers the function: as close as it gets
        s, y = trial - theta, g_new - g
        sy = _dot(s, y)
        if sy > 0:  # strictly convex: always, short of rounding
            pairs = [*pairs[-(MEMORY - 1):], (s, y, 1.0 / sy)]
        done = f - f_new <= FTOL * max(abs(f), abs(f_new), 1.0)
        theta, f, g = trial, f_new, g_new
        if done:
            return theta, it + 1
    return theta, max_iter


def predict(x: Sparse, model: Model) -> np.ndarray:
    """Each row's class index: the highest score (the first on a tie); for two classes 1
    where the score is above 0."""
    z = scores(x, model.coef, model.intercept)
    if z.shape[1] == 1:
        return (z[:, 0] > 0).astype(np.int64)
    return np.argmax(z, axis=1)
