"""Case extraction: read a case, pick slices, window them, derive boxes.

Pure with respect to Beam: ``process_case`` takes a planned case and settings
and returns image rows (with PNG bytes) and structure rows, or raises
:class:`CaseError`.  Row fields are those of ``schemas/images.schema.json``
and ``schemas/structures.schema.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.core import keys
from pipeline.core.boxes import body_midline, plane_boxes, structure_stats
from pipeline.core.geometry import Geometry
from pipeline.core.imaging import PNG_STRATEGIES, encode_slice_pngs
from pipeline.core.masks import Mask, as_mask
from pipeline.core.slices import (
    PLANES,
    apply_window,
    ct_window,
    display_slices,
    display_spacing,
    mr_window,
    resample,
    select_slices,
    window_indices,
    window_table,
)
from pipeline.errors import CaseError
from pipeline.inputs.discovery import CaseSource
from pipeline.inputs.layouts import get_layout
from pipeline.inputs.readers import Volume

#: Bump when extraction output changes for the same inputs and settings.
EXTRACT_VERSION = "5"  # 4: PNGs filtered with Up and deflated with Z_RLE; prompts indexed
#                        5: deflated in bands shared by a slice's plain and prompt PNGs;
#                           prompts on a grey-ramp palette


@dataclass(frozen=True)
class SliceSettings:
    """How slices are chosen and rendered (the recipe's ``slices`` section)."""

    planes: tuple[str, ...] = ("axial",)
    ct_windows: tuple[str, ...] = ("soft_tissue",)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    resample_mm: tuple[float | None, float | None, float | None] | None = None
    min_area_px: int = 30
    max_per_structure: int = 2
    max_per_volume: int | None = 16
    strategy: str = "spread"
    structures: tuple[str, ...] | None = None
    max_voxels: int = 64_000_000
    png_level: int = 6
    png_strategy: str = "rle"  # core/imaging.PNG_STRATEGIES
    boxed: bool = False  # also store each slice with a visual prompt drawn (image_boxed, _easy)

    def __post_init__(self) -> None:
        bad = [p for p in self.planes if p not in PLANES]
        if bad or not self.planes:
            raise ValueError(f"slices.planes: found {list(self.planes)}, expected some of {PLANES}")
        for name in self.ct_windows:
            ct_window(name)
        lo, hi = self.mr_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"slices.mr_percentiles: found {self.mr_percentiles}, expected 0<=lo<hi<=100")
        if self.png_strategy not in PNG_STRATEGIES:
            raise ValueError(f"slices.png_strategy: found {self.png_strategy!r}, expected one of "
                             f"{PNG_STRATEGIES}")

    @classmethod
    def from_recipe(cls, section: Mapping) -> SliceSettings:
        sel = section.get("selection", {})
        resample_mm = section.get("resample_mm")
        structures = sel.get("structures")
        return cls(
            planes=tuple(section.get("planes", ("axial",))),
            ct_windows=tuple(section.get("ct_windows", ("soft_tissue",))),
            mr_percentiles=tuple(section.get("mr_percentiles", (0.5, 99.5))),
            resample_mm=tuple(resample_mm) if resample_mm else None,
            min_area_px=int(sel.get("min_area_px", 30)),
            max_per_structure=int(sel.get("max_per_structure", 2)),
            max_per_volume=sel.get("max_per_volume", 16),
            strategy=sel.get("strategy", "spread"),
            structures=tuple(structures) if structures else None,
            max_voxels=int(section.get("max_voxels", 64_000_000)),
            png_level=int(section.get("png_level", 6)),
            png_strategy=str(section.get("png_strategy", "rle")),
            boxed=bool(section.get("boxed", False)),
        )


@dataclass(frozen=True)
class CaseResult:
    images: list[dict]
    structures: list[dict]
    input_sha256: str
    notes: dict = field(default_factory=dict)


def load_case(
    case: CaseSource, root: str, max_voxels: int
) -> tuple[Volume, dict[str, Mask], str, dict]:
    """Read the volume and masks of ``case`` through its layout
    (:mod:`pipeline.inputs.layouts`); returns ``(volume, masks, input digest, notes)`` with
    the masks as cropped :class:`~pipeline.core.masks.Mask` records (a layout handing whole
    boolean volumes has them cropped here) and empty masks dropped (and noted)."""
    loaded = get_layout(case.layout).load(case, root, max_voxels)
    notes = dict(loaded.notes)  # files skipped, series ignored, transfer syntaxes inferred, …
    masks = {n: as_mask(m) for n, m in loaded.masks.items()}
    empty = sorted(n for n, m in masks.items() if not m.any())
    if empty:
        notes["empty_masks"] = empty
    masks = {n: m for n, m in masks.items() if n not in empty}
    if not masks:
        raise CaseError(
            "read", "masks.all_empty",
            f"masks: found {len(empty)} mask(s), all empty; expected at least one structure",
            loaded.masks_path,
        )
    return loaded.volume, masks, keys.digest(*loaded.digests), notes


def extract_case(
    case: CaseSource,
    split: str,
    volume: Volume,
    masks: Mapping[str, Mask | np.ndarray],
    settings: SliceSettings,
) -> tuple[list[dict], list[dict]]:
    """Image rows and structure rows of one loaded case (see module docstring); masks
    cropped (:class:`~pipeline.core.masks.Mask`) or whole boolean volumes."""
    # A CT's stored integers as they are (its body mask and windows give the same pixels
    # from them as from their float32 copy, which is never made); an MR's percentile window
    # is computed in float32, so an MR is windowed from Volume.array
    array = volume.voxels if volume.modality == "CT" else volume.array
    geometry = volume.geometry
    masks = {n: as_mask(m) for n, m in masks.items()}
    if settings.resample_mm:
        array = resample(array, geometry.spacing, settings.resample_mm, nearest=False)
        masks = {  # one whole volume at a time, cropped again at once
            n: Mask.from_array(resample(m.dense(), geometry.spacing, settings.resample_mm,
                                        nearest=True))
            for n, m in masks.items()
        }
        spacing = tuple(
            float(t) if t else float(s) for s, t in zip(geometry.spacing, settings.resample_mm)
        )
        geometry = Geometry(tuple(array.shape), spacing, geometry.origin)
        masks = {n: m for n, m in masks.items() if m.any()}
    midline = body_midline(array, volume.modality)
    if volume.modality == "CT":
        windows = [ct_window(name) for name in settings.ct_windows]
    else:
        windows = [mr_window(array, *settings.mr_percentiles)]
    tables = [window_table(w, array.dtype) for w in windows]  # None unless integers
    case_labels = sorted(masks)
    # an image row's entries that are the case's, a window's or a plane's: made once, one
    # object for all its rows (read only; 0.1-0.2 ms a 1.5 mm case, measured)
    shared = (volume.modality, volume.header.get("BodyPartExamined", ""), list(case_labels),
              (settings.png_level, settings.png_strategy))
    window_dicts = [w.as_dict() for w in windows]
    image_key = keys.stable_keys_under("image", case.key)  # (plane, index, window name)
    prompt_min_area = settings.boxed and settings.min_area_px
    structures = []
    for label in case_labels:
        stats = structure_stats(label, masks[label], geometry, midline)
        if stats is not None:
            structures.append(
                {
                    "case_key": case.key,
                    "patient_key": case.patient_key,
                    "split": split,
                    "modality": volume.modality,
                    "shape": [int(n) for n in geometry.shape],
                    "spacing_mm": [float(s) for s in geometry.spacing],
                    **stats,
                }
            )
    images = []
    for plane in settings.planes:
        chosen = select_slices(
            masks,
            plane,
            min_area_px=settings.min_area_px,
            max_per_structure=settings.max_per_structure,
            max_per_volume=settings.max_per_volume,
            strategy=settings.strategy,
            structures=settings.structures,
        )
        dx, dy = display_spacing(geometry.spacing, plane)
        spacing_mm = [float(dx), float(dy)]
        boxes = plane_boxes(masks, plane, chosen, geometry, midline)
        # every image's id and visual prompt first, the plane's at once: drawn between the
        # slices' deflates, which leave the caches cold, they took 5-6 ms more CPU a 1.5 mm
        # case (measured)
        ids = [[image_key(plane, index, window.name) for window in windows] for index in chosen]
        prompts = (plane_prompts(ids, [boxes[index] for index in chosen], prompt_min_area)
                   if prompt_min_area else [[None] * len(windows) for _ in chosen])
        labelled = {(index, window.name): label
                    for index, row_ids, row_prompts in zip(chosen, ids, prompts)
                    for window, label in zip(windows, zip(row_ids, row_prompts))}
        # one slice at a time (a sagittal plane of a NIfTI's buffer in groups of a few MB,
        # display_slices): a plane's slices gathered and windowed whole were 15-60 MB of
        # fresh memory a plane at 0.8 mm, whose page faults took 0.1-0.3 s of kernel time a
        # case (measured); a slice's arrays are reused from the heap
        for index, view in zip(chosen, display_slices(array, plane, chosen)):
            # once for all the windows: float64 (no tables: not an integer type), else the
            # tables' indices in np.take's index type
            if any(t is None for t in tables):
                view = np.asarray(view, dtype=np.float64)
            else:
                indices = window_indices(view)
            for window, window_dict, table in zip(windows, window_dicts, tables):
                pixels = apply_window(view, window) if table is None else np.take(table, indices)
                images.append(
                    _image_row(case, split, shared, plane, index, window_dict, pixels,
                               boxes[index], spacing_mm, *labelled[index, window.name])
                )
    if not images:
        raise CaseError(
            "extract", "slices.none_selected",
            f"selection: found no {'/'.join(settings.planes)} slice with a structure of at least "
            f"{settings.min_area_px} px (structures: {', '.join(case_labels[:6])}), expected at "
            "least one",
        )
    images.sort(key=lambda r: r["image_id"])
    structures.sort(key=lambda r: r["label"])
    return images, structures


def prompt_boxes(image_id: str, boxes: list[dict], min_area_px: int) -> tuple[dict, list[dict]] | None:
    """The visual prompt of a slice: ``(target, others)`` or ``None`` (no box of at least
    ``min_area_px`` pixels).

    The target (outlined in red) is drawn uniformly from the slice's boxes of at least
    ``min_area_px`` pixels, keyed by the image only (so regeneration never changes it);
    the others (the hard variant's green, blue and yellow boxes) are the up to three other
    structures whose box centres lie nearest the target's — the structures a reader could
    confuse with it, so the other outlines never point at the answer by elimination.
    """
    return plane_prompts([[image_id]], [boxes], min_area_px)[0][0]


def plane_prompts(image_ids: list[list[str]], boxes: list[list[dict]],
                  min_area_px: int) -> list[list[tuple | None]]:
    """:func:`prompt_boxes` of each image of a plane's slices, ``image_ids[s]`` (a slice's
    windows) over ``boxes[s]``: every target of the plane drawn at once
    (:func:`keys.rng_integers`: its generators' integers), a slice's eligible boxes sorted
    and centres computed once, a drawn target's nearest others once a target."""
    eligible = [sorted((b for b in bs if b["area_px"] >= min_area_px), key=lambda b: b["label"])
                for bs in boxes]
    drawing = [(i, len(e)) for ids, e in zip(image_ids, eligible) if e for i in ids]
    drawn = iter(keys.rng_integers(0, [i for i, _ in drawing], "prompt", [n for _, n in drawing]))
    out = []
    for ids, bs, e in zip(image_ids, boxes, eligible):
        if not e:
            out.append([None] * len(ids))
            continue
        centres = [((b["x_min"] + b["x_max"]) / 2.0, (b["y_min"] + b["y_max"]) / 2.0) for b in bs]
        prompts, made = [], {}
        for _ in ids:
            n = next(drawn)
            if n not in made:
                target = e[n]
                tx = (target["x_min"] + target["x_max"]) / 2.0
                ty = (target["y_min"] + target["y_max"]) / 2.0
                # nearest first, then by label (then in the slice's order, as a stable sort)
                near = sorted(((cx - tx) ** 2 + (cy - ty) ** 2, b["label"], i)
                              for i, (b, (cx, cy)) in enumerate(zip(bs, centres))
                              if b["label"] != target["label"])
                made[n] = (target, [bs[i] for _, _, i in near[:3]])
            prompts.append(made[n])
        out.append(prompts)
    return out


def _image_row(case, split, shared: tuple, plane, index, window: dict, pixels, boxes,
               spacing_mm: list, image_id: str, prompt) -> dict:
    """One image row; with a ``prompt`` (:func:`plane_prompts`) also its visual prompt:
    ``image_boxed`` (the target in red beside its nearest structures in green, blue and
    yellow), ``image_boxed_easy`` (the red box alone), ``prompt_label``; ``shared``: the
    case's modality, body part, labels and PNG zlib level and strategy
    (:mod:`pipeline.core.imaging`); ``window`` (:meth:`Window.as_dict`), ``spacing_mm`` and
    these are the same objects in every row that has them."""
    modality, body_part, case_labels, (level, strategy) = shared
    drawn = easy = label = None
    prompts = [] if prompt is None else [prompt, (prompt[0], ())]
    plain_png, prompt_pngs = encode_slice_pngs(pixels, prompts, level=level, strategy=strategy)
    if prompt is not None:
        label = prompt[0]["label"]
        drawn = {"bytes": prompt_pngs[0], "path": f"{image_id}-boxed.png"}
        easy = {"bytes": prompt_pngs[1], "path": f"{image_id}-boxed-easy.png"}
    return {
        "image_id": image_id,
        "image": {"bytes": plain_png, "path": f"{image_id}.png"},
        "image_boxed": drawn,
        "image_boxed_easy": easy,
        "prompt_label": label,
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "modality": modality,
        "body_part": body_part,
        "plane": plane,
        "slice_index": int(index),
        "window": window,
        "spacing_mm": spacing_mm,
        "boxes": boxes,
        "case_labels": case_labels,
        "case_key": case.key,
        "patient_key": case.patient_key,
        "split": split,
    }


def process_case(case: CaseSource, split: str, root: str, settings: SliceSettings) -> CaseResult:
    """Load and extract one case; raises :class:`CaseError` for bad input."""
    volume, masks, digest, notes = load_case(case, root, settings.max_voxels)
    images, structures = extract_case(case, split, volume, masks, settings)
    return CaseResult(images, structures, digest, notes)
