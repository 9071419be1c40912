"""TotalSegmentator layout: ``ct.nii.gz`` or ``mr.nii.gz`` (also .nii/.nrrd/.mha) beside
``segmentations/<structure>.nii.gz``, one mask file per structure.  The image's name gives the
modality."""

from __future__ import annotations

from pipeline.errors import CaseError
from pipeline.inputs.layouts.base import (
    LoadedCase,
    pick,
    read_image,
    read_segmentations,
    rel,
    segmentations_files,
    volume_stems,
)
from pipeline.inputs.tree import InputTree


class TotalsegLayout:
    """``ct|mr.<volume suffix>`` + ``segmentations/`` (see the module docstring)."""

    name = "totalseg"
    expected = "ct/mr volume + segmentations/"

    def detect(self, names: set[str]) -> bool:
        stems = volume_stems(names)
        return "ct" in stems or "mr" in stems

    def holds_one_case(self, names: set[str]) -> bool:
        return "segmentations" in names

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        ct, mr = pick(found, "ct"), pick(found, "mr")
        if ct and mr:
            raise CaseError(
                "discover", "source.ambiguous_image",
                f"entries: found both {ct} and {mr}, expected one image", rel(folder),
            )
        image = ct or mr
        if image is None:
            raise CaseError(
                "discover", "source.missing_image",
                f"entries: found {sorted(found)[:8]}, expected ct.nii.gz or mr.nii.gz", rel(folder),
            )
        return [("image", rel(folder, image)), segmentations_files(tree, folder, found)], (
            "CT" if ct else "MR")

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        volume = read_image(case, root, max_voxels)
        masks, digests = read_segmentations(case, root, volume)
        return LoadedCase(volume, masks, (volume.content_sha256, *digests),
                          case.file("segmentations"), dict(volume.notes))

    def fingerprint_paths(self, case) -> list[str]:
        return [path for _, path in case.files]


LAYOUT = TotalsegLayout()
