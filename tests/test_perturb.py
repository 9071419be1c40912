"""OOD perturbations (pipeline.core.perturb): contract, determinism, severity and the physics of each family."""

from __future__ import annotations

import hashlib
import json
import math
import random

import numpy as np
import pytest

from pipeline.core import artefacts, keys, perturb
from pipeline.core.perturb import FAMILIES, LEVELS, PARAMETERS, STOCHASTIC

SEED = 20240611
KEY = "a1b2c3d4e5f6a7b8c9d0"
SHAPE_2D = (64, 80)  # rows != cols: catches swapped axes
SHAPE_3D = (12, 40, 48)  # [k, j, i]


def phantom(shape) -> np.ndarray:
    """A body ellipse (0.5 with a gentle gradient), a bright and a dark disc, fine stripes; 0 outside."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    r, c = grids[-2], grids[-1]
    z = grids[0] if len(shape) == 3 else 0.0
    body = (r / 0.85) ** 2 + (c / 0.9) ** 2 + z**2 < 1.0
    x = np.where(body, 0.5 + 0.1 * c, 0.0)
    x = np.where((r + 0.3) ** 2 + (c - 0.3) ** 2 < 0.05, 0.9, x)
    x = np.where((r - 0.35) ** 2 + (c + 0.3) ** 2 < 0.04, 0.15, x)
    stripes = (np.abs(r - 0.2) < 0.2) & (np.abs(c - 0.35) < 0.25)
    cols = np.arange(shape[-1]).reshape((1,) * (len(shape) - 1) + (-1,))
    x = np.where(stripes, 0.35 + 0.3 * (cols % 3 == 0), x)
    return x.astype(np.float32)


IMAGES = {"2d": phantom(SHAPE_2D), "3d": phantom(SHAPE_3D)}
CASES = [(f, lvl, dim) for f in FAMILIES for lvl in LEVELS for dim in ("2d", "3d")]
CASE_IDS = [f"{f}-{lvl}-{dim}" for f, lvl, dim in CASES]


def run(x, family, level, key=KEY, seed=SEED):
    return perturb.perturb(x, family, level, seed=seed, key=key)


def mse(a, b) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(ref, y) -> float:
    return 10.0 * math.log10(1.0 / mse(ref, y))


# --------------------------------------------------------------------------- contract


def test_tables_cover_every_family_and_level():
    assert FAMILIES == tuple(PARAMETERS)
    assert LEVELS == ("mild", "moderate", "severe")
    for family in FAMILIES:
        assert tuple(PARAMETERS[family]) == LEVELS, family
    assert STOCHASTIC <= set(FAMILIES)
    perturb.validate_parameters()


@pytest.mark.parametrize("family, level, dim", CASES, ids=CASE_IDS)
def test_shape_dtype_range_finite(family, level, dim):
    x = IMAGES[dim]
    before = x.copy()
    y = run(x, family, level)
    assert y.shape == x.shape
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_array_equal(x, before)  # the input is never modified
    assert not np.array_equal(y, x), "the perturbation changed nothing"


@pytest.mark.parametrize("family, level, dim", CASES, ids=CASE_IDS)
def test_same_arguments_give_identical_bytes(family, level, dim):
    x = IMAGES[dim]
    assert run(x, family, level).tobytes() == run(x.copy(), family, level).tobytes()


@pytest.mark.parametrize("family, dim", [(f, d) for f in FAMILIES for d in ("2d", "3d")],
                         ids=[f"{f}-{d}" for f in FAMILIES for d in ("2d", "3d")])
def test_key_and_seed_dependence(family, dim):
    x = IMAGES[dim]
    base = run(x, family, "moderate")
    other_key = run(x, family, "moderate", key="another-image")
    other_seed = run(x, family, "moderate", seed=SEED + 1)
    if family in STOCHASTIC:
        assert not np.array_equal(base, other_key)
        assert not np.array_equal(base, other_seed)
    else:  # a fixed map: describe() records everything that made the output
        np.testing.assert_array_equal(base, other_key)
        np.testing.assert_array_equal(base, other_seed)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8],
                         ids=["float16", "float32", "float64", "uint8-binary"])
def test_input_dtypes(dtype):
    x = (IMAGES["2d"] > 0.4).astype(dtype) if dtype == np.uint8 else IMAGES["2d"].astype(dtype)
    y = run(x, "blur", "mild")
    assert y.dtype == np.float32 and y.shape == x.shape


def _severity(family, dim):
    """Damage per level, which must grow from mild to severe."""
    if family == "bias_field":
        # The field's shape is drawn per level; its strength is its amplitude,
        # read off a mid-grey image where the output is 0.5 * field.
        grey = np.full(IMAGES[dim].shape, 0.5, np.float32)
        return [float(np.abs(2.0 * run(grey, family, lvl) - 1.0).max()) for lvl in LEVELS]
    x = IMAGES[dim]
    return [-psnr(x, run(x, family, lvl)) for lvl in LEVELS]


@pytest.mark.parametrize("family, dim", [(f, d) for f in FAMILIES for d in ("2d", "3d")],
                         ids=[f"{f}-{d}" for f in FAMILIES for d in ("2d", "3d")])
def test_severity_grows_from_mild_to_severe(family, dim):
    damage = _severity(family, dim)
    assert damage[0] < damage[1] < damage[2], dict(zip(LEVELS, damage, strict=True))


# --------------------------------------------------------------------------- physics


@pytest.mark.parametrize("level", LEVELS)
def test_gaussian_noise_residual_std_is_sigma(level):
    sigma = PARAMETERS["gaussian_noise"][level]["sigma"]
    grey = np.full((128, 128), 0.5, np.float32)
    residual = run(grey, "gaussian_noise", level).astype(np.float64) - 0.5
    assert residual.std() == pytest.approx(sigma, rel=0.03)
    assert abs(residual.mean()) < 4 * sigma / 128


@pytest.mark.parametrize("level", LEVELS)
def test_rician_noise_lifts_zero_background_by_rayleigh_mean(level):
    sigma = PARAMETERS["rician_noise"][level]["sigma"]
    background = run(np.zeros((128, 128), np.float32), "rician_noise", level)
    assert background.min() >= 0.0
    assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2.0), rel=0.02)
    # Rayleigh spread, not Gaussian: std = sigma * sqrt((4 - pi) / 2).
    assert background.std() == pytest.approx(sigma * math.sqrt((4 - math.pi) / 2), rel=0.03)
    # At high SNR it behaves like Gaussian noise of the same sigma.
    bright = run(np.full((128, 128), 0.6, np.float32), "rician_noise", level).astype(np.float64)
    assert bright.std() == pytest.approx(sigma, rel=0.05)
    assert bright.mean() == pytest.approx(math.sqrt(0.36 + sigma**2), abs=4 * sigma / 128)


def _high_frequency_energy(x):
    spectrum = np.abs(np.fft.fftn(np.asarray(x, np.float64) - np.mean(x))) ** 2
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in x.shape], indexing="ij")
    radius = np.sqrt(sum(f**2 for f in freqs))
    return float(spectrum[radius > 0.25].sum())


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_blur_removes_high_frequencies_and_keeps_the_mean(dim):
    noise = keys.rng(SEED, "texture", "test").random(IMAGES[dim].shape).astype(np.float32)
    energy = [_high_frequency_energy(noise)]
    for level in LEVELS:
        y = run(noise, "blur", level)
        energy.append(_high_frequency_energy(y))
        # Half-sample symmetric padding + normalised kernel: the sum is preserved.
        assert float(y.astype(np.float64).mean()) == pytest.approx(float(noise.mean()), abs=2e-6)
    assert energy[1] < 0.3 * energy[0]
    assert energy[0] > energy[1] > energy[2] > energy[3]


@pytest.mark.parametrize("level", LEVELS)
def test_blur_impulse_response_has_variance_sigma_squared(level):
    sigma = PARAMETERS["blur"][level]["sigma_px"]
    delta = np.zeros((41, 43), np.float32)
    delta[20, 21] = 1.0
    y = run(delta, "blur", level).astype(np.float64)
    assert y.sum() == pytest.approx(1.0, abs=1e-6)
    t_rows, t_cols = np.arange(41) - 20, np.arange(43) - 21
    assert (y.sum(axis=1) * t_rows**2).sum() == pytest.approx(sigma**2, rel=0.02)
    assert (y.sum(axis=0) * t_cols**2).sum() == pytest.approx(sigma**2, rel=0.02)
    np.testing.assert_allclose(y, y[::-1, ::-1], atol=1e-9)  # symmetric kernel


def test_blur_of_a_constant_volume_is_the_constant():
    y = run(np.full(SHAPE_3D, 0.25, np.float32), "blur", "severe")
    np.testing.assert_allclose(y, 0.25, atol=1e-6)


@pytest.mark.parametrize("level", LEVELS)
def test_contrast_scales_about_the_mean(level):
    factor = PARAMETERS["contrast"][level]["factor"]
    x = IMAGES["2d"].astype(np.float64)
    y = run(x, "contrast", level).astype(np.float64)
    m = x.mean()
    np.testing.assert_allclose(y - m, factor * (x - m), atol=1e-6)
    assert y.mean() == pytest.approx(m, abs=1e-6)


@pytest.mark.parametrize("level", LEVELS)
def test_gamma_fixes_ends_and_maps_half_to_half_power_gamma(level):
    gamma = PARAMETERS["gamma"][level]["gamma"]
    ramp = np.linspace(0.0, 1.0, 257, dtype=np.float32).reshape(1, -1).repeat(2, axis=0)
    y = run(ramp, "gamma", level)
    assert y[0, 0] == 0.0 and y[0, -1] == 1.0
    assert y[0, 128] == pytest.approx(0.5**gamma, abs=1e-7)
    np.testing.assert_allclose(y, ramp.astype(np.float64) ** gamma, atol=2e-7)
    assert (np.diff(y[0]) >= 0).all()


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 2.5, 3.0, 1.0 / 256],
                         ids=lambda g: f"gamma={g:g}")
def test_apply_gamma_below_and_above_one(gamma):
    x = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(artefacts.apply_gamma(x, gamma), x**gamma, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("gamma", [1.3, 0.0, -0.5, 1.0 / 3.0, 1.0 / 512],
                         ids=["1.3", "0", "negative", "third", "too-fine"])
def test_apply_gamma_rejects_non_dyadic_or_non_positive(gamma):
    with pytest.raises(ValueError, match=r"apply_gamma: gamma: got .*; expected a dyadic rational"):
        artefacts.apply_gamma(np.zeros(3), gamma)


def checkerboard(shape) -> np.ndarray:
    """Period 2 pixels along every axis: alternating 0 and 1."""
    return (np.indices(shape).sum(axis=0) % 2).astype(np.float32)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [SHAPE_2D, (37, 53), SHAPE_3D, (7, 11, 13)],
                         ids=["64x80", "37x53", "12x40x48", "7x11x13"])
def test_downsample_upsample_flattens_checkerboard_finer_than_factor(level, shape):
    x = checkerboard(shape)
    y = run(x, "downsample_upsample", level).astype(np.float64)
    assert y.shape == shape
    assert y.mean() == pytest.approx(0.5, abs=0.05)
    assert y.std() < 0.15 * x.std()  # period 2 <= factor: nearly flat (exactly flat when it divides)
    factor = PARAMETERS["downsample_upsample"][level]["factor"]
    if all(n % factor == 0 for n in shape) and factor % 2 == 0:
        np.testing.assert_array_equal(y, 0.5)


def test_downsample_upsample_nearest_replicates_block_means_and_handles_partial_blocks():
    x = np.arange(20, dtype=np.float64).reshape(4, 5) / 19.0
    y = artefacts.downsample_upsample(x, 2, "nearest")
    # rows {0,1},{2,3}; columns {0,1},{2,3},{4} (the partial last block averages what it has).
    expected_small = np.array([[0 + 1 + 5 + 6, 2 + 3 + 7 + 8, (4 + 9) * 2],
                               [10 + 11 + 15 + 16, 12 + 13 + 17 + 18, (14 + 19) * 2]]) / 4.0 / 19.0
    np.testing.assert_allclose(y, np.repeat(np.repeat(expected_small, 2, 0), 2, 1)[:, :5], atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 53), (7, 11, 13), (1, 9)], ids=["37x53", "7x11x13", "1x9"])
def test_downsample_upsample_keeps_constants_and_linear_keeps_interior_ramps(shape):
    np.testing.assert_allclose(artefacts.downsample_upsample(np.full(shape, 0.3), 3), 0.3, atol=1e-6)
    ramp = np.broadcast_to(np.arange(60, dtype=np.float64) / 59.0, (4, 60))
    y = artefacts.downsample_upsample(ramp, 4, "linear")  # centres at 1.5, 5.5, ..., 57.5
    np.testing.assert_allclose(y[:, 2:58], ramp[:, 2:58], atol=1e-6)


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("level", LEVELS)
def test_bias_field_is_smooth_positive_multiplicative(level, dim):
    amplitude = PARAMETERS["bias_field"][level]["amplitude"]
    shape = IMAGES[dim].shape
    field = run(np.full(shape, 0.5, np.float32), "bias_field", level).astype(np.float64) / 0.5
    assert field.min() >= 1.0 - amplitude - 1e-6 and field.max() <= 1.0 + amplitude + 1e-6
    assert np.abs(field - 1.0).max() == pytest.approx(amplitude, abs=1e-6)  # normalised
    for axis in range(field.ndim):
        n = shape[axis]
        # A degree-3 polynomial on [-1, 1] sampled every h = 2/(n-1): second
        # differences are O(amplitude h**2); a rough field would give O(amplitude).
        second = np.abs(np.diff(field, n=2, axis=axis)).max()
        assert second <= 20.0 * amplitude * (2.0 / (n - 1)) ** 2 + 1e-6, (axis, second)
    # Multiplicative: zero stays zero, and doubling the image doubles the output.
    x = IMAGES[dim]
    y = run(x, "bias_field", level)
    assert (y[x == 0] == 0).all()
    low = run(np.full(shape, 0.2, np.float32), "bias_field", level).astype(np.float64)
    high = run(np.full(shape, 0.4, np.float32), "bias_field", level).astype(np.float64)
    np.testing.assert_allclose(high, 2.0 * low, rtol=1e-6)


def _circular_autocorrelation(profile):
    p = profile - profile.mean()
    return np.array([np.dot(p, np.roll(p, lag)) for lag in range(len(p))])


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("level", LEVELS)
def test_ghosting_replicates_along_the_phase_axis(level, dim):
    shape = IMAGES[dim].shape
    x = np.zeros(shape, np.float32)
    x[..., 6:14, 20:34] = 0.8  # a block on the rows (phase-encode) axis
    y = run(x, "ghosting", level).astype(np.float64)
    p = PARAMETERS["ghosting"][level]
    n = shape[-2]
    s = artefacts.ghost_shift(n, p["shift_fraction"])
    assert s == round(0.25 * n)
    profile = y.sum(axis=tuple(a for a in range(y.ndim) if a != y.ndim - 2))
    ac = _circular_autocorrelation(profile)
    lags = np.arange(n)
    away = np.minimum(lags, n - lags) > 8  # beyond the block's own width
    assert np.minimum(lags[away][np.argmax(ac[away])], n - lags[away][np.argmax(ac[away])]) == s
    # Each replica carries intensity a/2 of the object; the mean is kept.
    a = p["intensity"]
    np.testing.assert_allclose(y[..., 6 + s:14 + s, 20:34], 0.8 * a / 2, atol=1e-6)
    np.testing.assert_allclose(y[..., 6:14, 20:34], 0.8 * (1 - a), atol=1e-6)
    assert y.mean() == pytest.approx(float(x.mean()), abs=1e-6)


def test_ghosting_leaves_the_frequency_axis_alone():
    cols = np.linspace(0.0, 1.0, SHAPE_2D[1], dtype=np.float32)
    varies_along_cols = np.broadcast_to(cols, SHAPE_2D).copy()  # constant along the phase axis
    np.testing.assert_allclose(run(varies_along_cols, "ghosting", "severe"), varies_along_cols,
                               atol=1e-7)
    rows = np.linspace(0.0, 1.0, SHAPE_2D[0], dtype=np.float32)[:, None]
    varies_along_rows = np.broadcast_to(rows, SHAPE_2D).copy()
    y = run(varies_along_rows, "ghosting", "severe")
    assert not np.allclose(y, varies_along_rows)
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], SHAPE_2D))  # columns identical


@pytest.mark.parametrize("shift_fraction", [0.25, 0.1, 0.5], ids=["quarter", "tenth", "half"])
def test_ghosting_equals_its_k_space_modulation(shift_fraction):
    """(1-a) x + a/2 (roll(x, s) + roll(x, -s)) is ifft(m * fft(x)), m(k) = 1 - a + a cos(2 pi k s/N)."""
    x = keys.rng(SEED, "ghost", "test").random((50, 30))
    a = 0.3
    n = x.shape[0]
    s = artefacts.ghost_shift(n, shift_fraction)
    k = np.fft.fftfreq(n) * n  # signed line index
    m = (1 - a) + a * np.cos(2 * np.pi * k * s / n)
    expected = np.fft.ifft(m[:, None] * np.fft.fft(x, axis=0), axis=0)
    assert np.abs(expected.imag).max() < 1e-12
    np.testing.assert_allclose(artefacts.ghost(x, a, shift_fraction, axis=0), expected.real,
                               atol=1e-12)
    assert m[0] == 1.0  # the k-space centre line is untouched


@pytest.mark.parametrize("level", LEVELS)
def test_window_shift_is_monotone_and_maps_the_window_to_the_full_range(level):
    p = PARAMETERS["window_shift"][level]
    lower, upper = p["center"] - p["width"] / 2, p["center"] + p["width"] / 2
    ramp = np.linspace(0.0, 1.0, 1001, dtype=np.float32).reshape(1, -1)
    y = run(ramp, "window_shift", level)[0].astype(np.float64)
    assert (np.diff(y) >= 0).all()
    r = ramp[0].astype(np.float64)
    assert (y[r <= lower] == 0).all() and (y[r >= upper] == 1).all()
    inside = (r > lower) & (r < upper)
    np.testing.assert_allclose(y[inside], (r[inside] - lower) / p["width"], atol=1e-6)


def test_rewindow_wider_window_reduces_contrast():
    x = np.linspace(0.0, 1.0, 11)
    y = artefacts.rewindow(x, 0.5, 2.0)
    np.testing.assert_allclose(y, 0.25 + x / 2.0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "array, family, strength, message",
    [
        (IMAGES["2d"], "speckle", "mild",
         r"perturb: family: got 'speckle'; expected one of \('gaussian_noise', "),
        (IMAGES["2d"], "blur", "extreme",
         r"perturb: strength: got 'extreme'; expected one of \('mild', 'moderate', 'severe'\)"),
        (np.where(IMAGES["2d"] > 0.8, np.nan, IMAGES["2d"]), "blur", "mild",
         r"perturb: array: \d+ non-finite value\(s\) \(nan/inf\) in shape \(64, 80\); "
         r"expected finite values in \[0, 1\]"),
        (np.full((4, 4), np.inf), "gamma", "mild", r"perturb: array: 16 non-finite"),
        (IMAGES["2d"] * 255, "gamma", "mild",
         r"perturb: array: values in \[0, 229\.5\]; expected values in \[0, 1\]"),
        (IMAGES["2d"] - 0.5, "gamma", "mild", r"perturb: array: values in \[-0\.5, 0\.4\]"),
        (np.zeros(5), "blur", "mild", r"perturb: array: shape \(5,\); expected a non-empty 2D"),
        (np.zeros((2, 2, 2, 2)), "blur", "mild", r"perturb: array: shape \(2, 2, 2, 2\)"),
        (np.zeros((0, 4)), "blur", "mild", r"perturb: array: shape \(0, 4\)"),
        (np.zeros((2, 2), complex), "blur", "mild", r"perturb: array: dtype complex128"),
    ],
    ids=["unknown-family", "unknown-level", "nan", "inf", "out-of-range-255",
         "negative", "1d", "4d", "empty", "complex"],
)
def test_errors_name_argument_value_and_expectation(array, family, strength, message):
    with pytest.raises(ValueError, match=message):
        run(array, family, strength)


def test_parameter_table_is_validated():
    table = json.loads(json.dumps(PARAMETERS))
    table["gamma"]["mild"]["gamma"] = 1.3
    with pytest.raises(ValueError, match=r"gamma: got 1\.3"):
        perturb.validate_parameters(table)
    del table["blur"]["severe"]
    with pytest.raises(ValueError, match=r"PARAMETERS\['blur'\]: levels: got \('mild', 'moderate'\)"):
        perturb.validate_parameters(table)


# --------------------------------------------------------------------------- describe, plan


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_is_json_ready_copy_of_the_table(family):
    for level in LEVELS:
        d = perturb.describe(family, level)
        assert json.loads(json.dumps(d)) == d
        assert d == {"family": family, "strength": level, "version": perturb.VERSION,
                     "stochastic": family in STOCHASTIC,
                     "parameters": PARAMETERS[family][level]}
        d["parameters"]["injected"] = 1
        assert "injected" not in PARAMETERS[family][level]
    with pytest.raises(ValueError, match=r"describe: strength: got 'worst'"):
        perturb.describe(family, "worst")


IMAGE_KEYS = [keys.stable_key("image", i) for i in range(40)]


@pytest.mark.parametrize("per_image", [1, 3, 27], ids=["1", "3", "all-27"])
def test_plan_is_deterministic_order_free_and_distinct(per_image):
    result = perturb.plan(IMAGE_KEYS, FAMILIES, LEVELS, seed=SEED, per_image=per_image)
    shuffled = IMAGE_KEYS[:]
    random.Random(7).shuffle(shuffled)
    assert perturb.plan(shuffled + IMAGE_KEYS[:5], list(reversed(FAMILIES)), LEVELS[::-1],
                        seed=SEED, per_image=per_image) == result
    assert perturb.plan(IMAGE_KEYS, FAMILIES, LEVELS, seed=SEED, per_image=per_image) == result
    assert len(result) == per_image * len(IMAGE_KEYS)
    by_key: dict[str, list] = {}
    for key, family, level in result:
        assert family in FAMILIES and level in LEVELS
        by_key.setdefault(key, []).append((family, level))
    assert sorted(by_key) == sorted(IMAGE_KEYS)
    assert all(len(set(pairs)) == per_image for pairs in by_key.values())
    # Shard independence: planning any subset gives those keys the same pairs.
    half = perturb.plan(IMAGE_KEYS[::2], FAMILIES, LEVELS, seed=SEED, per_image=per_image)
    assert half == [row for row in result if row[0] in set(IMAGE_KEYS[::2])]


def test_plan_depends_on_seed_and_spreads_over_families():
    many = [keys.stable_key("img", i) for i in range(900)]
    a = perturb.plan(many, FAMILIES, LEVELS, seed=1, per_image=1)
    assert a != perturb.plan(many, FAMILIES, LEVELS, seed=2, per_image=1)
    counts = {f: sum(1 for _, fam, _ in a if fam == f) for f in FAMILIES}
    assert all(60 <= c <= 140 for c in counts.values()), counts  # ~100 each


def test_plan_respects_the_allowed_subsets_and_rejects_bad_arguments():
    subset = perturb.plan(IMAGE_KEYS, ["blur", "gamma"], ["severe"], seed=SEED, per_image=2)
    assert {(f, lvl) for _, f, lvl in subset} == {("blur", "severe"), ("gamma", "severe")}
    with pytest.raises(ValueError, match=r"plan: per_image: got 3; expected 1\.\.2"):
        perturb.plan(IMAGE_KEYS, ["blur", "gamma"], ["severe"], seed=SEED, per_image=3)
    with pytest.raises(ValueError, match=r"plan: families: got 'noise'; expected one of"):
        perturb.plan(IMAGE_KEYS, ["noise"], LEVELS, seed=SEED)
    with pytest.raises(ValueError, match=r"plan: levels: got 'hard'"):
        perturb.plan(IMAGE_KEYS, FAMILIES, ["hard"], seed=SEED)
    with pytest.raises(ValueError, match=r"plan: families, levels: got \[\], \['mild'\]"):
        perturb.plan(IMAGE_KEYS, [], ["mild"], seed=SEED)
    assert perturb.plan([], FAMILIES, LEVELS, seed=SEED) == []


# --------------------------------------------------------------------------- golden bytes

#: sha256 over every family x level output for the two phantoms.  Any change
#: here changes every ``ood`` corpus already built: bump perturb.VERSION and
#: update the digest in the same commit.
GOLDEN_SHA256 = "6960b3e744d36665372586ac53fca7f4e2b5f34f2e33dc99ce6513a5bd96a4a1"


def test_outputs_match_the_recorded_bytes():
    h = hashlib.sha256()
    for family, level, dim in CASES:
        h.update(f"{family}/{level}/{dim}".encode())
        h.update(run(IMAGES[dim], family, level).tobytes())
    assert h.hexdigest() == GOLDEN_SHA256
