"""The ``ood`` config: the test split's images under deterministic perturbations.

RadVUQA's robustness axis, reproducibly: a keyed fraction of the test images (recipe
``ood.fraction``) each get ``ood.per_image`` perturbations — a family of acquisition or
display artefact at a named strength (:mod:`pipeline.core.perturb`) — and every row records the
family, the strength and the parameters that made it, beside the id of the image it was
made from, so a model's accuracy on the ``qa`` questions of that image can be compared
clean versus perturbed.

The perturbations start from the *stored* pixels (the windowed PNG of a slice, the
stored 8-bit PNG of a labelled image, the [0, 1] volume of the ``volumes`` config), so
they never need the sources again and regeneration rewrites them from the corpus alone.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.core import keys, perturb
from pipeline.core.imaging import encode_png
from pipeline.engine.execute import read_pixels
from pipeline.schema.arrow import OOD3D_SCHEMA, OOD_SCHEMA

DEFAULTS = {"fraction": 1.0, "per_image": 1, "families": None, "levels": None, "split": "test"}


def settings(section: Mapping | None) -> dict | None:
    """The recipe's ``ood`` section with defaults; ``None`` when the recipe has none."""
    if not section:
        return None
    out = DEFAULTS | dict(section)
    out["families"] = list(out["families"] or perturb.FAMILIES)
    out["levels"] = list(out["levels"] or perturb.LEVELS)
    return out


def chosen(image_ids, conf: Mapping, seed: int) -> list[tuple[str, str, str]]:
    """``(image id, family, level)`` for the selected images: those whose keyed uniform is
    below ``fraction``, each with ``per_image`` distinct pairs (shard-independent)."""
    picked = [i for i in image_ids if keys.unit_interval(seed, i, "ood") < float(conf["fraction"])]
    if not picked:
        return []
    return perturb.plan(picked, conf["families"], conf["levels"], seed=seed,
                        per_image=int(conf["per_image"]))


def _row_id(image_id: str, family: str, level: str) -> str:
    return keys.stable_key("ood", image_id, family, level)


def image_rows(images: Mapping[str, bytes], split: str, conf: Mapping, seed: int) -> list[dict]:
    """OOD rows for 2D images (``{image id: PNG bytes}``), sorted by ``ood_id``."""
    rows = []
    for image_id, family, level in chosen(sorted(images), conf, seed):
        with Image.open(io.BytesIO(images[image_id])) as im:
            gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        out = perturb.perturb(gray, family, level, seed=seed, key=image_id)
        pixels = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        ood_id = _row_id(image_id, family, level)
        rows.append({
            "ood_id": ood_id, "image_id": image_id,
            "image": {"bytes": encode_png(pixels), "path": f"{ood_id}.png"},
            "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
            "family": family, "strength": level,
            "parameters": json.dumps(perturb.describe(family, level), sort_keys=True),
            "split": split,
        })
    rows.sort(key=lambda r: r["ood_id"])
    return rows


def volume_rows(volumes: Mapping[str, bytes], split: str, conf: Mapping, seed: int) -> list[dict]:
    """OOD rows for stored volumes (``{volume id: .npy bytes}``), sorted by ``ood_id``."""
    rows = []
    for volume_id, family, level in chosen(sorted(volumes), conf, seed):
        arr = np.load(io.BytesIO(volumes[volume_id]), allow_pickle=False)
        out = perturb.perturb(np.clip(arr.astype(np.float32), 0.0, 1.0), family, level, seed=seed,
                              key=volume_id).astype(arr.dtype)
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        rows.append({
            "ood_id": _row_id(volume_id, family, level), "volume_id": volume_id,
            "npy": buf.getvalue(), "shape": [int(n) for n in out.shape],
            "family": family, "strength": level,
            "parameters": json.dumps(perturb.describe(family, level), sort_keys=True),
            "split": split,
        })
    rows.sort(key=lambda r: r["ood_id"])
    return rows


# ------------------------------------------------------------------- per corpus kind


@dataclass(frozen=True)
class OodSource:
    """Where a kind's ``ood`` rows start from: the stored config holding the clean pixels,
    its key and pixel columns, the row maker and the ``ood`` schema."""

    config: str  # the pixel config whose shard holds the clean pixels
    key_column: str  # its id column (the ``ood`` rows' back-reference)
    pixel_column: str  # PNG struct (2D) or ``.npy`` bytes (3D)
    rows: Callable[[Mapping[str, bytes], str, Mapping, int], list[dict]]
    schema: pa.Schema


IMAGES = OodSource("images", "image_id", "image", image_rows, OOD_SCHEMA)  # kind slices
VOLUMES = OodSource("volumes", "volume_id", "npy", volume_rows, OOD3D_SCHEMA)  # kind volumes
#: Kind tree: its payload holds the unit's stored PNGs, so it passes them to :func:`ood_table`.
TREE = OodSource("alignment", "image_id", "image", image_rows, OOD_SCHEMA)


def ood_table(source: OodSource, ref, records: list[dict], ctx, report: Mapping,
              pixels: Mapping[str, bytes] | None = None) -> pa.Table | None:
    """A unit's ``ood`` table, or ``None`` when the recipe has no ``ood`` section or the
    unit is not of its split.

    ``pixels`` (``{id: bytes}``) when the caller holds the unit's clean pixels already (the
    tree kind); otherwise only the chosen records' pixels are read back from the unit's
    ``source.config`` shard (``report["pixel_files"]``).
    """
    conf = ctx.extras.get("ood")
    if not conf or ref.split != conf["split"]:
        return None
    if pixels is None:
        ids = [r[source.key_column] for r in records]
        wanted = {i for i, _, _ in chosen(ids, conf, ctx.seed)}
        pixels = read_pixels(ctx.output, report, source.config, source.key_column,
                             source.pixel_column, wanted)
    return pa.Table.from_pylist(source.rows(pixels, ref.split, conf, ctx.seed),
                                schema=source.schema)
