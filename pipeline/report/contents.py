"""What a corpus holds, as the report names and orders it: its kind, its question configs,
its image-bearing config, and the display order of question types and build stages."""

from __future__ import annotations

from collections.abc import Mapping

QA_CONFIGS = ("qa", "instruct", "benchmark")
QTYPE_ORDER = {"closed": 0, "multiple_choice": 1, "open": 2}
STAGE_ORDER = {"discover": 0, "read": 1, "extract": 2, "qa": 3}
KINDS = {
    "slices": "2D slices of CT/MR volumes with per-structure boxes (configs images / structures / qa)",
    "tree": "labelled 2D image tree, RadImageNet style (configs instruct / alignment / benchmark)",
    "volumes": "3D volumes with volume-level questions (configs volumes / qa)",
}


def image_config(configs: Mapping) -> tuple[str, str, str] | None:
    """(image config, question config, id column) of the corpus whose configs are ``configs``."""
    if "volumes" in configs:
        return "volumes", "qa", "volume_id"
    if "alignment" in configs:
        return "alignment", "instruct", "image_id"
    if "images" in configs:
        return "images", "qa", "image_id"
    return None


def corpus_kind(manifest: Mapping, configs: Mapping) -> str:
    """``manifest["kind"]`` when present, else inferred from the image-bearing config."""
    if manifest.get("kind") in KINDS:
        return manifest["kind"]
    chosen = image_config(configs)
    return {"volumes": "volumes", "alignment": "tree", "images": "slices"}.get(
        chosen[0] if chosen else "", "slices")
