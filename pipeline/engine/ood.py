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
A unit whose ``ood`` inputs did not change (its pixel shard's sha256, split, ``ood``
settings, seed, writer options and the code that makes the rows: :func:`inputs_digest`)
keeps the ``ood`` shard an earlier build wrote, verified by its stat receipt or sha256
(:mod:`pipeline.io.kept_files`) — a template edit
no longer perturbs and encodes every test image again (:func:`ood_output`).
"""

from __future__ import annotations

import functools
import io
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core import keys, perturb
from pipeline.core.imaging import encode_png
from pipeline.engine.execute import read_pixels
from pipeline.io import kept_files, shards
from pipeline.schema import pyarrays
from pipeline.schema.arrow import OOD3D_SCHEMA, OOD_SCHEMA
from pipeline.schema.records import FileReceipt

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
    # Pillow (15 ms of CPU with its decoders, measured) when the ood config is made: a
    # regenerate keeps it (its inputs unchanged) and never decodes an image
    from PIL import Image

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
    return pyarrays.table(source.rows(pixels, ref.split, conf, ctx.seed), source.schema)


# ----------------------------------------------------------- keeping an unchanged shard

_PIPELINE = Path(__file__).resolve().parent.parent


@functools.cache
def _code_digest() -> str:
    """The source that makes ``ood`` rows' bytes — every module of ``core`` (perturbations,
    keys, PNG), this one, the Arrow schemas, the shard writer — and the libraries' versions."""
    paths = sorted((_PIPELINE / "core").glob("*.py")) + [
        _PIPELINE / "engine" / "ood.py", _PIPELINE / "schema" / "arrow.py", _PIPELINE / "io" / "shards.py"]
    return keys.source_digest(paths, root=_PIPELINE, dists=("numpy", "pyarrow", "Pillow"),
                              extra=(zlib.ZLIB_RUNTIME_VERSION,))


def inputs_digest(source: OodSource, ref, ctx, report: Mapping) -> str:
    """Everything a unit's ``ood`` shard is made from: its clean pixels (the sha256 of the
    unit's ``source.config`` shard, which also holds the record ids), split, the ``ood``
    settings, seed, the shard writer's options and :func:`_code_digest`."""
    pixels = sorted((rel, info["sha256"]) for rel, info in report["pixel_files"].items()
                    if rel.split("/", 1)[0] == source.config)
    return keys.digest(_code_digest(), source.config, source.key_column, source.pixel_column,
                       json.dumps(ctx.extras.get("ood"), sort_keys=True), ctx.seed, ref.split,
                       json.dumps(pixels), shards.writer_digest())


def stored_shards(receipts: Mapping[str, Mapping], refs) -> dict[str, dict]:
    """``{unit id: {"inputs": digest, "file": file info}}`` of the ``ood`` shards the last
    build's receipts record with their :func:`inputs_digest` (launcher, before the run;
    passed to the units in ``ctx.extras["ood_stored"]``)."""
    out = {}
    for ref in refs:
        full = receipts.get(f"{ref.unit_id}.json") or {}
        info = (full.get("files") or {}).get(ref.shard("ood"))
        if full.get("ood_inputs") and info:
            out[ref.unit_id] = {"inputs": full["ood_inputs"], "file": info,
                                "stat": (full.get("stat") or {}).get(ref.shard("ood"))}
    return out


def planned_inputs_digest(source: OodSource, ref, ctx, planned: str) -> str:
    """:func:`inputs_digest` for a unit whose pixel shard is written after its ``ood`` rows
    (the tree kind's ``alignment``): its plan's digest (every case's key and fingerprint:
    the input file's identity, the kind's version and settings, the writer's options)
    stands for the shard's sha256."""
    return keys.digest(_code_digest(), source.config, source.key_column, source.pixel_column,
                       json.dumps(ctx.extras.get("ood"), sort_keys=True), ctx.seed, ref.split,
                       "planned", planned, shards.writer_digest())


def ood_output(source: OodSource, ref, records: list[dict], ctx, report: Mapping,
               pixels: Mapping[str, bytes] | None = None, inputs: str | None = None,
               ) -> tuple[pa.Table | FileReceipt | None, str | None]:
    """``(the unit's ood table — or the receipt of the stored shard kept as it is —, its
    inputs digest)``; ``(None, None)`` when the unit has no ``ood`` rows.

    The stored shard is kept when the last build recorded the same :func:`inputs_digest`
    for it and the file still has the recorded sha256: it holds the bytes this build would
    write (``tests/test_incremental.py`` checks both, and that a changed input is redone).
    ``pixels`` as for :func:`ood_table`; ``inputs``: the digest when the caller made it
    (:func:`planned_inputs_digest`)."""
    conf = ctx.extras.get("ood")
    if not conf or ref.split != conf["split"]:
        return None, None
    inputs = inputs or inputs_digest(source, ref, ctx, report)
    stored = (ctx.extras.get("ood_stored") or {}).get(ref.unit_id)
    if stored and stored["inputs"] == inputs:
        rel, info = ref.shard("ood"), stored["file"]
        if kept_files.unchanged(ctx.output, rel, info["sha256"], stored.get("stat"),
                                bool(ctx.extras.get("verify_shards"))):
            return FileReceipt(rel, info["sha256"], info["bytes"], info["rows"]), inputs
    return ood_table(source, ref, records, ctx, report, pixels), inputs
