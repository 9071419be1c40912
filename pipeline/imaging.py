"""PNG encoding (deterministic, dependency-free) for stored slices.

``zlib`` at a fixed level on fixed bytes gives the same file on every
machine, which Pillow's encoder options do not promise across versions.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(pixels: np.ndarray, level: int = 6) -> bytes:
    """Encode a ``uint8`` image, ``[rows, cols]`` (grey) or ``[rows, cols, 3]`` (RGB)."""
    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8:
        raise ValueError(f"encode_png: dtype must be uint8, got {a.dtype}")
    if a.ndim == 2:
        color_type, channels = 0, 1
    elif a.ndim == 3 and a.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"encode_png: shape must be (H, W) or (H, W, 3), got {a.shape}")
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"encode_png: empty image {a.shape}")
    raw = np.zeros((h, 1 + w * channels), dtype=np.uint8)  # filter byte 0 per row
    raw[:, 1:] = a.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        _SIGNATURE + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG header, without decoding."""
    if data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file (bad signature or missing IHDR)")
    return struct.unpack(">II", data[16:24])


#: PNG chunks kept when images pass through: critical chunks and ancillary chunks that
#: change how pixels display but carry no free text.  Text (tEXt, zTXt, iTXt), time
#: (tIME), EXIF (eXIf), ICC profiles (named by free text), and private chunks are dropped.
PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB",
                      b"sBIT", b"bKGD", b"pHYs", b"hIST"})


def strip_png_metadata(data: bytes) -> bytes:
    """``data`` without the chunks outside :data:`PNG_KEEP` and without anything after
    ``IEND`` (tools append text there too); pixel data (IDAT) untouched.

    Returns the very same bytes when there is nothing to drop.  Expects a PNG already
    validated (signature, chunk lengths and CRCs — see ``radimagenet.check_png``).
    """
    if data[:8] != _SIGNATURE:
        raise ValueError("not a PNG file (bad signature)")
    pos, parts, dropped = 8, [_SIGNATURE], False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if kind in PNG_KEEP:
            parts.append(data[pos:end])
        else:
            dropped = True
        pos = end
        if kind == b"IEND":
            break
    if pos < len(data):
        dropped = True  # bytes after IEND, or a cut-off chunk header
    return b"".join(parts) if dropped else data
