"""NIfTI files that ITK refuses for float drift in their sform, read with nibabel.

ITK ≥ 5.2 (SimpleITK ≥ 2.1) refuses a NIfTI whose sform is a few 1e-4 off
orthonormal when no qform rescues it ("ITK only supports orthonormal direction
cosines"); about 140 of TotalSegmentator's 1,228 public CT cases are written that
way (TotalSegmentator issue #461).  nibabel, which wrote them, reads them.  Only
files whose drift :func:`~pipeline.inputs.readers.nifti_header.check_nifti_sform`
accepted come here: the voxels are decoded by nibabel (stored values with
``scl_slope``/``scl_inter`` applied, as ITK does) and placed on the grid of the
orthonormalised sform (:class:`~pipeline.inputs.readers.nifti_header.Sform`),
with the same checks as the ITK path (3D, one component, voxel limit, complete
data, NaN/inf counted on the raw bytes).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.geometry import Geometry
from pipeline.errors import CaseError
from pipeline.inputs.readers.base import check_3d
from pipeline.inputs.readers.nifti_header import Sform, scan_nifti


def read_with_nibabel(path: str, rel: str, sform: Sform, *,
                      max_voxels: int | None = None) -> tuple[np.ndarray, Geometry, int]:
    """``(array [i, j, k], grid, stored NaN/inf count)`` of a drifted NIfTI file.

    The grid is ``sform.geometry`` (not canonical); the array is in the file's
    axis order, as :func:`pipeline.inputs.readers.itk.read_itk` returns it.
    """
    # Imported here, not at the top: nibabel costs 0.35-0.9 s to import (measured with
    # ``python -X importtime -c "import nibabel"``, 3 runs on 2 busy cores), and only
    # files ITK refuses for sform drift need it.
    import nibabel

    try:
        image = nibabel.load(path)
        shape = tuple(int(n) for n in image.shape)
        dtype = image.get_data_dtype()
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad headers
        raise CaseError(
            "read", "volume.unreadable",
            f"file: found a NIfTI header nibabel cannot read ({type(err).__name__}: {err}), "
            "expected a NIfTI-1 volume",
            rel,
        ) from err
    components = shape[4] if len(shape) >= 5 and shape[3] == 1 else 1
    if dtype.names or components > 1:
        raise CaseError(
            "read", "volume.multicomponent",
            f"pixel: found {components if components > 1 else len(dtype.names)} components, "
            "expected 1",
            rel,
        )
    check_3d(shape, rel)
    n = int(np.prod(shape[:3]))
    if max_voxels and n > max_voxels:
        raise CaseError(
            "read", "volume.too_large",
            f"size: found {shape[:3]} = {n} voxels, expected at most {max_voxels}",
            rel,
        )
    if shape[:3] != tuple(sform.geometry.shape):
        raise CaseError(
            "read", "volume.unreadable",
            f"dim: found {shape} in nibabel's reading and {sform.geometry.shape} in the header, "
            "expected one size",
            rel,
        )
    non_finite = scan_nifti(path, rel)
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 - gzip, zlib and nibabel errors alike
        raise CaseError(
            "read", "volume.unreadable",
            f"voxel data: found data nibabel cannot decode ({type(err).__name__}: {err}), "
            "expected a complete NIfTI-1 volume",
            rel,
        ) from err
    return array.reshape(shape[:3], order="F"), sform.geometry, non_finite
