"""Out-of-distribution perturbations of display-normalised images (the ``ood`` config).

The robustness axis of RadVUQA: the test split's images, each degraded by one
*family* of acquisition or display artefact at one named *strength*.  This
module is the pure core (numpy only, no Beam): the Beam shell calls
:func:`plan` to decide which ``(family, level)`` pairs each test image gets,
:func:`perturb` to make the pixels and :func:`describe` for the parameters
stored with each row.

Conventions
-----------
* Input: a float array with values in ``[0, 1]`` (display-normalised, i.e.
  already windowed), either a 2D slice ``[rows, cols]`` in the display
  convention or a 3D volume ``[k, j, i]`` (axial slices, each ``[rows, cols]``
  in display orientation, as the volume-level recipe stores them).  Output: a
  new ``float32`` array of the same shape, clipped to ``[0, 1]``.  The input is
  never modified.
* Units: intensities (noise sigmas, amplitudes, window centre and width) are
  fractions of the ``[0, 1]`` display range; lengths (blur sigma, block
  factor, ghost shift) are pixels of the stored grid, or voxels along every
  axis of a volume (the grid index, not millimetres).
* The phase-encode axis of :func:`ghost` is the rows axis (``-2``): rows of a
  2D slice, ``j`` (the rows of each axial slice) of a volume.
* Randomness: only the *stochastic* families (:data:`STOCHASTIC`: the two
  noises and the bias field) draw numbers, from
  ``keys.rng(seed, key, f"ood/{family}/{strength}")`` and nothing else.  The
  other families are fixed functions of ``(array, family, strength)``, so
  :func:`describe` records everything that made their output.

Determinism
-----------
Same inputs give identical bytes on every machine running the same numpy.
numpy dispatches per-pixel ``exp``, ``cos`` and ``power`` to CPU-specific
SIMD code (SVML on AVX-512) whose last bits differ between machines, and
summing reductions may be reordered; so per-pixel work here uses only
``+ - * /``, ``sqrt``, comparisons and fixed-order accumulation, which
IEEE 754 rounds identically everywhere.  The few transcendental values needed
(Gaussian kernel taps) come from :mod:`decimal`, which is pure software; the
gamma curve uses dyadic exponents (square roots and products); the bias field
uses Legendre polynomials, not cosines; the image mean is an exact integer sum.

Changing :data:`PARAMETERS` or any function here changes every ``ood``
corpus: bump :data:`VERSION`, which :func:`describe` stores in each row.

Parameters per level (:data:`PARAMETERS`, the single source of the numbers)
---------------------------------------------------------------------------
=================== ============================ ========== ========== ==========
family              parameter (unit)             mild       moderate   severe
=================== ============================ ========== ========== ==========
gaussian_noise      sigma (display range)        0.02       0.05       0.10
rician_noise        sigma (display range)        0.02       0.05       0.10
blur                sigma_px (pixels / voxels)   0.75       1.5        3.0
contrast            factor (about the mean)      0.75       0.5        0.3
gamma               gamma (exponent)             1.25       1.75       2.5
downsample_upsample factor (pixels per block)    2          3          4
bias_field          amplitude (max abs(f - 1))   0.1        0.2        0.35
ghosting            intensity (ghost fraction)   0.1        0.2        0.35
window_shift        center, width (display)      0.55, 0.8  0.6, 0.6   0.65, 0.4
=================== ============================ ========== ========== ==========

Fixed for every level: blur ``truncate`` 4 sigma; downsample ``interpolation``
linear; bias field ``degree`` 3; ghosting ``shift_fraction`` 0.25 of the
phase-encode field of view.  ``window_shift`` re-windows the stored display
intensities (the "alternate windows" of already-windowed images); true
alternate CT windows from Hounsfield units are made at extraction by the
recipe's ``ct_windows`` setting.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np

from pipeline.core import keys as keys_mod
from pipeline.core.artefacts import (
    add_gaussian_noise,
    add_rician_noise,
    apply_gamma,
    bias_field,
    downsample_upsample,
    dyadic,
    finish,
    gaussian_blur,
    ghost,
    rewindow,
    scale_contrast,
)

#: Bumped whenever a number in PARAMETERS or the maths of a family changes.
VERSION = 1

FAMILIES: tuple[str, ...] = (
    "gaussian_noise",
    "rician_noise",
    "blur",
    "contrast",
    "gamma",
    "downsample_upsample",
    "bias_field",
    "ghosting",
    "window_shift",
)

LEVELS: tuple[str, ...] = ("mild", "moderate", "severe")

#: Families whose output depends on ``(seed, key)``; the others are fixed maps.
STOCHASTIC: frozenset[str] = frozenset({"gaussian_noise", "rician_noise", "bias_field"})

#: ``{family: {level: parameters}}``; units in the module docstring.
PARAMETERS: dict[str, dict[str, dict]] = {
    "gaussian_noise": {
        "mild": {"sigma": 0.02},
        "moderate": {"sigma": 0.05},
        "severe": {"sigma": 0.10},
    },
    "rician_noise": {
        "mild": {"sigma": 0.02},
        "moderate": {"sigma": 0.05},
        "severe": {"sigma": 0.10},
    },
    "blur": {
        "mild": {"sigma_px": 0.75, "truncate": 4.0},
        "moderate": {"sigma_px": 1.5, "truncate": 4.0},
        "severe": {"sigma_px": 3.0, "truncate": 4.0},
    },
    "contrast": {
        "mild": {"factor": 0.75},
        "moderate": {"factor": 0.5},
        "severe": {"factor": 0.3},
    },
    "gamma": {
        "mild": {"gamma": 1.25},
        "moderate": {"gamma": 1.75},
        "severe": {"gamma": 2.5},
    },
    "downsample_upsample": {
        "mild": {"factor": 2, "interpolation": "linear"},
        "moderate": {"factor": 3, "interpolation": "linear"},
        "severe": {"factor": 4, "interpolation": "linear"},
    },
    "bias_field": {
        "mild": {"amplitude": 0.1, "degree": 3},
        "moderate": {"amplitude": 0.2, "degree": 3},
        "severe": {"amplitude": 0.35, "degree": 3},
    },
    "ghosting": {
        "mild": {"intensity": 0.1, "shift_fraction": 0.25},
        "moderate": {"intensity": 0.2, "shift_fraction": 0.25},
        "severe": {"intensity": 0.35, "shift_fraction": 0.25},
    },
    "window_shift": {
        "mild": {"center": 0.55, "width": 0.8},
        "moderate": {"center": 0.6, "width": 0.6},
        "severe": {"center": 0.65, "width": 0.4},
    },
}


# --------------------------------------------------------------------------- checks


def _check_name(where: str, argument: str, value: object, expected: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in expected:
        raise ValueError(f"{where}: {argument}: got {value!r}; expected one of {expected}")
    return value


def _check_array(where: str, array: object) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: array: dtype {a.dtype}; expected a real (float) array")
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(
            f"{where}: array: shape {a.shape}; expected a non-empty 2D [rows, cols] slice "
            "or 3D [k, j, i] volume"
        )
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        bad = int(a.size - np.count_nonzero(finite))
        raise ValueError(
            f"{where}: array: {bad} non-finite value(s) (nan/inf) in shape {a.shape}; "
            "expected finite values in [0, 1]"
        )
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{where}: array: values in [{lo:g}, {hi:g}]; expected values in [0, 1]")
    return a


# --------------------------------------------------------------------------- API


def describe(family: str, strength: str) -> dict:
    """JSON-ready record of a perturbation: family, strength, version and parameters.

    A fresh copy: ``{"family", "strength", "version", "stochastic",
    "parameters": PARAMETERS[family][strength]}``.
    """
    _check_name("describe", "family", family, FAMILIES)
    _check_name("describe", "strength", strength, LEVELS)
    return {
        "family": family,
        "strength": strength,
        "version": VERSION,
        "stochastic": family in STOCHASTIC,
        "parameters": copy.deepcopy(PARAMETERS[family][strength]),
    }


def perturb(array: np.ndarray, family: str, strength: str, *, seed: int, key: str) -> np.ndarray:
    """Apply ``family`` at ``strength`` to a display-normalised slice or volume.

    Parameters
    ----------
    array
        Values in [0, 1], finite; 2D ``[rows, cols]`` or 3D ``[k, j, i]``.
    family
        One of :data:`FAMILIES`.
    strength
        One of :data:`LEVELS`; the numbers are ``PARAMETERS[family][strength]``.
    seed, key
        Recipe seed and the image's stable key; stochastic families draw from
        ``keys.rng(seed, key, f"ood/{family}/{strength}")``.

    Returns
    -------
    numpy.ndarray
        ``float32``, same shape, values in [0, 1]; identical bytes for
        identical arguments.

    Raises
    ------
    ValueError
        Unknown family or strength, or an array that is not finite, not in
        [0, 1] or not 2D/3D; the message names the argument, the value found
        and the values expected.
    """
    _check_name("perturb", "family", family, FAMILIES)
    _check_name("perturb", "strength", strength, LEVELS)
    x = _check_array("perturb", array)
    p = PARAMETERS[family][strength]
    gen = keys_mod.rng(seed, key, f"ood/{family}/{strength}") if family in STOCHASTIC else None
    if family == "gaussian_noise":
        y = add_gaussian_noise(x, p["sigma"], gen)
    elif family == "rician_noise":
        y = add_rician_noise(x, p["sigma"], gen)
    elif family == "blur":
        y = gaussian_blur(x, p["sigma_px"], p["truncate"])
    elif family == "contrast":
        y = scale_contrast(x, p["factor"])
    elif family == "gamma":
        y = apply_gamma(x, p["gamma"])
    elif family == "downsample_upsample":
        y = downsample_upsample(x, p["factor"], p["interpolation"])
    elif family == "bias_field":
        y = bias_field(x.shape, p["amplitude"], p["degree"], gen)
        y *= x
    elif family == "ghosting":
        y = ghost(x, p["intensity"], p["shift_fraction"], axis=-2)
    else:  # window_shift
        y = rewindow(x, p["center"], p["width"])
    return finish(y)


def plan(
    keys: Iterable[str],
    families: Iterable[str] = FAMILIES,
    levels: Iterable[str] = LEVELS,
    *,
    seed: int,
    per_image: int = 1,
) -> list[tuple[str, str, str]]:
    """Assign ``per_image`` distinct ``(family, level)`` pairs to every image key.

    Each key draws from ``keys.rng(seed, key, "ood/plan")`` without replacement
    among the allowed pairs, listed in the canonical :data:`FAMILIES` x
    :data:`LEVELS` order whatever order ``families`` and ``levels`` come in.
    A key's pairs therefore depend on the key, the seed and the allowed sets
    only: not on the other keys, their order, or the shard they fall in.

    Returns
    -------
    list of (key, family, level)
        Sorted by key (duplicates collapsed), then canonical family and level order.
    """
    fams = {_check_name("plan", "families", f, FAMILIES) for f in families}
    levs = {_check_name("plan", "levels", s, LEVELS) for s in levels}
    pairs = [(f, s) for f in FAMILIES if f in fams for s in LEVELS if s in levs]
    if not pairs:
        raise ValueError(f"plan: families, levels: got {sorted(fams)}, {sorted(levs)}; "
                         "expected at least one of each")
    if not (isinstance(per_image, int | np.integer) and not isinstance(per_image, bool)
            and 1 <= per_image <= len(pairs)):
        raise ValueError(f"plan: per_image: got {per_image!r}; expected 1..{len(pairs)} "
                         f"(the number of allowed (family, level) pairs)")
    unique = set(keys)
    for key in unique:
        if not isinstance(key, str):
            raise ValueError(f"plan: keys: got {key!r}; expected str keys")
    rank = {pair: i for i, pair in enumerate(pairs)}
    out: list[tuple[str, str, str]] = []
    for key in sorted(unique):
        chosen = keys_mod.choose(keys_mod.rng(seed, key, "ood/plan"), pairs, per_image)
        out.extend((key, f, s) for f, s in sorted(chosen, key=rank.__getitem__))
    return out


def validate_parameters(table: Mapping[str, Mapping[str, Mapping]] = PARAMETERS) -> None:
    """Check that ``table`` covers FAMILIES x LEVELS and its numbers are usable."""
    if tuple(table) != FAMILIES:
        raise ValueError(f"PARAMETERS: families: got {tuple(table)}; expected {FAMILIES}")
    for family, levels in table.items():
        if tuple(levels) != LEVELS:
            raise ValueError(f"PARAMETERS[{family!r}]: levels: got {tuple(levels)}; "
                             f"expected {LEVELS}")
    for level in LEVELS:
        dyadic(table["gamma"][level]["gamma"])


validate_parameters()
