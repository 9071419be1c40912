"""The built-in phantoms: deterministic synthetic CT/MR volumes with masks.

``make_phantom(index)`` is pure: a canonical volume (``[i, j, k]``, i → the
patient's left, j → posterior, k → superior; see ``docs/conventions.md``),
per-structure masks under TotalSegmentator's class names, and the grid.  The
anatomy is schematic but laid out like a real abdomen and lower chest, and
asymmetric where it matters: the liver and IVC on the patient's right, the
spleen, stomach and aorta on the left, lung lobes partitioned by oblique
fissures, five stacked vertebrae, a colon in two limbs.  Patients vary where a
question should depend on the image: every fourth one has mirrored abdominal
organs (:func:`situs_inversus`: half of them, so that a structure's side and its
left/right relations to others are questions about the image), either kidney sits
lower (half each), the colon's limbs
are joined by a transverse segment in about half of them, and lung nodules
(one to three, in one lung) grow on either side.  Some patients carry lesions
(``liver_tumor``, ``lung_nodules``, ``kidney_cyst_left``/``right``), which
overlap their organ as in TotalSegmentator.  Longitudinal patients' lesions follow
scripted timelines (:data:`TIMELINES`).

Writing the phantoms as input folders is :mod:`pipeline.inputs.sample`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.core import keys

#: Mutually exclusive organs, in precedence order (earlier wins on overlap).
ORGANS = (
    "vertebrae_T11", "vertebrae_T12", "vertebrae_L1", "vertebrae_L2", "vertebrae_L3",
    "aorta", "inferior_vena_cava", "kidney_left", "kidney_right", "spleen", "pancreas",
    "gallbladder", "stomach", "liver", "colon",
    "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
)
LESIONS = ("liver_tumor", "lung_nodules", "kidney_cyst_left", "kidney_cyst_right")

CT_HU = {
    "liver": 60, "gallbladder": 10, "spleen": 45, "stomach": 25, "pancreas": 40,
    "kidney_left": 30, "kidney_right": 30, "aorta": 180, "inferior_vena_cava": 120,
    "colon": -20, "lung": -850, "vertebra": 450,
    "liver_tumor": 15, "lung_nodules": 30, "kidney_cyst_left": 5, "kidney_cyst_right": 5,
}
MR_SIGNAL = {
    "liver": 450, "gallbladder": 1100, "spleen": 650, "stomach": 300, "pancreas": 500,
    "kidney_left": 600, "kidney_right": 600, "aorta": 100, "inferior_vena_cava": 120,
    "colon": 350, "lung": 30, "vertebra": 300,
    "liver_tumor": 800, "lung_nodules": 400, "kidney_cyst_left": 1200, "kidney_cyst_right": 1200,
}


@dataclass(frozen=True)
class Phantom:
    """A canonical phantom volume (CT in HU, MR arbitrary units ≥ 0) with its masks."""

    name: str
    patient_id: str
    modality: str
    image: np.ndarray
    masks: dict
    spacing: tuple
    origin: tuple

    def __post_init__(self) -> None:
        for label, m in self.masks.items():
            if m.shape != self.image.shape or m.dtype != bool:
                raise ValueError(f"Phantom mask {label}: shape/dtype {m.shape}/{m.dtype}")


def modality_of(index: int) -> str:
    return "MR" if index % 10 in (3, 7, 9) else "CT"


def lesions_of(index: int) -> tuple[str, ...]:
    """Which lesions patient ``index`` carries (deterministic)."""
    out = []
    if index % 3 == 0:
        out.append("liver_tumor")
    if index % 4 == 1:
        out.append("lung_nodules")
    if index % 5 == 2:
        out.append("kidney_cyst_left")
    if index % 5 == 4:
        out.append("kidney_cyst_right")
    return tuple(out)


def _ellipsoid(X, Y, Z, centre, radii):
    return ((X - centre[0]) / radii[0]) ** 2 + ((Y - centre[1]) / radii[1]) ** 2 + (
        (Z - centre[2]) / radii[2]) ** 2 <= 1.0


def _bar_x(X, Y, Z, y, z, radius, x_range):
    """A cylinder along x (patient left-right) at height ``z``, from ``x_range[0]`` to ``[1]``."""
    return ((Y - y) ** 2 + (Z - z) ** 2 <= radius**2) & (X >= x_range[0]) & (X <= x_range[1])


def situs_inversus(index: int) -> bool:
    """Phantoms whose abdominal organs are mirrored (liver on the left, spleen on the
    right): laterality must be read from the image, never from a structure's name."""
    return index % 4 in (1, 2)  # independent of the colon (index % 2) and nodule side ((index // 2) % 2)


def _tube(X, Y, Z, centre_xy, radius, z_range):
    return ((X - centre_xy[0]) ** 2 + (Y - centre_xy[1]) ** 2 <= radius**2) & (
        Z >= z_range[0]) & (Z <= z_range[1])


def make_phantom(
    index: int, seed: int = 0, *, lesions: Mapping[str, float] | None = None,
    modality: str | None = None, timepoint: int = 0,
    lesion_values: Mapping[str, float] | None = None,
) -> Phantom:
    """Phantom number ``index`` (pure and deterministic).

    ``lesions`` overrides which lesions are present and scales their radius
    (``{"liver_tumor": 1.3}``); the anatomy depends on ``index`` only, so the
    timepoints of one longitudinal patient share it.  ``timepoint`` changes the
    noise; ``modality`` overrides the CT/MR rule; ``lesion_values`` overrides a
    lesion's intensity (HU for CT).
    """
    g = keys.rng(seed, f"phantom/{index}", "anatomy")
    ni = nj = 96 + 2 * int(g.integers(-4, 5))
    nk = 56 + int(g.integers(-3, 4))
    s_xy = float(np.round(g.uniform(3.4, 3.8), 3))
    spacing = (s_xy, s_xy, 5.0)
    origin = (
        float(np.round(-(ni - 1) * s_xy / 2 + g.uniform(-20, 20), 3)),
        float(np.round(-(nj - 1) * s_xy / 2 + g.uniform(-20, 20), 3)),
        float(np.round(g.uniform(-400, -200), 3)),
    )
    # Millimetres relative to the body centre (x → left, y → posterior) and the bottom slice.
    ci, cj = (ni - 1) / 2 + g.uniform(-2, 2), (nj - 1) / 2 + g.uniform(-2, 2)
    i, j, k = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij", sparse=True)
    X, Y, Z = (i - ci) * s_xy, (j - cj) * s_xy, k * 5.0

    def jit(c, d=6.0):
        return tuple(v + g.uniform(-d, d) for v in c)

    def rad(r):
        f = g.uniform(0.9, 1.1)
        return tuple(v * f for v in r)

    body_a, body_b = 150.0 * g.uniform(0.93, 1.03), 110.0 * g.uniform(0.93, 1.03)
    body = (X / body_a) ** 2 + (Y / body_b) ** 2 <= 1.0
    inner = (X / (body_a - 10)) ** 2 + (Y / (body_b - 10)) ** 2 <= 1.0
    shapes: dict[str, np.ndarray] = {}
    z0 = 20.0 + g.uniform(-4, 4)
    for n, name in enumerate(("vertebrae_L3", "vertebrae_L2", "vertebrae_L1",
                              "vertebrae_T12", "vertebrae_T11")):
        lo = z0 + n * 36.0
        shapes[name] = _tube(X, Y, Z, (0.0, 75.0), 18.0, (lo, lo + 28.0))
    # Variation between patients, by index so that every few patients show each form:
    # mirrored abdominal organs, which kidney sits lower, a transverse colon joining the
    # two limbs, and where lung nodules grow.  It makes laterality, relative position and
    # component counts questions about the image, not about textbook anatomy.
    m = -1.0 if situs_inversus(index) else 1.0  # x → the patient's left
    low_left = (index // 4) % 2 == 1  # independent of the patterns modulo 4
    joined_colon = index % 2 == 1
    shapes["aorta"] = _tube(X, Y, Z, jit((14.0 * m, 42.0), 3), 10.0, (0.0, 250.0))
    shapes["inferior_vena_cava"] = _tube(X, Y, Z, jit((-24.0 * m, 36.0), 3), 11.0, (0.0, 205.0))
    shapes["kidney_left"] = _ellipsoid(X, Y, Z, jit((58.0, 58.0, 98.0 if low_left else 122.0)),
                                       rad((22.0, 24.0, 42.0)))
    shapes["kidney_right"] = _ellipsoid(X, Y, Z, jit((-58.0, 58.0, 122.0 if low_left else 98.0)),
                                        rad((22.0, 24.0, 42.0)))
    shapes["spleen"] = _ellipsoid(X, Y, Z, jit((88.0 * m, 38.0, 172.0)), rad((26.0, 34.0, 34.0)))
    shapes["pancreas"] = _ellipsoid(X, Y, Z, jit((12.0 * m, 10.0, 132.0)), rad((48.0, 12.0, 12.0)))
    shapes["gallbladder"] = _ellipsoid(X, Y, Z, jit((-48.0 * m, -48.0, 128.0), 4), rad((14.0, 14.0, 18.0)))
    shapes["stomach"] = _ellipsoid(X, Y, Z, jit((48.0 * m, -36.0, 182.0)), rad((34.0, 26.0, 32.0)))
    shapes["liver"] = _ellipsoid(X, Y, Z, jit((-68.0 * m, -8.0, 172.0)), rad((62.0, 62.0, 50.0)))
    right_limb, left_limb = jit((-84.0 * m, 12.0), 4), jit((88.0 * m, 22.0), 4)
    shapes["colon"] = _tube(X, Y, Z, right_limb, 18.0, (15.0, 85.0)) | _tube(
        X, Y, Z, left_limb, 15.0, (15.0, 85.0))
    if joined_colon:  # the transverse colon: one U-shaped component on the slices it crosses
        shapes["colon"] = shapes["colon"] | _bar_x(X, Y, Z, 17.0, 80.0, 12.0,
                                                   sorted((right_limb[0], left_limb[0])))
    lung_floor = 200.0 + g.uniform(-5, 5)
    for side, sx in (("left", 1.0), ("right", -1.0)):
        lung = _ellipsoid(X, Y, Z, jit((70.0 * sx, 10.0, 265.0)), rad((52.0, 78.0, 80.0))) & (
            Z >= lung_floor)
        fissure = Z + 0.4 * Y
        if side == "left":
            shapes["lung_upper_lobe_left"] = lung & (fissure > 248.0)
            shapes["lung_lower_lobe_left"] = lung & (fissure <= 248.0)
        else:
            upper = lung & (fissure > 262.0)
            middle = lung & ~upper & (Y < -5.0) & (fissure > 222.0)
            shapes["lung_upper_lobe_right"] = upper
            shapes["lung_middle_lobe_right"] = middle
            shapes["lung_lower_lobe_right"] = lung & ~upper & ~middle
    label = np.zeros((ni, nj, nk), dtype=np.int16)
    masks: dict[str, np.ndarray] = {}
    for n, name in enumerate(ORGANS, start=1):
        m = np.broadcast_to(shapes[name], label.shape) & np.broadcast_to(inner, label.shape) & (label == 0)
        label[m] = n
        masks[name] = m
    present = dict(lesions) if lesions is not None else {name: 1.0 for name in lesions_of(index)}
    for lesion, scale in sorted(present.items()):
        organ, radius = {
            "liver_tumor": ("liver", (14.0, 22.0)),
            "lung_nodules": (None, (7.0, 10.0)),
            "kidney_cyst_left": ("kidney_left", (8.0, 11.0)),
            "kidney_cyst_right": ("kidney_right", (8.0, 11.0)),
        }[lesion]
        lg = keys.rng(seed, f"phantom/{index}/{lesion}", "radius")
        r = lg.uniform(*radius) * scale
        if lesion == "lung_nodules":  # 1-3 nodules, all in one lung, side drawn per patient
            side = ("left", "right")[(index // 2) % 2]
            lung = np.zeros(label.shape, dtype=bool)
            for name in ORGANS:
                if name.startswith("lung_") and name.endswith(side):
                    lung |= masks[name]
            idx = np.argwhere(lung)
            grown = np.zeros(label.shape, dtype=bool)
            for q in (0.3, 0.7, 0.5)[: 1 + index % 3]:
                v = idx[int(q * (len(idx) - 1))]
                c = ((v[0] - ci) * s_xy, (v[1] - cj) * s_xy, v[2] * 5.0)
                grown |= _ellipsoid(X, Y, Z, c, (r, r, r))
            masks[lesion] = grown & lung
            continue
        organ_idx = np.argwhere(masks[organ])
        centre_vox = organ_idx[len(organ_idx) // 2]  # a voxel inside the organ, deterministic
        c = ((centre_vox[0] - ci) * s_xy, (centre_vox[1] - cj) * s_xy, centre_vox[2] * 5.0)
        masks[lesion] = _ellipsoid(X, Y, Z, c, (r, r, r)) & masks[organ]
    modality = modality or modality_of(index)
    table = CT_HU if modality == "CT" else MR_SIGNAL
    if modality == "CT":
        image = np.full(label.shape, -1000.0, dtype=np.float32)
        image[np.broadcast_to(body, label.shape)] = 45.0
        image[np.broadcast_to(inner, label.shape)] = -100.0
    else:
        image = np.zeros(label.shape, dtype=np.float32)
        image[np.broadcast_to(body, label.shape)] = 250.0
        image[np.broadcast_to(inner, label.shape)] = 900.0
    for name in ORGANS:
        key = "lung" if name.startswith("lung_") else "vertebra" if name.startswith("vertebrae") else name
        image[masks[name]] = table[key]
    for lesion in present:
        image[masks[lesion]] = (lesion_values or {}).get(lesion, table[lesion])
    noise = keys.rng(seed, f"phantom/{index}/t{timepoint}", "noise").normal(0.0, 8.0, label.shape)
    if modality == "CT":
        image = np.round(image + noise).astype(np.float32)
    else:
        bias = 1.0 + 0.15 * np.broadcast_to((X / 150.0) + 0.5 * (Z / 280.0), label.shape)
        image = np.clip(np.round(image * bias + noise * 3), 0, None).astype(np.float32)
    return Phantom(
        name=f"s{index + 1:04d}",
        patient_id=f"PAT-{index + 1:04d}",
        modality=modality,
        image=image,
        masks={n: np.ascontiguousarray(m) for n, m in masks.items()},
        spacing=spacing,
        origin=origin,
    )


# ----------------------------------------------------------------------- longitudinal


#: Scripted lesion timelines (presence per timepoint, radius scale when present): never
#: present; appears then resolves; appears then grows; resolves then recurs.  Over the
#: second and third studies they give each temporal class (No abnormality, New,
#: Resolved, Refractory) exactly twice, so every four patients balance the classes.
TIMELINES = (
    (0.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 1.0, 1.3),
    (1.0, 0.0, 1.0),
)
#: CT attenuation of a lesion: lower or higher than its organ, drawn per patient and lesion.
LESION_HU_CHOICES = {"liver_tumor": (15.0, 120.0), "lung_nodules": (30.0, 150.0),
                     "kidney_cyst_left": (5.0, 70.0), "kidney_cyst_right": (5.0, 70.0)}


def is_control(patient: int) -> bool:
    """Every fifth longitudinal patient is a lesion-free control: normal volumes exist."""
    return patient % 5 == 4


def longitudinal_lesions(patient: int, timepoint: int) -> dict[str, float]:
    """Lesions of ``patient`` at ``timepoint``: each lesion follows one scripted timeline,
    rotated over the patients with lesions so every lesion type meets every timeline once
    in any four of them; controls (:func:`is_control`) have none."""
    if is_control(patient):
        return {}
    q = patient - patient // 5  # rank among the patients with lesions
    out = {}
    for n, lesion in enumerate(LESIONS):
        scale = TIMELINES[(n + q) % len(TIMELINES)][timepoint % 3]
        if scale:
            out[lesion] = scale
    return out


def longitudinal_values(patient: int, seed: int = 0) -> dict[str, float]:
    """Each lesion's HU for ``patient``: hypo- or hyperdense to its organ (keyed coin)."""
    return {lesion: choices[int(keys.rng(seed, f"phantom/{patient}/{lesion}", "density").integers(2))]
            for lesion, choices in sorted(LESION_HU_CHOICES.items())}
