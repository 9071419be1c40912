"""TotalSegmentator multilabel layout (the tool's ``--ml`` output): ``ct.nii.gz``,
``mri.nii.gz`` or ``mr.nii.gz`` beside one label file ``segmentations.nii.gz`` (also
``segmentation``/``seg``, any volume suffix) whose values are the classes.

The class map is the one the tool writes into the label file's NIfTI header extension
(a CaretExtension ``LabelTable``, :mod:`pipeline.inputs.readers.nifti_labels`); when the file
carries none, the built-in class list of the image's modality names the values
(:mod:`pipeline.inputs.class_lists`: ``class_map["total"]`` for CT, ``["total_mr"]`` for MR,
label value = position + 1), and the case's notes say so.  A value neither names is rejected
(``labels.unmapped_value``).
"""

from __future__ import annotations

import os

from pipeline.errors import CaseError
from pipeline.inputs import readers
from pipeline.inputs.class_lists import builtin_labels
from pipeline.inputs.layouts.base import (
    LoadedCase,
    image_digest,
    listed_files,
    mask_file_digest,
    pick,
    read_image,
    rel,
    volume_stems,
)
from pipeline.inputs.layouts.totalseg import IMAGE_STEMS, pick_image
from pipeline.inputs.tree import InputTree

#: Stems of the multilabel file (``TotalSegmentator -o <name>.nii.gz --ml``), in order of preference.
LABEL_STEMS = ("segmentations", "segmentation", "seg")


class TotalsegMlLayout:
    """``ct|mri|mr`` + ``segmentations.nii.gz`` (see the module docstring)."""

    name = "totalseg_ml"
    expected = "ct/mri/mr volume + segmentations.nii.gz (--ml)"

    def detect(self, names: set[str]) -> bool:
        stems = volume_stems(names)
        return bool(IMAGE_STEMS.keys() & stems.keys()) and any(s in stems for s in LABEL_STEMS)

    def holds_one_case(self, names: set[str]) -> bool:
        return True  # its files name no structure: a folder holding them is one case

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        image, modality = pick_image(found, folder)
        labels = next((name for stem in LABEL_STEMS if (name := pick(found, stem)) is not None), None)
        if labels is None:
            raise CaseError(
                "discover", "source.missing_file",
                f"entries: found {sorted(found)[:8]}, expected one label file "
                "segmentations.nii.gz (TotalSegmentator --ml output)", rel(folder),
            )
        return [("image", rel(folder, image)), ("labels", rel(folder, labels))], modality

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        volume = read_image(case, root, max_voxels)
        notes = dict(volume.notes)
        map_rel = case.file("labels")
        map_path = os.path.join(root, map_rel)
        labels = readers.read_label_table(map_path, map_rel)
        if labels is None:
            labels = builtin_labels(volume.modality)
            notes["labels_from_builtin_class_list"] = [
                f"{map_rel}: no class map in the header, named by TotalSegmentator's "
                f"{volume.modality} class list"]
        masks, digest = readers.mask_reader_for(map_path, map_rel).read_label_map(
            map_path, map_rel, volume.geometry, labels, notes)
        return LoadedCase(volume, masks, (volume.content_sha256, digest), map_rel, notes)

    def content_digests(self, case, root: str) -> tuple[str, ...]:
        """:meth:`load`'s digests from the files' bytes alone (the class map is the label
        file's own header, or the built-in list: nothing else is read)."""
        image, labels = case.file("image"), case.file("labels")
        return (image_digest([(os.path.join(root, image), image)]),
                mask_file_digest(os.path.join(root, labels), labels))

    fingerprint_paths = staticmethod(listed_files)


LAYOUT = TotalsegMlLayout()
