"""TotalSegmentator layout: ``ct.nii.gz`` (the CT release), ``mri.nii.gz`` (the MRI release) or
``mr.nii.gz`` (also .nii/.nrrd/.mha) beside ``segmentations/<structure>.nii.gz``, one mask file
per structure.  The image's name gives the modality (``ct`` → CT, ``mri``/``mr`` → MR), per case:
CT and MRI cases may sit side by side under one input root."""

from __future__ import annotations

import os

from pipeline.errors import CaseError
from pipeline.inputs.layouts.base import (
    LoadedCase,
    listed_files,
    pick,
    read_image,
    rel,
    segmentations_digests,
    segmentations_files,
    volume_stems,
    with_segmentations,
)
from pipeline.inputs.tree import InputTree

#: The image's stem → the modality it names.
IMAGE_STEMS = {"ct": "CT", "mri": "MR", "mr": "MR"}


def pick_image(found: set[str], folder: str) -> tuple[str, str]:
    """``(image entry, modality)`` of a TotalSegmentator case folder: exactly one of
    ``ct``/``mri``/``mr`` + a volume suffix."""
    images = [(name, IMAGE_STEMS[stem]) for stem in IMAGE_STEMS
              if (name := pick(found, stem)) is not None]
    if len(images) > 1:
        raise CaseError(
            "discover", "source.ambiguous_image",
            f"entries: found {' and '.join(n for n, _ in images)}, expected one image", rel(folder),
        )
    if not images:
        raise CaseError(
            "discover", "source.missing_image",
            f"entries: found {sorted(found)[:8]}, expected ct.nii.gz, mri.nii.gz or mr.nii.gz",
            rel(folder),
        )
    return images[0]


class TotalsegLayout:
    """``ct|mri|mr.<volume suffix>`` + ``segmentations/`` (see the module docstring)."""

    name = "totalseg"
    expected = "ct/mri/mr volume + segmentations/"

    def detect(self, names: set[str]) -> bool:
        return bool(IMAGE_STEMS.keys() & volume_stems(names).keys())

    def holds_one_case(self, names: set[str]) -> bool:
        return "segmentations" in names

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        image, modality = pick_image(found, folder)
        return [("image", rel(folder, image)), segmentations_files(tree, folder, found)], modality

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        volume = read_image(case, root, max_voxels)
        return with_segmentations(case, root, volume)

    def content_digests(self, case, root: str) -> tuple[str, ...]:
        """:meth:`load`'s digests from the files' bytes alone (nothing decoded)."""
        path = case.file("image")
        return segmentations_digests(case, root, [(os.path.join(root, path), path)])

    fingerprint_paths = staticmethod(listed_files)


LAYOUT = TotalsegLayout()
