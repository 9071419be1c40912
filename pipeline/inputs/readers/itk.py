"""ITK-readable volumes (NIfTI, NRRD, MHA) read with SimpleITK: images, binary masks, label maps.

Arrays come back in the canonical orientation (``[i, j, k]``, i→L, j→P, k→S; see
:mod:`pipeline.core.geometry`).  Before any voxel is decoded the header is
checked (a 3D image, or 4D with one time point; a NIfTI sform orthonormal within
float drift; the voxel limit) and a NIfTI's data is checked to be complete and its
stored intensities finite (:mod:`pipeline.inputs.readers.nifti_header`).  A NIfTI
that ITK refuses for float drift in its sform (no qform) is read with nibabel on
the orthonormalised grid (:mod:`pipeline.inputs.readers.nifti_nibabel`) and noted.  Masks must lie
on the image's grid with values {0, 1} or {0, 255}; label maps must hold integers
that ``labels.json`` names.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pipeline.core.geometry import (
    Geometry,
    canonicalise,
    geometry_mismatches,
    is_orthonormal,
    orthonormalise,
)
from pipeline.errors import CaseError
from pipeline.inputs.readers.base import (
    VOLUME_SUFFIXES,
    Files,
    Volume,
    check_3d,
    check_finite,
    drift_note,
    file_sha256,
    is_volume_file,
)
from pipeline.inputs.readers.nifti_header import Sform, check_nifti_sform, scan_nifti
from pipeline.inputs.readers.nifti_nibabel import read_with_nibabel


def read_itk(path: str, rel: str, *, max_voxels: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an ITK-readable 3D file; return its ``[i, j, k]`` array and grid (not canonical)."""
    array, geometry, _ = _read_itk(path, rel, max_voxels=max_voxels)
    return array, geometry


def _read_itk(path: str, rel: str, *, max_voxels: int | None = None, notes: dict | None = None):
    """:func:`read_itk` plus the number of NaN/inf values stored in a float NIfTI.

    The header is checked first (dimension, sform, voxel limit), then a NIfTI's
    data is checked to be complete, before any voxel is decoded.  A NIfTI that
    ITK refuses for float drift in its sform is read with nibabel on the
    orthonormalised grid when the drift is within the bounds of
    :func:`~pipeline.inputs.readers.nifti_header.check_nifti_sform`, and a line
    saying so is added to ``notes["nifti_sform_orthonormalised"]``.
    """
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            sform = _drift_itk_refuses(err, path, rel)
            if sform is None:
                raise
            array, geometry, non_finite = read_with_nibabel(path, rel, sform,
                                                            max_voxels=max_voxels)
            if notes is not None:
                notes.setdefault("nifti_sform_orthonormalised", []).append(sform.note(rel))
            return array, geometry, non_finite
        size = reader.GetSize()
        check_3d(size, rel)
        check_nifti_sform(path, rel)
        n = int(np.prod(size))
        if max_voxels and n > max_voxels:
            raise CaseError(
                "read", "volume.too_large",
                f"size: found {tuple(size)} = {n} voxels, expected at most {max_voxels}",
                rel,
            )
        non_finite = scan_nifti(path, rel)
        image = reader.Execute()
    except CaseError:
        raise
    except RuntimeError as err:
        lines = [ln for ln in str(err).replace(path, rel).splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else type(err).__name__
        raise CaseError(
            "read", "volume.unreadable",
            f"file: found data SimpleITK cannot read ({detail}), expected a NIfTI, NRRD or MHA "
            "volume",
            rel,
        ) from err
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(
            "read", "volume.multicomponent",
            f"pixel: found {image.GetNumberOfComponentsPerPixel()} components, expected 1",
            rel,
        )
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    try:
        geometry = Geometry(
            shape=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )
    except ValueError as err:
        raise CaseError("read", "geometry.invalid", f"header: {err}", rel) from err
    if not is_orthonormal(geometry.direction):  # float drift ITK let through (NRRD, MHA)
        try:
            geometry, cosine, shift = orthonormalise(geometry)
        except CaseError as err:
            raise err.with_path(rel) from None
        if notes is not None:
            notes.setdefault("direction_orthonormalised", []).append(
                drift_note(rel, "direction cosines", cosine, shift))
    return array, geometry, non_finite


def _drift_itk_refuses(err: RuntimeError, path: str, rel: str) -> Sform | None:
    """The checked sform of a NIfTI that ITK refused for non-orthonormal direction cosines
    (float drift, no qform), or None when ITK refused the file for another reason.

    Raises ``geometry.non_orthogonal`` when the sform is sheared beyond float drift.
    """
    if "orthonormal" not in str(err):
        return None
    return check_nifti_sform(path, rel)


def read_volume(path: str, rel: str, modality: str, *, max_voxels: int | None = None) -> Volume:
    """Read an image volume (NIfTI, NRRD, MHA) into a canonical :class:`Volume`."""
    notes: dict = {}
    array, geometry, bad = _read_itk(path, rel, max_voxels=max_voxels, notes=notes)
    if bad:
        raise CaseError(
            "read", "volume.non_finite",
            f"voxels: found {bad} NaN/inf values in the stored data, expected finite intensities",
            rel,
        )
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    canon = canon.astype(np.float32, copy=False)
    check_finite(canon, rel)
    return Volume(canon, cgeom, modality, {"Modality": modality}, file_sha256(path), notes)


def _on_image_grid(path: str, rel: str, image: Geometry):
    """Read a mask or label map; its canonical array if it lies on ``image``'s grid."""
    array, geometry, bad = _read_itk(path, rel)
    try:
        canon, cgeom = canonicalise(array, geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    problems = geometry_mismatches(cgeom, image)
    if problems:
        raise CaseError(
            "read", "mask.geometry_mismatch",
            f"grid: found {'; '.join(problems)}, expected the mask on the image's grid",
            rel,
        )
    return canon, bad


def read_mask(path: str, rel: str, image: Geometry) -> tuple[np.ndarray, str]:
    """Read a binary mask on ``image``'s canonical grid; return ``(bool array, sha256)``.

    Accepted values are {0, 1} and {0, 255}; a mask whose grid differs from the
    image's (after both are canonicalised) is rejected with every mismatching
    field.
    """
    canon, bad = _on_image_grid(path, rel, image)
    if bad:
        raise CaseError(
            "read", "mask.not_binary",
            f"values: found {bad} NaN/inf values, expected {{0, 1}} (or {{0, 255}})",
            rel,
        )
    values = np.unique(canon)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", …" if len(values) > 8 else "")
        raise CaseError(
            "read", "mask.not_binary",
            f"values: found {{{shown}}}, expected {{0, 1}} (or {{0, 255}})",
            rel,
        )
    return canon != 0, file_sha256(path)


def read_label_map(
    path: str, rel: str, image: Geometry, labels: dict[int, str]
) -> tuple[dict[str, np.ndarray], str]:
    """Split a multilabel map into per-structure masks (canonical grid)."""
    canon, bad = _on_image_grid(path, rel, image)
    if bad or not (np.issubdtype(canon.dtype, np.integer)
                   or np.array_equal(canon, np.round(canon))):
        raise CaseError(
            "read", "labels.non_integer",
            f"values: found non-integer labels in a {canon.dtype} map"
            + (f" ({bad} NaN/inf)" if bad else "") + ", expected integers",
            rel,
        )
    canon = canon.astype(np.int64, copy=False)
    values = set(np.unique(canon).tolist()) - {0}
    unmapped = sorted(values - set(labels))
    if unmapped:
        raise CaseError(
            "read", "labels.unmapped_value",
            f"values: found label values {unmapped} that the class map does not name, "
            f"expected only {sorted(labels)}",
            rel,
        )
    masks = {name: canon == value for value, name in sorted(labels.items()) if value in values}
    return masks, file_sha256(path)


class ItkReader:
    """The :class:`~pipeline.inputs.readers.base.Reader` of one NIfTI, NRRD or MHA file, and
    the :class:`~pipeline.inputs.readers.base.MaskReader` of masks and label maps in them."""

    name = "itk"
    takes = "one NIfTI, NRRD or MHA file (" + ", ".join(VOLUME_SUFFIXES) + ")"

    def accepts(self, files: Files, *, folder: bool = False) -> bool:
        """One file, named by a layout (not a folder's listing), whose name ends with a
        volume suffix."""
        return not folder and len(files) == 1 and is_volume_file(files[0][1])

    def read(self, files: Files, *, modality: str = "CT",
             max_voxels: int | None = None) -> Volume:
        """:func:`read_volume` of the one file, as ``modality``."""
        path, rel = files[0]
        return read_volume(path, rel, modality, max_voxels=max_voxels)

    def accepts_mask(self, path: str, rel: str) -> bool:
        """A file whose name ends with a volume suffix."""
        return is_volume_file(rel)

    def read_mask(self, path: str, rel: str, image: Geometry) -> tuple[np.ndarray, str]:
        """:func:`read_mask`."""
        return read_mask(path, rel, image)

    def read_label_map(self, path: str, rel: str, image: Geometry,
                       labels: dict[int, str]) -> tuple[dict[str, np.ndarray], str]:
        """:func:`read_label_map`."""
        return read_label_map(path, rel, image, labels)
