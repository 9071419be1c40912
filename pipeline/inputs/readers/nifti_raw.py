"""Plain gzipped NIfTI-1 files read with zlib and numpy: one open, one inflate, no ITK.

TotalSegmentator's releases hold 117 ``uint8`` mask files a case, about 95 of them empty.
SimpleITK reads each into a fresh buffer (21.6 MB at 1.5 mm, 157 MB at 0.8 mm) whose
pages the kernel must map and zero — measured at 1.5 mm: about 10,000 page faults and
26-32 ms CPU a mask, two thirds of it system time — and the header checks
(:mod:`pipeline.inputs.readers.nifti_header`) open each file three more times.  Here the
file is read once (its SHA-256 from the same bytes), inflated in 4 KiB pieces of
compressed input (by ISA-L's inflate, python-isal, when it is installed — about 4x faster
than zlib 1.2 on masks and 2x on CT images, measured; zlib otherwise, the same bytes), and
the voxel data is kept only from the first non-zero piece on (``skip_zero``): an all-zero
mask never allocates its volume.  The masks' voxels go to one buffer per thread, reused from
mask to mask (:func:`_mask_buffer`), not to a fresh one each: fresh memory's pages are mapped
and zeroed by the kernel, and on a VM that hands the memory its guest freed back to the host
(free page reporting, as on the bench's VM) first touched again by the host too — measured
on a 0.8 mm case's 22 non-empty masks read with its CT held (as ``load_case`` holds it):
0.25-0.36 s of system time a case with a fresh buffer a mask, 0.02-0.06 s with the one buffer.

Only *plain* files take this road: a single-member gzip stream (``.nii.gz``) of a
single-file NIfTI-1 (``n+1``) header, 3D, an integer voxel type, no intensity scaling
(``scl_slope`` 0 or 1, ``scl_inter`` 0), millimetre (or unknown) units, voxel data
complete and the gzip check values right, and a grid given by an sform whose axes are
orthonormal within 1e-6 (float32 rounding; for a mask, also one with float drift and no
qform, on the grid the nibabel road reads it on) and, when a qform is set too, within
:func:`~pipeline.core.geometry.geometry_mismatches`' tolerances of it, or by a qform alone.  :func:`read_plain` returns ``None`` for every
other file, and the caller reads it as before (SimpleITK with every header check and
dead-letter reason of :mod:`pipeline.inputs.readers.itk`), so no reason changes.
"""

from __future__ import annotations

import hashlib
import math
import struct
import threading
import zlib
from dataclasses import dataclass

import numpy as np

try:  # ISA-L's inflate (python-isal): 4x faster than zlib 1.2 on masks, 2x on CT images
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a dependency; zlib reads the same bytes
    _inflate_lib = zlib

from pipeline.core.geometry import Geometry, geometry_mismatches, is_orthonormal
from pipeline.errors import CaseError
from pipeline.inputs.readers.nifti_header import header_sform

#: NIfTI-1 integer datatypes -> numpy type (without byte order).
_INTEGER_TYPES = {2: "u1", 4: "i2", 8: "i4", 256: "i1", 512: "u2", 768: "u4"}
#: Compressed bytes fed to the inflater at a time: the inflated piece stays small (4 KiB of
#: an all-zero mask's deflate is about 0.9 MB of voxels, at most 4 MB), so no piece needs a
#: fresh mapping of its own.  Measured on the 117 masks of a 0.8 mm case: 16 KiB pieces cost
#: 2.5 million page faults and 8.6 s CPU (5.9 s of it in the kernel), 4 KiB ones 700 and
#: 2.0 s; the same at 1.5 mm (0.3 s).
PIECE = 1 << 12
#: With ``peaks``: voxel bytes written to the mask buffer between two folds of its new whole
#: slices into the peaks (:func:`read_plain`): the slices are folded while the cache holds
#: them (2 MB L2 on the bench's VM), not read back from memory once the file is inflated.
#: 0.5-2 MB measured alike, on a 1.5 mm case's 22 non-empty masks.
FOLD = 1 << 20
_HEADER = 352  # the 348-byte header and the 4 extension bytes of a single-file NIfTI-1
_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Plain:
    """A plain NIfTI read: ``array`` ``[i, j, k]`` in the file's own axis order (with
    ``skip_zero``: its slices ``k_span`` only, ``None`` when every voxel is zero), its grid
    in ITK's conventions (LPS, not canonical) and the SHA-256 of the file's bytes.

    With ``skip_zero`` the array is a view of the thread's mask buffer (:func:`_mask_buffer`):
    it holds these voxels until the next ``skip_zero`` read on the same thread, so a caller
    copies what it keeps (:func:`~pipeline.inputs.readers.itk.read_mask` keeps a crop)."""

    array: np.ndarray | None
    geometry: Geometry
    sha256: str
    #: With ``skip_zero``: ``(first, last + 1)`` slices along the file's third axis (k, the
    #: slowest) between which every non-zero voxel lies (from the inflated pieces that held
    #: one): ``array`` is those slices, every voxel outside them zero; ``None`` otherwise.
    k_span: tuple[int, int] | None = None
    #: The case note of a grid read on an orthonormalised sform (``drift``), else ``None``.
    note: str | None = None
    #: With ``peaks`` (``uint8`` voxels): the largest voxel along k of each ``(i, j)``, over
    #: ``k_span`` (a ``[i, j]`` view of a fresh ``[j, i]`` array); ``None`` otherwise.
    peaks: np.ndarray | None = None


def _qform_geometry(header: bytes, endian: str, shape) -> Geometry | None:
    """The grid of the header's qform (nifti1_io's ``quatern_to_mat44``), LPS."""
    b, c, d = struct.unpack(endian + "3f", header[256:268])
    offset = np.array(struct.unpack(endian + "3f", header[268:280]), dtype=np.float64)
    pixdim = struct.unpack(endian + "4f", header[76:92])
    spacing = [float(v) for v in pixdim[1:4]]
    if not all(math.isfinite(v) and v > 0 for v in spacing) or not np.all(np.isfinite(offset)):
        return None
    a2 = 1.0 - (b * b + c * c + d * d)
    if a2 < 1e-7:  # nifti1_io: a 180-degree rotation, b, c, d renormalised
        norm = math.sqrt(b * b + c * c + d * d)
        b, c, d, a = b / norm, c / norm, d / norm, 0.0
    else:
        a = math.sqrt(a2)
    rot = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    if pixdim[0] < 0:  # qfac
        rot[:, 2] = -rot[:, 2]
    try:
        return Geometry(shape=shape, spacing=tuple(spacing),
                        origin=tuple(float(v) + 0.0 for v in _LPS @ offset),
                        direction=tuple(float(v) + 0.0 for v in (_LPS @ rot).ravel()))
    except ValueError:
        return None


def _sform_geometry(header: bytes, endian: str, shape) -> Geometry | None:
    """The grid of the header's sform (LPS, spacing = its column norms, as
    :func:`~pipeline.inputs.readers.nifti_header.check_nifti_sform` reads it) when its axes
    are orthonormal within 1e-6, else ``None``."""
    rows = [struct.unpack(endian + "4f", header[o:o + 16]) for o in (280, 296, 312)]
    sform = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(sform)):
        return None
    norms = np.linalg.norm(sform[:, :3], axis=0)
    if np.any(norms == 0):
        return None
    direction = _LPS @ (sform[:, :3] / norms)
    if not is_orthonormal(direction, atol=1e-6):
        return None
    try:
        return Geometry(shape=shape, spacing=tuple(float(n) for n in norms),
                        origin=tuple(float(v) + 0.0 for v in _LPS @ sform[:, 3]),
                        direction=tuple(float(v) + 0.0 for v in direction.ravel()))
    except ValueError:
        return None


def _grid(header: bytes, endian: str, shape, rel: str, drift: bool
          ) -> tuple[Geometry | None, str | None]:
    """``(grid, note)``: the header's grid when it is plain (see the module docstring), else
    ``None``; with ``drift``, also an sform with float drift and no qform, on its
    orthonormalised axes, with the note saying so."""
    sform_code, = struct.unpack(endian + "h", header[254:256])
    qform_code, = struct.unpack(endian + "h", header[252:254])
    qform = _qform_geometry(header, endian, shape) if qform_code > 0 else None
    if qform_code > 0 and qform is None:
        return None, None
    if sform_code <= 0:
        return qform, None
    sform = _sform_geometry(header, endian, shape)
    if sform is None and drift and qform_code <= 0:
        try:
            drifted = header_sform(header, endian, rel)
        except CaseError:
            return None, None  # sheared beyond drift: the ITK road names it
        return ((None, None) if drifted is None
                else (drifted.geometry, drifted.note(rel, "radvqa's plain NIfTI reader")))
    if sform is None or (qform is not None and geometry_mismatches(qform, sform)):
        return None, None
    return sform, None


def _header(header: bytes):
    """``(endian, shape, dtype, vox_offset)`` of a plain header, else ``None``."""
    endian = next((e for e in "<>" if struct.unpack(e + "i", header[:4])[0] == 348), None)
    if endian is None or header[344:348] != b"n+1\0":
        return None
    dims = struct.unpack(endian + "8h", header[40:56])
    if dims[0] != 3 or min(dims[1:4]) < 1:
        return None
    datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
    kind = _INTEGER_TYPES.get(datatype)
    if kind is None or bitpix != 8 * int(kind[1]):
        return None
    vox_offset, slope, inter = struct.unpack(endian + "3f", header[108:120])
    if not (math.isfinite(vox_offset) and vox_offset >= _HEADER and vox_offset == int(vox_offset)):
        return None
    if not (slope in (0, 1) and inter == 0):  # NaN fails both
        return None
    if header[123] & 7 not in (0, 2):  # units other than millimetre
        return None
    return endian, tuple(int(n) for n in dims[1:4]), np.dtype(endian + kind), int(vox_offset)


class _Declined(Exception):
    """A file that is not plain after all (found while inflating)."""


_LOCAL = threading.local()


def _mask_buffer(size: int) -> np.ndarray:
    """This thread's mask buffer (``uint8``, at least ``size`` bytes, contents undefined):
    one allocation reused by every ``skip_zero`` read, grown when a file needs more (at
    0.8 mm 157 MB, at 1.5 mm 22 MB; only the pages ever written are resident).  Its pages,
    once mapped, stay mapped: a fresh buffer per mask had its written pages mapped and
    zeroed anew (module docstring)."""
    buffer = getattr(_LOCAL, "buffer", None)
    if buffer is None or buffer.size < size:
        _LOCAL.buffer = None  # the old one freed before the new one is mapped
        buffer = _LOCAL.buffer = np.empty(size, dtype=np.uint8)
    return buffer


def _inflated(inflate, raw: bytes):
    """The inflated pieces of ``raw``, :data:`PIECE` compressed bytes at a time."""
    view = memoryview(raw)
    for start in range(0, len(raw), PIECE):
        yield inflate.decompress(view[start:start + PIECE])
        if inflate.eof:
            if inflate.unused_data or start + PIECE < len(raw):
                raise _Declined("bytes after the gzip stream (another member?)")
            break
    yield inflate.flush()


def read_plain(path: str, rel: str, *, max_voxels: int | None = None,
               skip_zero: bool = False, drift: bool = False, peaks: bool = False
               ) -> Plain | None:
    """Read a plain gzipped NIfTI-1 file (module docstring), or ``None`` for any other
    file — one this function declines is read the ITK way, where its faults are named.

    ``skip_zero``: the voxels are kept only from the first inflated piece holding a
    non-zero byte to the last, in the thread's mask buffer, and ``array`` is the slices
    ``k_span`` that hold them (:class:`Plain`); an all-zero file gives ``array=None``.  A
    file of more than ``max_voxels`` voxels is declined before its data is inflated.
    ``drift`` (masks): an sform with float drift and no qform — a file ITK refuses, read by
    nibabel on the orthonormalised grid of
    :func:`~pipeline.inputs.readers.nifti_header.check_nifti_sform` — is read here on that
    same grid (a sheared one is still declined).  ``peaks`` (with ``skip_zero``, ``uint8``
    voxels): :attr:`Plain.peaks` too, each :data:`FOLD` bytes of new whole slices folded
    into it as they are written (a mask's extent and largest value, for
    :func:`~pipeline.inputs.readers.itk.read_mask`, without reading the slices back).
    """
    if not path.lower().endswith(".nii.gz"):
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    inflate = _inflate_lib.decompressobj(31)  # gzip wrapper; checks CRC-32 and ISIZE at the end
    head = b""
    plain = out = None
    filled = 0  # voxel bytes inflated so far
    span = None  # voxel bytes [first, last) of the pieces holding a non-zero byte
    top = folded = None  # with peaks: the [j, i] peaks, and the voxel bytes folded into them
    try:
        for piece in _inflated(inflate, raw):
            if plain is None:
                head += piece
                if len(head) < _HEADER:
                    continue
                plain = _header(head[:348])
                if plain is None:
                    return None
                endian, shape, dtype, offset = plain
                voxels = shape[0] * shape[1] * shape[2]
                if max_voxels and voxels > max_voxels:
                    return None
                geometry, note = _grid(head[:348], endian, shape, rel, drift)
                if geometry is None:
                    return None
                size = voxels * dtype.itemsize
                skip = offset  # header and extension bytes before the voxels
                piece, head = head, b""
            if skip:
                cut = min(skip, len(piece))
                piece, skip = piece[cut:], skip - cut
            if not piece or filled >= size:
                filled += len(piece)
                continue
            values = np.frombuffer(piece, np.uint8)[:size - filled]
            if skip_zero and not values.max():  # (max: SIMD, 5x faster than any) nothing to write
                filled += len(values)
                continue
            if out is None:  # (np.zeros: calloc, pages mapped only when written)
                out = _mask_buffer(size) if skip_zero else np.zeros(size, dtype=np.uint8)
                plane = shape[0] * shape[1] * dtype.itemsize
                if skip_zero:  # the first slice's bytes before this piece: an earlier mask's
                    out[filled // plane * plane:filled] = 0
                    if peaks and dtype == np.uint8:
                        top, folded = np.zeros(plane, np.uint8), filled // plane * plane
            elif skip_zero and span[1] < filled:  # zero pieces skipped since the last write
                out[span[1]:filled] = 0
            out[filled:filled + len(values)] = values
            span = (filled if span is None else span[0], filled + len(values))
            filled += len(values)
            if top is not None and filled - folded >= FOLD:
                folded = _fold(top, out, folded, filled // plane * plane, plane)
    except (zlib.error, _inflate_lib.error, _Declined):
        return None
    if plain is None or not inflate.eof or filled < size:
        return None  # cut short
    sha = hashlib.sha256(raw).hexdigest()
    if out is None:
        if not skip_zero:  # an all-zero file read whole: zeros without inflating again
            out = np.zeros(size, dtype=np.uint8)
        else:
            return Plain(None, geometry, sha, note=note)
    if not skip_zero:
        return Plain(out.view(dtype).reshape(shape[::-1]).transpose(2, 1, 0), geometry, sha,
                     note=note)
    # the slices holding the pieces written, their bytes outside those pieces zeroed (the
    # buffer holds an earlier mask's voxels there)
    k0, k1 = span[0] // plane, -(-span[1] // plane)
    out[span[1]:k1 * plane] = 0
    if top is not None:
        _fold(top, out, folded, k1 * plane, plane)
        top = top.reshape(shape[1], shape[0]).T
    slab = out[k0 * plane:k1 * plane].view(dtype).reshape((k1 - k0, shape[1], shape[0]))
    return Plain(slab.transpose(2, 1, 0), geometry, sha, (k0, k1), note, top)


def _fold(top: np.ndarray, out: np.ndarray, start: int, end: int, plane: int) -> int:
    """Fold the whole slices ``out[start:end]`` (``plane`` bytes each) into ``top``, their
    elementwise maximum so far; returns ``end``."""
    if end > start:
        np.maximum(top, out[start:end].reshape(-1, plane).max(axis=0), out=top)
    return end
