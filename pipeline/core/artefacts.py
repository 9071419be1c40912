"""The artefact families of the ``ood`` config as array functions (pure numpy).

Each function maps a display-normalised float array (values in ``[0, 1]``, a 2D slice
``[rows, cols]`` or a 3D volume ``[k, j, i]``) to a new float array; clipping, float32
and the choice of parameters are :mod:`pipeline.core.perturb`'s, which also states the
units and the determinism rules these functions keep (only ``+ - * /``, ``sqrt``,
comparisons and fixed-order accumulation per pixel; transcendental values from
:mod:`decimal`).  Changing any of them changes every ``ood`` corpus: bump
``perturb.VERSION``.
"""

from __future__ import annotations

import decimal
import functools
import math
from fractions import Fraction

import numpy as np

_MAX_DYADIC_DEPTH = 8  # gamma = m / 2**k with k <= 8


def finish(y: np.ndarray) -> np.ndarray:
    """Clip in place (``y`` is always a buffer of this module's own) and cast to float32."""
    return np.clip(y, 0.0, 1.0, out=y).astype(np.float32)


def exact_mean(x: np.ndarray) -> float:
    """Mean of ``x`` (values in [0, 1]) from an exact integer sum: order-free, ~2**-33 accurate."""
    fixed = np.rint(x * 2.0**32).astype(np.int64)
    return float(int(fixed.sum(dtype=np.int64)) / x.size / 2.0**32)


# --------------------------------------------------------------------------- families


def add_gaussian_noise(x: np.ndarray, sigma: float, gen: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise: ``x + sigma * n``, ``n ~ N(0, 1)`` per pixel.

    ``sigma`` is a fraction of the display range.  The result is not clipped
    here; :func:`perturb` clips to [0, 1], which biases pixels within a few
    sigma of 0 or 1 toward the interior.
    """
    y = gen.standard_normal(np.shape(x))
    y *= sigma
    y += x
    return y


def add_rician_noise(x: np.ndarray, sigma: float, gen: np.random.Generator) -> np.ndarray:
    """MR magnitude noise: ``sqrt((x + sigma n1)**2 + (sigma n2)**2)``, ``n1, n2 ~ N(0, 1)``.

    The magnitude of a complex signal ``x`` with independent Gaussian noise of
    standard deviation ``sigma`` (display range) in its real and imaginary
    channels.  Unlike Gaussian noise it is biased upward and lifts the
    background: a zero signal becomes Rayleigh distributed, mean
    ``sigma * sqrt(pi / 2)``; at high SNR it tends to ``x`` plus Gaussian
    noise.  ``sqrt`` is correctly rounded everywhere, unlike ``hypot``.
    """
    n = gen.standard_normal((2,) + np.shape(x))
    n *= sigma
    n[0] += x  # real channel: signal + noise; imaginary channel: noise
    np.multiply(n, n, out=n)
    magnitude = np.add(n[0], n[1], out=n[0])
    return np.sqrt(magnitude, out=magnitude)


@functools.lru_cache(maxsize=64)
def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised sampled Gaussian ``exp(-t**2 / (2 sigma**2))``, ``|t| <= ceil(truncate sigma)``.

    Taps are computed in :mod:`decimal` (34 digits), so they are the same
    bytes on every machine; read-only, cached.
    """
    if not (sigma > 0 and truncate > 0):
        raise ValueError(f"gaussian_kernel: sigma, truncate: got {sigma}, {truncate}; expected > 0")
    radius = max(1, math.ceil(truncate * sigma))
    with decimal.localcontext() as ctx:
        ctx.prec = 34
        two_var = 2 * decimal.Decimal(sigma) ** 2
        taps = [(-decimal.Decimal(t * t) / two_var).exp() for t in range(-radius, radius + 1)]
        total = sum(taps)
        weights = np.array([float(t / total) for t in taps], dtype=np.float64)
    weights.setflags(write=False)
    return weights


def _along_first(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with ``axis`` moved first, C-contiguous, so that slabs are contiguous blocks."""
    return np.ascontiguousarray(np.moveaxis(a, axis, 0))


def _convolve_axis(a: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric-kernel convolution along ``axis`` with half-sample symmetric padding."""
    radius = len(weights) // 2
    moved = _along_first(a, axis)
    n = moved.shape[0]
    padded = np.pad(moved, [(radius, radius)] + [(0, 0)] * (moved.ndim - 1), mode="symmetric")
    out = weights[radius] * padded[radius:radius + n]
    tmp = np.empty_like(out)
    for t in range(1, radius + 1):  # fixed tap order: identical sums everywhere
        np.add(padded[radius - t:radius - t + n], padded[radius + t:radius + t + n], out=tmp)
        tmp *= weights[radius + t]
        out += tmp
    return np.moveaxis(out, 0, axis)


def gaussian_blur(x: np.ndarray, sigma_px: float, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian blur of every axis, ``sigma_px`` in pixels (voxels for volumes).

    Boundaries use reflect padding in the half-sample symmetric sense
    (``d c b a | a b c d | d c b a``; scipy.ndimage ``mode='reflect'``, numpy
    ``np.pad(mode='symmetric')``).  With that padding a normalised symmetric
    kernel preserves the sum, hence the mean, of every line exactly (up to
    rounding).  Computed in float32, the output precision, for speed.
    """
    weights = gaussian_kernel(float(sigma_px), float(truncate)).astype(np.float32)
    y = np.asarray(x, dtype=np.float32)
    for axis in range(y.ndim):
        y = _convolve_axis(y, weights, axis)
    return y


def scale_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Linear contrast change about the image mean ``m``: ``m + factor * (x - m)``.

    ``factor < 1`` flattens, ``> 1`` stretches (then clipping saturates).  The
    mean is computed exactly over the whole slice or volume.
    """
    x = np.asarray(x, dtype=np.float64)
    m = exact_mean(x)
    y = x - m
    y *= factor
    y += m
    return y


def dyadic(gamma: float) -> Fraction:
    frac = Fraction(gamma)
    d = frac.denominator
    if not (gamma > 0 and d & (d - 1) == 0 and d <= 2**_MAX_DYADIC_DEPTH and gamma <= 64):
        raise ValueError(
            f"apply_gamma: gamma: got {gamma!r}; expected a dyadic rational m / 2**k in (0, 64] "
            f"with k <= {_MAX_DYADIC_DEPTH} (e.g. 0.5, 0.75, 1.25, 2.5), computed with square "
            "roots and products only so that it rounds identically on every machine"
        )
    return frac


def apply_gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma curve ``x ** gamma`` on [0, 1]: fixes 0 and 1, ``gamma > 1`` darkens mid-tones.

    ``gamma < 1`` brightens them; both are allowed.  ``gamma`` must be a dyadic
    rational ``m / 2**k`` (``k <= 8``): the power is ``k`` square roots then
    ``m`` by repeated squaring, all correctly rounded IEEE operations (numpy's
    ``power`` is not bit-identical across CPUs).
    """
    frac = dyadic(gamma)
    base = np.array(x, dtype=np.float64)  # a copy: the loops below work in place
    for _ in range(frac.denominator.bit_length() - 1):
        np.sqrt(base, out=base)
    result, m = None, frac.numerator
    while m:  # base ** m by repeated squaring, fixed order
        if m & 1:
            result = base.copy() if result is None else np.multiply(result, base, out=result)
        m >>= 1
        if m:
            np.multiply(base, base, out=base)
    return result


def _block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """Means of consecutive blocks of ``factor`` slabs along axis 0 (last block may be partial)."""
    n = a.shape[0]
    blocks = -(-n // factor)
    total = np.zeros((blocks,) + a.shape[1:], dtype=a.dtype)
    count = np.zeros(blocks, dtype=a.dtype)
    for offset in range(min(factor, n)):  # fixed order: identical sums everywhere
        part = a[offset::factor]
        total[:len(part)] += part
        count[:len(part)] += 1
    total /= count.reshape((blocks,) + (1,) * (a.ndim - 1))
    return total


def _upsample(a: np.ndarray, n: int, factor: int, interpolation: str) -> np.ndarray:
    """Block values along axis 0 back to ``n`` slabs (nearest or linear between centres)."""
    blocks = a.shape[0]
    positions = np.arange(n)
    if interpolation == "nearest":
        return a[positions // factor]
    starts = np.arange(blocks) * factor
    centres = (starts + np.minimum(starts + factor, n) - 1) / 2.0  # partial last block
    hi = np.clip(np.searchsorted(centres, positions, side="right"), 0, blocks - 1)
    lo = np.clip(hi - 1, 0, blocks - 1)
    span = centres[hi] - centres[lo]
    t = np.where(span > 0, (positions - centres[lo]) / np.where(span > 0, span, 1.0), 0.0)
    t = np.clip(t, 0.0, 1.0).astype(a.dtype).reshape((n,) + (1,) * (a.ndim - 1))
    low = a[lo]
    return low + t * (a[hi] - low)


def downsample_upsample(x: np.ndarray, factor: int, interpolation: str = "linear") -> np.ndarray:
    """Block-average by ``factor`` along every axis, then resample back to the input shape.

    Blocks start at index 0; a last partial block (shape not divisible by
    ``factor``) averages the pixels it has.  Upsampling is ``nearest`` (each
    block replicated) or ``linear`` (piecewise-linear between block centres,
    constant beyond the outer centres), axis by axis.  Detail finer than
    ``factor`` pixels is lost: a checkerboard of period ``< factor`` turns
    nearly flat.  Computed in float32, the output precision, for speed.
    """
    if not (isinstance(factor, int | np.integer) and factor >= 1):
        raise ValueError(f"downsample_upsample: factor: got {factor!r}; expected an integer >= 1")
    if interpolation not in ("linear", "nearest"):
        raise ValueError(
            f"downsample_upsample: interpolation: got {interpolation!r}; "
            "expected one of ('linear', 'nearest')"
        )
    y = np.asarray(x, dtype=np.float32)
    for axis in range(y.ndim):
        moved = _along_first(y, axis)
        small = _block_mean(moved, int(factor))
        y = np.moveaxis(_upsample(small, moved.shape[0], int(factor), interpolation), 0, axis)
    return y


def _legendre(n: int, degree: int) -> np.ndarray:
    """``[degree + 1, n]``: P_0..P_degree sampled at n points spanning [-1, 1]."""
    u = (2.0 * np.arange(n) - (n - 1)) / max(n - 1, 1)
    basis = np.empty((degree + 1, n), dtype=np.float64)
    basis[0] = 1.0
    if degree >= 1:
        basis[1] = u
    for ell in range(1, degree):  # Bonnet's recursion
        basis[ell + 1] = ((2 * ell + 1) * u * basis[ell] - ell * basis[ell - 1]) / (ell + 1)
    return basis


def _separable_sum(coeffs: np.ndarray, bases: list[np.ndarray]) -> np.ndarray:
    """``sum c[p, q, ...] * B0[p] (x) B1[q] (x) ...`` in a fixed order (no BLAS)."""
    shape = tuple(b.shape[1] for b in bases)
    out = np.zeros(shape)
    if coeffs.ndim == 1:
        for p, c in enumerate(coeffs):
            if c != 0.0:
                out += c * bases[0][p]
        return out
    tmp = np.empty(shape)  # reused: one full-size temporary however many terms
    for p in range(coeffs.shape[0]):
        if coeffs[p].any():
            np.multiply.outer(bases[0][p], _separable_sum(coeffs[p], bases[1:]), out=tmp)
            out += tmp
    return out


def bias_field(shape: tuple[int, ...], amplitude: float, degree: int,
               gen: np.random.Generator) -> np.ndarray:
    """A smooth positive multiplicative field ``1 + amplitude * s``, ``max |s| = 1``.

    ``s`` is a random polynomial over the grid, each axis mapped to [-1, 1]:
    the sum of tensor products of Legendre polynomials of total degree
    ``1..degree`` with coefficients uniform in [-1, 1] (the low-order
    polynomial model of MR coil inhomogeneity, as in TorchIO's
    RandomBiasField), divided by its maximum absolute value.  So the field
    lies in ``[1 - amplitude, 1 + amplitude]`` and touches one end; it is
    positive for ``amplitude < 1``.
    """
    if not 0 <= amplitude < 1:
        raise ValueError(f"bias_field: amplitude: got {amplitude!r}; expected 0 <= amplitude < 1")
    ndim = len(shape)
    coeffs = gen.uniform(-1.0, 1.0, size=(degree + 1,) * ndim)
    total_degree = sum(np.indices(coeffs.shape))
    coeffs[(total_degree == 0) | (total_degree > degree)] = 0.0
    s = _separable_sum(coeffs, [_legendre(n, degree) for n in shape])
    peak = max(float(s.max()), -float(s.min()))
    if peak == 0.0:
        return np.ones(shape, dtype=np.float64)
    s *= amplitude / peak
    s += 1.0
    return s


def ghost(x: np.ndarray, intensity: float, shift_fraction: float, axis: int = -2) -> np.ndarray:
    """Motion-like ghosting from a periodic modulation of k-space along the phase-encode axis.

    Each phase-encode line ``k`` (signed index, ``-N/2 <= k < N/2``, ``N``
    lines along ``axis``) is scaled by ``m(k) = (1 - a) + a cos(2 pi k s / N)``
    with ``a = intensity`` and ``s = max(1, round(shift_fraction * N))`` pixels
    -- the line-to-line signal variation of periodic motion in step with the
    repetition time.  The centre line is untouched (``m(0) = 1``, so the mean
    is kept) and, by the Fourier shift theorem, the image becomes::

        (1 - a) x + (a / 2) (roll(x, +s) + roll(x, -s))     # along axis

    two replicas at ``+-s`` pixels, wrapped around the field of view like real
    ghosts, each of relative intensity ``a / 2``.  For integer ``s`` that
    identity is exact, so the modulation is applied in image space
    (bit-reproducible, no FFT rounding); the tests check it against
    ``ifft(m * fft(x))``.  It is a convex combination, so [0, 1] stays in
    [0, 1], and an image constant along ``axis`` is returned unchanged.
    """
    if not 0 <= intensity <= 1:
        raise ValueError(f"ghost: intensity: got {intensity!r}; expected 0 <= intensity <= 1")
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    s = ghost_shift(n, shift_fraction) % n
    y = x * (1.0 - intensity)
    half = x * (intensity / 2.0)
    out, src = np.moveaxis(y, axis, 0), np.moveaxis(half, axis, 0)  # views
    out[s:] += src[:n - s]  # roll(+s): line r receives line r - s (wrapping)
    out[:s] += src[n - s:]
    out[:n - s] += src[s:]  # roll(-s): line r receives line r + s (wrapping)
    out[n - s:] += src[:s]
    return y


def ghost_shift(n: int, shift_fraction: float) -> int:
    """Ghost offset in pixels for ``n`` phase-encode lines: ``max(1, round(shift_fraction * n))``."""
    return max(1, int(round(shift_fraction * n)))


def rewindow(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Re-window stored display intensities: ``(x - (center - width / 2)) / width``, clipped.

    ``center`` and ``width`` are in display-range units: ``width < 1`` is a
    narrower window (more contrast, both ends saturate), ``width > 1`` a wider
    one.  Monotone non-decreasing in ``x``.  This is the "alternate windows"
    family for images that are already windowed; true alternate CT windows
    from Hounsfield units are made at extraction by the recipe's
    ``ct_windows`` setting (see ``pipeline.core.slices.CT_WINDOWS``).
    """
    if not width > 0:
        raise ValueError(f"rewindow: width: got {width!r}; expected > 0")
    y = np.asarray(x, dtype=np.float64) - (center - width / 2.0)
    y /= width
    return np.clip(y, 0.0, 1.0, out=y)
