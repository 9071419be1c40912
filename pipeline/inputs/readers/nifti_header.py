"""The NIfTI-1 header and data, checked on the raw bytes where ITK would hide a fault.

ITK coerces a sheared sform to the nearest rotation, fills the missing part of a
cut-short file with zeros and turns NaN into 0, each without an error, and refuses
an sform a few 1e-4 off orthonormal (float drift) when no qform rescues it; these
checks run before ITK decodes a voxel (:mod:`pipeline.inputs.readers.itk`), and
:class:`Sform` gives the grid such a drifted file is read on
(:mod:`pipeline.inputs.readers.nifti_nibabel`).  Files that are not NIfTI-1
(``.nii``, ``.nii.gz``) pass unchecked.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.core.geometry import DRIFT_MAX_SHIFT_VOXELS, Geometry, orthonormalise
from pipeline.errors import CaseError


def _nifti1_header(path: str) -> tuple[bytes, str] | None:
    """The 348-byte NIfTI-1 header of ``path`` and its byte order, or None."""
    lower = path.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if lower.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError):
        return None  # SimpleITK reports unreadable files
    if len(header) < 348:
        return None
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            return header, endian
    return None


def scan_nifti(path: str, rel: str) -> int:
    """Check that a NIfTI-1 file holds all its voxel data; count stored NaN/inf values.

    ITK fills the missing part of a cut-short file with zeros without a
    word, and turns NaN into 0, so both are checked on the raw bytes.  A
    ``.nii.gz`` of integer data is checked by its gzip trailer (the size of
    the uncompressed data) and only streamed when the trailer disagrees;
    float data is always streamed to count non-finite values.  Returns 0 for
    other formats.
    """
    found = _nifti1_header(path)
    if found is None:
        return 0
    header, endian = found
    dims = struct.unpack(endian + "8h", header[40:56])
    if not 1 <= dims[0] <= 7 or min(dims[1:1 + dims[0]]) < 1:
        return 0  # SimpleITK judges a malformed header
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    offset = max(348, int(struct.unpack(endian + "f", header[108:112])[0]))
    voxels = int(np.prod(dims[1:1 + dims[0]], dtype=np.int64))
    expected = offset + voxels * bitpix // 8
    float_type = {16: "f4", 64: "f8"}.get(datatype)
    gz = path.lower().endswith(".gz")

    def cut_short(total: int) -> CaseError:
        return CaseError(
            "read", "volume.unreadable",
            f"voxel data: found {max(0, total - offset)} bytes, expected {expected - offset} "
            f"({' x '.join(map(str, dims[1:1 + dims[0]]))} voxels of {bitpix} bits); the file "
            "is cut short",
            rel,
        )

    if not gz:
        size = os.path.getsize(path)
        if size < expected:
            raise cut_short(size)
        if float_type is None:
            return 0
    elif float_type is None:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            trailer = struct.unpack("<I", f.read(4))[0]
        if trailer == expected % (1 << 32):
            return 0
    opener = gzip.open if gz else open
    total, bad = 0, 0
    item = np.dtype(endian + float_type).itemsize if float_type else 1
    try:
        with opener(path, "rb") as f:
            head = f.read(offset)
            total = len(head)
            carry = b""
            while block := f.read(1 << 22):
                total += len(block)
                if float_type:
                    block = carry + block
                    usable = len(block) // item * item
                    values = np.frombuffer(block[:usable], dtype=endian + float_type)
                    bad += int(np.count_nonzero(~np.isfinite(values)))
                    carry = block[usable:]
    except (EOFError, OSError, zlib.error) as err:
        raise CaseError(
            "read", "volume.unreadable",
            f"gzip stream: found it cut short or corrupt after {total} bytes ({err}), expected "
            f"{expected} bytes of NIfTI data",
            rel,
        ) from err
    if total < expected:
        raise cut_short(total)
    return bad


_UNIT_SCALE = {1: 1000.0, 2: 1.0, 3: 0.001}  # xyzt_units & 7: metre, millimetre, micron


@dataclass(frozen=True)
class Sform:
    """A NIfTI-1 sform, how far it is from orthonormal and the grid it gives once made so.

    ``cosine``: the largest |cos| between two of its axes (0 for orthogonal axes);
    ``shift_voxels``: the largest distance, over the corners of the volume, between a
    voxel centre placed by the stored sform and by its orthonormalised axes (the nearest
    rotation, from the polar decomposition; origin and spacing kept), in voxels of the
    smallest spacing — the distance is linear in the index, so the corners bound it;
    ``geometry``: the grid with the orthonormalised axes, in ITK's conventions (LPS,
    ``[i, j, k]``, spacing = the sform's column norms, millimetres); ``qform_code``.
    """

    cosine: float
    shift_voxels: float
    geometry: Geometry
    qform_code: int

    def note(self, rel: str, reader: str = "nibabel") -> str:
        """The line recorded in the case's notes when the file is read on :attr:`geometry`."""
        return (f"{rel}: sform axes {self.cosine:.1e} off orthogonal with qform_code "
                f"{self.qform_code}, which ITK refuses; read with {reader} on the nearest "
                f"orthonormal axes, voxel centres moved by at most {self.shift_voxels:.3f} "
                f"voxel (limit {DRIFT_MAX_SHIFT_VOXELS:g})")


def check_nifti_sform(path: str, rel: str) -> Sform | None:
    """The sform of a NIfTI-1 file, checked: float drift is accepted, a sheared grid is not.

    ITK coerces a sheared sform to the nearest rotation with only a console
    warning (which would silently move every voxel), and refuses one a few 1e-4
    off orthonormal when no qform rescues it (about 140 TotalSegmentator CT
    cases).  An sform is accepted within the float-drift bounds of
    :func:`pipeline.core.geometry.orthonormalise` (axes within 1e-3 of
    orthogonal, no voxel centre moved by more than 0.1 voxel); otherwise
    ``geometry.non_orthogonal`` names the matrix found and the bound.  Returns
    None for files without an sform (``sform_code`` 0) or that are not NIfTI-1.
    """
    found = _nifti1_header(path)
    if found is None:
        return None
    return header_sform(*found, rel)


def header_sform(header: bytes, endian: str, rel: str) -> Sform | None:
    """:func:`check_nifti_sform` of a header already read (its 348 bytes and byte order)."""
    if struct.unpack(endian + "h", header[254:256])[0] <= 0:  # sform_code: no sform
        return None
    rows = [struct.unpack(endian + "4f", header[o:o + 16]) for o in (280, 296, 312)]
    sform = np.array(rows, dtype=np.float64)
    scale = _UNIT_SCALE.get(header[123] & 7, 1.0)
    affine, offset = sform[:, :3] * scale, sform[:, 3] * scale
    norms = np.linalg.norm(affine, axis=0)
    shown = np.array2string(sform[:, :3], precision=4, separator=", ").replace("\n", "")
    if not np.all(np.isfinite(sform)) or np.any(norms == 0):
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"direction (NIfTI sform srow_x/y/z): found {shown}, expected three non-zero axes",
            rel,
        )
    dims = struct.unpack(endian + "8h", header[40:56])
    shape = tuple(int(dims[1 + a]) if a < dims[0] else 1 for a in range(3))
    if min(shape) < 1:
        return None  # a malformed header: SimpleITK or nibabel reports it
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    try:
        stored = Geometry(
            shape=shape,
            spacing=tuple(float(n) for n in norms),
            origin=tuple(float(v) + 0.0 for v in ras_to_lps @ offset),
            direction=tuple(float(v) + 0.0 for v in (ras_to_lps @ (affine / norms)).ravel()),
        )
    except ValueError as err:
        raise CaseError("read", "geometry.invalid", f"header: {err}", rel) from err
    try:
        geometry, cosine, shift = orthonormalise(
            stored, "direction (NIfTI sform srow_x/y/z)", shown)
    except CaseError as err:
        raise err.with_path(rel) from None
    return Sform(cosine, shift, geometry, int(struct.unpack(endian + "h", header[252:254])[0]))


def nifti_non_finite(path: str) -> int:
    """Count NaN/inf voxels stored in a float NIfTI-1 file (0 for other files).

    ITK's NIfTI reader silently turns NaN into 0, so the raw data is scanned.
    """
    return scan_nifti(path, os.path.basename(path))

