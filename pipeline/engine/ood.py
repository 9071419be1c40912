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
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from pipeline.core import keys
from pipeline.schema.arrow import IMAGE_STRUCT, with_hf_metadata

DEFAULTS = {"fraction": 1.0, "per_image": 1, "families": None, "levels": None, "split": "test"}

OOD_FIELDS = [
    ("ood_id", pa.string()),
    ("image_id", pa.string()),
    ("image", IMAGE_STRUCT),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("family", pa.string()),
    ("strength", pa.string()),
    ("parameters", pa.string()),
    ("split", pa.string()),
]
OOD3D_FIELDS = [
    ("ood_id", pa.string()),
    ("volume_id", pa.string()),
    ("npy", pa.binary()),
    ("shape", pa.list_(pa.int32())),
    ("family", pa.string()),
    ("strength", pa.string()),
    ("parameters", pa.string()),
    ("split", pa.string()),
]
OOD_SCHEMA = with_hf_metadata(OOD_FIELDS)
OOD3D_SCHEMA = with_hf_metadata(OOD3D_FIELDS)


def settings(section: Mapping | None) -> dict | None:
    """The recipe's ``ood`` section with defaults; ``None`` when the recipe has none."""
    if not section:
        return None
    from pipeline.core import perturb

    out = DEFAULTS | dict(section)
    out["families"] = list(out["families"] or perturb.FAMILIES)
    out["levels"] = list(out["levels"] or perturb.LEVELS)
    return out


def chosen(image_ids, conf: Mapping, seed: int) -> list[tuple[str, str, str]]:
    """``(image id, family, level)`` for the selected images: those whose keyed uniform is
    below ``fraction``, each with ``per_image`` distinct pairs (shard-independent)."""
    from pipeline.core import perturb

    picked = [i for i in image_ids if keys.unit_interval(seed, i, "ood") < float(conf["fraction"])]
    if not picked:
        return []
    return perturb.plan(picked, conf["families"], conf["levels"], seed=seed,
                        per_image=int(conf["per_image"]))


def _row_id(image_id: str, family: str, level: str) -> str:
    return keys.stable_key("ood", image_id, family, level)


def image_rows(images: Mapping[str, bytes], split: str, conf: Mapping, seed: int) -> list[dict]:
    """OOD rows for 2D images (``{image id: PNG bytes}``), sorted by ``ood_id``."""
    from PIL import Image

    from pipeline.core import perturb
    from pipeline.core.imaging import encode_png

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
    from pipeline.core import perturb

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
