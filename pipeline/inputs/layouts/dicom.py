"""DICOM layout: ``dicom/`` (the files of one CT or MR series, any names, any depth) beside
``segmentations/<structure>.nii.gz``, one mask file per structure on the series' grid.  The
series header gives the modality."""

from __future__ import annotations

from pipeline.errors import CaseError
from pipeline.inputs import readers
from pipeline.inputs.layouts.base import (
    LoadedCase,
    has_files,
    image_digest,
    listed_files,
    rel,
    segmentations_digests,
    segmentations_files,
    with_segmentations,
)
from pipeline.inputs.readers import list_files
from pipeline.inputs.tree import InputTree


def read_series(case, root: str, max_voxels: int):
    """The case's ``dicom/`` folder read as one image volume: the whole folder goes to the
    reader that takes folders (every file; it skips the strays)."""
    files = series_files(case, root)
    return readers.reader_for(files, folder=True).read(files, max_voxels=max_voxels)


def series_files(case, root: str):
    """Every file of the case's ``dicom/`` folder (``(absolute, relative)``, sorted)."""
    series = case.file("dicom")
    files = list_files(root, series)
    if not files:
        raise CaseError("read", "dicom.no_files", "found an empty dicom/ folder", series)
    return files


def series_digest(case, root: str) -> str:
    """The ``content_sha256`` :func:`read_series` gives the case's volume, from the bytes
    of its files alone."""
    return image_digest(series_files(case, root), folder=True)

class DicomLayout:
    """``dicom/`` + ``segmentations/`` (see the module docstring)."""

    name = "dicom"
    expected = "dicom/ + segmentations/"

    def detect(self, names: set[str]) -> bool:
        return "dicom" in names

    def holds_one_case(self, names: set[str]) -> bool:
        return "segmentations" in names

    def files(self, tree: InputTree, folder: str, found: set[str]) -> tuple[list[tuple[str, str]], str]:
        return [dicom_folder(tree, folder), segmentations_files(tree, folder, found)], ""

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        volume = read_series(case, root, max_voxels)
        return with_segmentations(case, root, volume)

    def content_digests(self, case, root: str) -> tuple[str, ...]:
        """:meth:`load`'s digests from the files' bytes alone (nothing parsed)."""
        return segmentations_digests(case, root, series_files(case, root), folder=True)

    fingerprint_paths = staticmethod(listed_files)


LAYOUT = DicomLayout()


def dicom_folder(tree: InputTree, folder: str) -> tuple[str, str]:
    """The ``dicom`` entry of a case with a DICOM series, checked to hold files."""
    dicom = rel(folder, "dicom")
    if not tree.isdir(dicom) or not has_files(tree, dicom, lambda name: True):
        raise CaseError(
            "discover", "dicom.no_files",
            "dicom/: found no files, expected the DICOM files of a CT or MR series",
            rel(folder, "dicom"),
        )
    return ("dicom", dicom)
