"""Multilabel layout: ``image.nii.gz`` + ``labels.nii.gz`` (one integer label map) +
``labels.json`` (``{"1": "liver", …}``: value → a user's own structure name), optionally
``modality.txt`` (``CT`` or ``MR``).  Without it, the modality is inferred from the
intensities: CT when the volume holds air in Hounsfield units (< -500)."""

from __future__ import annotations

import dataclasses
import json
import os

from pipeline.errors import CaseError
from pipeline.inputs import readers
from pipeline.inputs.layouts.base import LoadedCase, pick, read_image, rel, volume_stems
from pipeline.inputs.readers import Volume
from pipeline.inputs.tree import InputTree

MODALITY_HINT = "modality.txt"


class MultilabelLayout:
    """``image`` + ``labels`` + ``labels.json`` (see the module docstring)."""

    name = "multilabel"
    expected = "image + labels + labels.json"

    def detect(self, names: set[str]) -> bool:
        stems = volume_stems(names)
        return "image" in stems and "labels" in stems

    def holds_one_case(self, names: set[str]) -> bool:
        return True  # its files name no structure: a folder holding them is one case

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        image, labels = pick(found, "image"), pick(found, "labels")
        if image is None or labels is None or "labels.json" not in found:
            raise CaseError(
                "discover", "source.missing_file",
                f"entries: found {sorted(found)[:8]}, expected image.nii.gz, labels.nii.gz and "
                "labels.json",
                rel(folder),
            )
        return [
            ("image", rel(folder, image)),
            ("labels", rel(folder, labels)),
            ("labels_json", rel(folder, "labels.json")),
        ], ""

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        volume = infer_modality(read_image(case, root, max_voxels), root, case)
        notes = dict(volume.notes)
        labels_rel = case.file("labels_json")
        labels = read_labels_json(os.path.join(root, labels_rel), labels_rel)
        map_rel = case.file("labels")
        map_path = os.path.join(root, map_rel)
        masks, digest = readers.mask_reader_for(map_path, map_rel).read_label_map(
            map_path, map_rel, volume.geometry, labels, notes)
        absent = sorted(set(labels.values()) - set(masks))
        if absent:
            notes["labels_absent"] = absent
        return LoadedCase(volume, masks, (volume.content_sha256, digest), map_rel, notes)

    def fingerprint_paths(self, case) -> list[str]:
        """The case's files and its optional ``modality.txt`` (it changes extraction)."""
        image = case.file("image")
        folder = image.rsplit("/", 1)[0] if "/" in image else ""
        return [path for _, path in case.files] + [
            f"{folder}/{MODALITY_HINT}" if folder else MODALITY_HINT]


LAYOUT = MultilabelLayout()


def infer_modality(volume: Volume, root: str, case) -> Volume:
    """Modality of a multilabel case: ``modality.txt`` beside the image (``CT``/``MR``)
    if present, else CT when the volume holds air in Hounsfield units (< -500)."""
    hint = os.path.join(root, os.path.dirname(case.file("image")), MODALITY_HINT)
    value = ""
    if os.path.isfile(hint):
        with open(hint, encoding="utf-8") as f:
            value = f.read().strip().upper()
    if value not in ("CT", "MR"):
        value = "CT" if float(volume.voxels.min()) < -500 else "MR"
    return dataclasses.replace(volume, modality=value, header={"Modality": value})


def read_labels_json(path: str, source: str) -> dict[int, str]:
    """``labels.json`` (at local ``path``; ``source`` relative, for messages) as
    ``{int value: name}`` with values and names checked."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise CaseError(
            "read", "labels.unreadable",
            f"JSON: found invalid JSON ({err}), expected an object {{\"1\": \"name\", …}}", source,
        ) from err
    if not isinstance(raw, dict) or not raw:
        raise CaseError(
            "read", "labels.bad_format",
            f"JSON: found {type(raw).__name__} {str(raw)[:40]}, expected a non-empty object "
            "{\"1\": \"name\", …}", source,
        )
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            value = int(k)
        except ValueError as err:
            raise CaseError(
                "read", "labels.bad_format", f"key {k!r}: found a non-integer key, expected an "
                "integer label value", source,
            ) from err
        if value <= 0 or not isinstance(v, str) or not v.strip():
            raise CaseError(
                "read", "labels.bad_format",
                f"key {k!r}: found {v!r}, expected a positive value mapped to a non-empty name", source,
            )
        out[value] = v.strip()
    names = list(out.values())
    if len(set(names)) != len(names):
        raise CaseError("read", "labels.duplicate_name",
                        f"names: found duplicates in {names}, expected each name once", source)
    return out
