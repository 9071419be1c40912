"""What an export takes from a corpus: its kind, the configs a format reads, and the file prefix.

The corpus itself is read by :class:`pipeline.io.corpus.Corpus` (configs and
shards from ``manifest.json``, never the private folders).  Here: the corpus
kinds (:data:`KINDS`, :func:`detect_kind`), where each kind keeps the rows an
export converts and their media (:data:`LAYOUTS`, :data:`BENCHMARK` for a tree
corpus's stratified test set), and the default file prefix (:func:`corpus_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.exports.base import ExportError
from pipeline.schema.layout import MANIFEST

KINDS = ("slices", "tree", "volumes")


@dataclass(frozen=True)
class Layout:
    """Where one corpus kind keeps its rows and media."""

    kind: str
    rows: str  # config of the QA rows (llava / sharegpt)
    media: str  # config holding the media bytes
    key: str  # media id column (in rows and media)
    options: str  # options column of the rows
    media_dir: str  # folder of the exported media files
    media_columns: tuple[str, ...]  # media config columns read with the bytes


LAYOUTS = {
    "slices": Layout("slices", "qa", "images", "image_id", "options", "images",
                     ("image_id", "image", "width", "height", "plane")),
    "tree": Layout("tree", "instruct", "alignment", "image_id", "choices", "images",
                   ("image_id", "image")),
    "volumes": Layout("volumes", "qa", "volumes", "volume_id", "options", "volumes",
                      ("volume_id", "npy")),
}
BENCHMARK = Layout("tree", "benchmark", "benchmark", "image_id", "choices", "images",
                   ("image_id", "image"))


def detect_kind(manifest: Mapping, configs: Iterable[str]) -> str:
    """Corpus kind: ``manifest["kind"]`` when present, else inferred from the configs.

    ``volumes`` -> volumes; ``instruct`` or ``alignment`` -> tree; ``images`` and
    ``qa`` -> slices.
    """
    kind = manifest.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise ExportError(f"{MANIFEST}: kind: {kind!r} is not one of {', '.join(KINDS)}")
        return kind
    configs = set(configs)
    if "volumes" in configs:
        return "volumes"
    if configs & {"instruct", "alignment"}:
        return "tree"
    if {"images", "qa"} <= configs:
        return "slices"
    raise ExportError(f"{MANIFEST}: files: configs {sorted(configs)} are none of images+qa (slices), "
                      f"instruct/alignment (tree) or volumes (volumes)")


def corpus_name(manifest: Mapping) -> str:
    """Default file prefix: ``radvqa_<recipe name>`` with non-alphanumerics as ``_``."""
    recipe = manifest.get("recipe")
    name = recipe.get("name") if isinstance(recipe, Mapping) else None
    return safe_name(f"radvqa_{name}" if name else "radvqa")


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
