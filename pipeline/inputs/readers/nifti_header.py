"""The NIfTI-1 header and data, checked on the raw bytes where ITK would hide a fault.

ITK coerces a sheared sform to the nearest rotation, fills the missing part of a
cut-short file with zeros and turns NaN into 0, each without an error; these
checks run before ITK decodes a voxel (:mod:`pipeline.inputs.readers.itk`).
Files that are not NIfTI-1 (``.nii``, ``.nii.gz``) pass unchecked.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

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


def check_nifti_sform(path: str, rel: str) -> None:
    """Reject a NIfTI whose sform is sheared (non-orthogonal axes).

    ITK coerces such a matrix to the nearest rotation with only a console
    warning, which would silently move every voxel; the stored sform is
    checked here instead.
    """
    found = _nifti1_header(path)
    if found is None:
        return
    header, endian = found
    if struct.unpack(endian + "h", header[254:256])[0] <= 0:  # sform_code: no sform
        return
    rows = [struct.unpack(endian + "4f", header[o:o + 16])[:3] for o in (280, 296, 312)]
    affine = np.array(rows, dtype=np.float64)
    norms = np.linalg.norm(affine, axis=0)
    shown = np.array2string(affine, precision=4, separator=", ").replace("\n", "")
    if np.any(norms == 0) or not np.all(np.isfinite(affine)):
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"direction (NIfTI sform srow_x/y/z): found {shown}, expected three non-zero axes",
            rel,
        )
    unit = affine / norms
    if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-3):
        raise CaseError(
            "read", "geometry.non_orthogonal",
            f"direction (NIfTI sform srow_x/y/z): axes are not orthogonal: found {shown}, "
            "expected orthogonal axes (a sheared grid cannot be reoriented without resampling)",
            rel,
        )


def nifti_non_finite(path: str) -> int:
    """Count NaN/inf voxels stored in a float NIfTI-1 file (0 for other files).

    ITK's NIfTI reader silently turns NaN into 0, so the raw data is scanned.
    """
    return scan_nifti(path, os.path.basename(path))

