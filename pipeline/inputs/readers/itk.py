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

from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.geometry import (
    Geometry,
    canonical_grid,
    canonical_view,
    geometry_mismatches,
    is_orthonormal,
    orthonormalise,
)
from pipeline.core.masks import Mask, mask_from_source_box, nonzero_extent
from pipeline.errors import CaseError
from pipeline.inputs.readers.base import (
    VOLUME_SUFFIXES,
    Files,
    OneFileDigest,
    Volume,
    check_3d,
    check_finite,
    drift_note,
    file_sha256,
    is_volume_file,
)
from pipeline.inputs.readers.nifti_header import Sform, check_nifti_sform, scan_nifti
from pipeline.inputs.readers.nifti_nibabel import read_with_nibabel
from pipeline.inputs.readers.nifti_raw import read_plain

if TYPE_CHECKING:
    import SimpleITK as sitk


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
    # SimpleITK on first use: its import costs 0.05 s CPU, 0.1 s wall (measured), which a
    import SimpleITK as sitk  # regenerate from stored pixels never needs
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
    array = np.transpose(_buffer(image), (2, 1, 0))
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


class _ImageBuffer:
    """A SimpleITK image's pixel buffer for numpy, kept alive by arrays made from it (no copy)."""

    def __init__(self, image: sitk.Image):
        import SimpleITK as sitk  # on first use (see _read_itk)
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def _buffer(image: sitk.Image) -> np.ndarray:
    """The image's voxels as a ``[k, j, i]`` array sharing its buffer (no copy)."""
    return np.asarray(_ImageBuffer(image))


def itk_header_grid(path: str) -> Geometry | None:
    """The grid SimpleITK reads from a file's header alone (3D, 1 component, orthonormal axes) or None."""
    import SimpleITK as sitk  # on first use (see _read_itk)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
            return None
        geometry = Geometry(
            shape=tuple(int(s) for s in reader.GetSize()),
            spacing=tuple(float(s) for s in reader.GetSpacing()),
            origin=tuple(float(o) for o in reader.GetOrigin()),
            direction=tuple(float(d) for d in reader.GetDirection()),
        )
    except (RuntimeError, ValueError):
        return None
    return geometry if is_orthonormal(geometry.direction) else None


def _read_plain_image(path: str, rel: str, max_voxels: int | None):
    """``(array, grid, sha256)`` of a plain gzipped NIfTI image
    (:func:`~pipeline.inputs.readers.nifti_raw.read_plain`: voxels inflated once, without
    SimpleITK's fresh buffer and the header checks' re-opening), on the grid SimpleITK reads
    from its header — the very numbers the ITK road gives; ``None`` for any other file."""
    plain = read_plain(path, rel, max_voxels=max_voxels)
    if plain is None:
        return None
    geometry = itk_header_grid(path)
    if geometry is None or geometry_mismatches(geometry, plain.geometry):
        return None
    return plain.array, geometry, plain.sha256


def read_volume(path: str, rel: str, modality: str, *, max_voxels: int | None = None) -> Volume:
    """Read an image volume (NIfTI, NRRD, MHA) into a canonical :class:`Volume`."""
    notes: dict = {}
    plain = _read_plain_image(path, rel, max_voxels)
    if plain is not None:
        array, geometry, sha = plain
        bad = 0
    else:
        array, geometry, bad = _read_itk(path, rel, max_voxels=max_voxels, notes=notes)
        sha = file_sha256(path)
    if bad:
        raise CaseError(
            "read", "volume.non_finite",
            f"voxels: found {bad} NaN/inf values in the stored data, expected finite intensities",
            rel,
        )
    try:
        source_axis, flipped, cgeom = canonical_grid(geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    # Reoriented as a view.  Integers of up to 16 bits (CT's int16) stay as stored, a view
    # of the reader's buffer (Volume.array converts them when asked); other types are
    # converted to float32 in one copy that keeps the file's memory order (for a NIfTI, i
    # fastest): a copy into C order would walk the buffer against its strides, about 3x
    # slower at 256 x 256 x 330.
    canon = canonical_view(array, source_axis, flipped)
    if not (np.issubdtype(canon.dtype, np.integer) and canon.dtype.itemsize <= 2):
        canon = canon.astype(np.float32, order="K")
    if not np.issubdtype(array.dtype, np.integer):  # integers are finite, and so their floats
        check_finite(canon, rel)
    return Volume(canon, cgeom, modality, {"Modality": modality}, sha, notes)


def _on_image_grid(path: str, rel: str, image: Geometry, *, skip_zero: bool = False,
                   notes: dict | None = None):
    """Read a mask or label map whose grid is ``image``'s: ``(array, source_axis, flipped,
    non-finite count, sha256, k0, peaks)``, the array ``[i, j, k]`` in the file's own
    orientation and sharing the reader's buffer (nothing is reoriented or copied here), from
    slice ``k0`` on.

    A plain gzipped NIfTI is read by :func:`~pipeline.inputs.readers.nifti_raw.read_plain`
    (``skip_zero``: the slices holding its voxels, until the next such read on this thread;
    ``None`` if all zero; and, for ``uint8`` voxels, their largest value along k of each
    ``(i, j)``, ``peaks``), any other file by SimpleITK (whole, ``k0`` 0, ``peaks`` None).
    A grid read on an orthonormalised sform is noted in
    ``notes["nifti_sform_orthonormalised"]``."""
    plain = read_plain(path, rel, skip_zero=skip_zero, drift=True, peaks=skip_zero)
    k0 = plain.k_span[0] if plain is not None and plain.k_span else 0
    peaks = None if plain is None else plain.peaks
    if plain is not None:
        array, geometry, bad, sha = plain.array, plain.geometry, 0, plain.sha256
        if plain.note and notes is not None:
            notes.setdefault("nifti_sform_orthonormalised", []).append(plain.note)
    else:
        array, geometry, bad = _read_itk(path, rel, notes=notes)
        sha = file_sha256(path)
    try:
        source_axis, flipped, cgeom = canonical_grid(geometry)
    except CaseError as err:
        raise err.with_path(rel) from None
    problems = geometry_mismatches(cgeom, image)
    if problems:
        raise CaseError(
            "read", "mask.geometry_mismatch",
            f"grid: found {'; '.join(problems)}, expected the mask on the image's grid",
            rel,
        )
    return array, source_axis, flipped, bad, sha, k0, peaks


def _not_binary(array: np.ndarray, rel: str, zeros_beside: bool = False) -> CaseError:
    values = np.union1d(array, np.zeros(int(zeros_beside), array.dtype))  # (on the way to an error)
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", …" if len(values) > 8 else "")
    return CaseError(
        "read", "mask.not_binary",
        f"values: found {{{shown}}}, expected {{0, 1}} (or {{0, 255}})",
        rel,
    )


def read_mask(path: str, rel: str, image: Geometry, notes: dict | None = None
              ) -> tuple[Mask, str]:
    """Read a binary mask on ``image``'s canonical grid; return ``(Mask, sha256)``; what
    was assumed (an orthonormalised sform) goes to ``notes``.

    Accepted values are {0, 1} and {0, 255}; a mask whose grid differs from the image's (after
    both are canonicalised) is rejected with every mismatching field.  The voxels (of a plain
    NIfTI, the slices holding them) are scanned once in the file's own orientation for their
    extent; an empty mask ends there, any other is checked and reoriented within that box
    only (:class:`~pipeline.core.masks.Mask`)."""
    array, source_axis, flipped, bad, sha, k0, peaks = _on_image_grid(
        path, rel, image, skip_zero=True, notes=notes)
    if bad:
        raise CaseError(
            "read", "mask.not_binary",
            f"values: found {bad} NaN/inf values, expected {{0, 1}} (or {{0, 255}})",
            rel,
        )
    # the buffer is [k, j, i] in memory: its extent is found there, then read as [i, j, k];
    # unsigned voxels' largest values along k (folded by the reader as it wrote them, or
    # found here) give the extent's (j, i) plane and the mask's largest value ({0, 1}
    # masks: no other scan of their values)
    kji = None if array is None else np.transpose(array, (2, 1, 0))
    if peaks is not None:
        peaks = peaks.T
    elif kji is not None and kji.dtype.kind in "ub":
        peaks = kji.max(axis=0)
    found = None if kji is None else nonzero_extent(kji, peaks)
    if found is None:
        return Mask(tuple(int(n) for n in image.shape)), sha
    lo, hi = found[0][::-1], found[1][::-1]
    box = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    values = None if peaks is not None and peaks.max() == 1 else box[box != 0]  # {0, 1}
    if values is not None and not (values[0] in (1, 255) and np.all(values == values[0])):
        raise _not_binary(array, rel, array.size < np.prod(image.shape))
    return mask_from_source_box(array, lo, hi, source_axis, flipped, shape=image.shape, k0=k0), sha


def _label_boxes(array: np.ndarray) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{label value: (lo, hi)}``: the box (source ``[i, j, k]``, maxima exclusive) of every
    non-zero value of an integer label array, from one pass (SimpleITK's label shape
    statistics with every costly feature off)."""
    import SimpleITK as sitk  # on first use (see _read_itk)
    image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.SetBackgroundValue(0)
    stats.ComputePerimeterOff()
    stats.ComputeFeretDiameterOff()
    stats.ComputeOrientedBoundingBoxOff()
    stats.Execute(image)
    out = {}
    for value in stats.GetLabels():
        x, y, z, nx, ny, nz = stats.GetBoundingBox(value)
        out[int(value)] = ((x, y, z), (x + nx, y + ny, z + nz))
    return out


def read_label_map(
    path: str, rel: str, image: Geometry, labels: dict[int, str], notes: dict | None = None
) -> tuple[dict[str, Mask], str]:
    """Split a multilabel map into per-structure masks (canonical grid, each cropped to its
    extent: :class:`~pipeline.core.masks.Mask`).

    The values' range is checked first; the extents of all labels come from one pass, then
    each label is compared and reoriented within its own box only.
    """
    array, source_axis, flipped, bad, sha, _, _ = _on_image_grid(path, rel, image, notes=notes)
    integer = np.issubdtype(array.dtype, np.integer)
    if bad or not (integer or np.array_equal(array, np.round(array))):
        raise CaseError(
            "read", "labels.non_integer",
            f"values: found non-integer labels in a {array.dtype} map"
            + (f" ({bad} NaN/inf)" if bad else "") + ", expected integers",
            rel,
        )
    low, high = array.min(), array.max()
    if low < 0 or high > max(labels):
        values = set(np.unique(array).astype(np.int64).tolist()) - {0}
        unmapped = sorted(values - set(labels))
    else:
        if array.dtype.kind != "u" or array.dtype.itemsize > 4:  # what the statistics take
            array = array.astype(np.min_scalar_type(int(high)))
        boxes = _label_boxes(array)
        unmapped = sorted(set(boxes) - set(labels))
    if unmapped:
        raise CaseError(
            "read", "labels.unmapped_value",
            f"values: found label values {unmapped} that the class map does not name, "
            f"expected only {sorted(labels)}",
            rel,
        )
    masks = {name: mask_from_source_box(array, *boxes[value], source_axis, flipped, value)
             for value, name in sorted(labels.items()) if value in boxes}
    return masks, sha


class ItkReader(OneFileDigest):
    """The :class:`~pipeline.inputs.readers.base.Reader` of one NIfTI, NRRD or MHA file, and
    the :class:`~pipeline.inputs.readers.base.MaskReader` of masks and label maps in them."""

    name = "itk"
    takes = "one NIfTI, NRRD or MHA file (" + ", ".join(VOLUME_SUFFIXES) + ")"

    def accepts(self, files: Files, *, folder: bool = False) -> bool:
        """One file named by a layout (not a folder's listing) with a volume suffix."""
        return not folder and len(files) == 1 and is_volume_file(files[0][1])

    def read(self, files: Files, *, modality: str = "CT",
             max_voxels: int | None = None) -> Volume:
        """:func:`read_volume` of the one file, as ``modality``."""
        path, rel = files[0]
        return read_volume(path, rel, modality, max_voxels=max_voxels)

    def accepts_mask(self, path: str, rel: str) -> bool:
        """A file whose name ends with a volume suffix."""
        return is_volume_file(rel)

    def read_mask(self, path: str, rel: str, image: Geometry,
                  notes: dict | None = None) -> tuple[Mask, str]:
        """:func:`read_mask`."""
        return read_mask(path, rel, image, notes)

    def read_label_map(self, path: str, rel: str, image: Geometry,
                       labels: dict[int, str], notes: dict | None = None
                       ) -> tuple[dict[str, Mask], str]:
        """:func:`read_label_map`."""
        return read_label_map(path, rel, image, labels, notes)
