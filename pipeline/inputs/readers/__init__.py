"""Readers: DICOM series and ITK-readable volumes (NIfTI, NRRD, MHA) and masks.

One reader per format behind one interface (:class:`~.base.Reader` for images,
:class:`~.base.MaskReader` for masks and label maps read against an image's grid),
listed in :mod:`.registry` (:func:`~.registry.reader_for` and
:func:`~.registry.mask_reader_for` pick one from the file names):
:mod:`.itk` (with :mod:`.nifti_header` and :mod:`.nifti_nibabel`, which reads the NIfTI
files ITK refuses for float drift in their sform) and :mod:`.dicom` (with
:mod:`.dicom_files`, :mod:`.dicom_series`, :mod:`.dicom_decode`).  The case layouts
(:mod:`pipeline.inputs.layouts`) read every image and mask through the registry, so a new
format is one reader module plus one registry line.  Every reader
returns a :class:`~.base.Volume` in the canonical orientation (``[i, j, k]``, i→L,
j→P, k→S; see :mod:`pipeline.core.geometry`) and raises :class:`CaseError` naming
the file (relative to the input root) and the field, with the value found and the
value expected, for anything it cannot read.  Nothing from a file's header leaves
the readers except the allow-listed fields of :data:`.dicom.HEADER_ALLOW_LIST`.

What is accepted and what is rejected (reason slugs) is pinned by the table of
``tests/test_bad_inputs.py``; in short: every DICOM transfer syntax with an
installed decoder is decoded, only undecodable pixel data is rejected; a 3D
volume is required (a single 2D image, a 4D series or a 4D NIfTI with more
than one time point is ``volume.not_3d``); grids must be orthonormal within float
drift (:func:`pipeline.core.geometry.orthonormalise`: axes within 1e-3 of orthogonal,
no voxel moved by more than 0.1 voxel; fixed and noted) and intensities finite; a
DICOM element pydicom cannot convert is ``dicom.bad_element``; masks must lie on the image grid with values {0, 1} or
{0, 255}.

PNG is not a reader here.  The ``tree`` kind's PNGs are checked and passed through as
their stored bytes (metadata chunks removed), never decoded into an array; they carry no
grid, orientation, modality or voxel spacing, and are read as bytes through
:class:`~pipeline.inputs.tree.InputTree` (remote inputs too) rather than as local files.
A PNG reader would return none of what :class:`~.base.Reader` promises, and no case layout
would ever choose it, so the PNG check (:func:`pipeline.inputs.layouts.tree.check_png`)
stays with the tree layout, the only input that holds PNGs.

This module is the package's public surface: it re-exports the names the rest of
the pipeline uses.  The readers themselves and their registry are imported on first use
(:data:`_LAZY`): discovery needs only the file-name helpers of :mod:`.base`, and a build
that reads no case (``radvqa regenerate``) never loads them: ``import
pipeline.inputs.layouts`` took 9.6 ms of CPU with them, 3.7 ms without (measured).
"""

import importlib

from pipeline.inputs.readers.base import (
    VOLUME_SUFFIXES,
    MaskReader,
    Reader,
    Volume,
    file_sha256,
    is_volume_file,
    iter_mask_files,
    list_files,
    strip_volume_suffix,
)

#: The names imported from their module when first asked for (module ``__getattr__``); a
#: module here calls them as ``readers.reader_for(…)``, looked up when called.
_LAZY = {
    "read_dicom_series": "dicom",
    "read_label_map": "itk",
    "read_mask": "itk",
    "read_volume": "itk",
    "read_label_table": "nifti_labels",
    "MASK_READERS": "registry",
    "READERS": "registry",
    "mask_reader_for": "registry",
    "reader_for": "registry",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "MASK_READERS",
    "READERS",
    "VOLUME_SUFFIXES",
    "MaskReader",
    "Reader",
    "Volume",
    "file_sha256",
    "is_volume_file",
    "iter_mask_files",
    "list_files",
    "mask_reader_for",
    "read_dicom_series",
    "read_label_map",
    "read_label_table",
    "read_mask",
    "read_volume",
    "reader_for",
    "strip_volume_suffix",
]
