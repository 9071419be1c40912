"""DICOM SEG layout: ``dicom/`` (the files of one CT or MR series, any names, any depth) beside
one or more DICOM SEG files at the case folder's top level (``*.dcm``: TotalSegmentator's
``-ot dicom_seg`` writes ``<name>_seg.dcm``), whose segments are the case's structures, named
by their SegmentLabel or segmented property (:mod:`pipeline.inputs.readers.seg`).  The series
header gives the modality; the segments' frames are placed on the series' grid by their own
positions.  A segment name given by two SEG files is rejected (``seg.duplicate_name``)."""

from __future__ import annotations

import os

from pipeline.errors import CaseError
from pipeline.inputs import readers
from pipeline.inputs.layouts.base import LoadedCase, listed_files, mask_file_digest, rel
from pipeline.inputs.layouts.dicom import dicom_folder, read_series, series_digest
from pipeline.inputs.tree import InputTree


def _is_seg_name(name: str) -> bool:
    return name.lower().endswith(".dcm") and not name.startswith(".")


class DicomSegLayout:
    """``dicom/`` + ``*.dcm`` DICOM SEG files (see the module docstring)."""

    name = "dicom_seg"
    expected = "dicom/ + a DICOM SEG *.dcm"

    def detect(self, names: set[str]) -> bool:
        return "dicom" in names and "segmentations" not in names and any(map(_is_seg_name, names))

    def holds_one_case(self, names: set[str]) -> bool:
        return True  # the SEG files name no structure by their file names

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        segs = [("seg", rel(folder, name)) for name in sorted(found)
                if _is_seg_name(name) and tree.isfile(rel(folder, name))]
        if not segs:
            raise CaseError("discover", "source.missing_segmentations",
                            f"entries: found {sorted(found)[:8]}, expected a DICOM SEG *.dcm file "
                            "beside dicom/", rel(folder))
        return [dicom_folder(tree, folder), *segs], ""

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        volume = read_series(case, root, max_voxels)
        masks, digests, where = {}, [], {}
        for role, seg_rel in case.files:
            if role != "seg":
                continue
            path = os.path.join(root, seg_rel)
            segments, digest = readers.mask_reader_for(path, seg_rel).read_label_map(
                path, seg_rel, volume.geometry, {})
            digests.append(digest)
            for name, mask in segments.items():
                if name in masks:
                    raise CaseError(
                        "read", "seg.duplicate_name",
                        f"SegmentSequence (0062,0002): found segment {name!r} also in "
                        f"{where[name]}, expected each structure in one segment", seg_rel)
                masks[name], where[name] = mask, seg_rel
        first = next(p for r, p in case.files if r == "seg")
        return LoadedCase(volume, masks, (volume.content_sha256, *digests), first,
                          dict(volume.notes))

    def content_digests(self, case, root: str) -> tuple[str, ...]:
        """:meth:`load`'s digests from the files' bytes alone (nothing parsed)."""
        return (series_digest(case, root), *(mask_file_digest(os.path.join(root, p), p)
                                             for r, p in case.files if r == "seg"))

    fingerprint_paths = staticmethod(listed_files)


LAYOUT = DicomSegLayout()
