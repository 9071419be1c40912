"""PNG encoding (deterministic, dependency-free) for stored slices.

``zlib`` at a fixed level on fixed bytes gives the same file on every
machine, which Pillow's encoder options do not promise across versions.
"""

from __future__ import annotations

import hashlib
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
    validated (signature, chunk lengths and CRCs — see ``pipeline.inputs.layouts.tree.check_png``).
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


#: Box outline colours (RGB), picked per label by a stable hash.
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
               (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
               (170, 255, 195))


def box_colour(label: str) -> tuple[int, int, int]:
    return BOX_COLOURS[hashlib.sha256(label.encode("utf-8")).digest()[0] % len(BOX_COLOURS)]


def draw_boxes(gray: np.ndarray, boxes) -> np.ndarray:
    """An RGB copy of a ``uint8`` slice with each box's outline drawn (one pixel, the
    box's own edge pixels: columns ``x_min`` and ``x_max - 1``, rows ``y_min`` and
    ``y_max - 1``), in a colour per label; ``boxes`` carry ``label, x_min, y_min, x_max,
    y_max`` in pixels, maxima exclusive.  Boxes are drawn in label order."""
    g = np.asarray(gray)
    if g.dtype != np.uint8 or g.ndim != 2:
        raise ValueError(f"draw_boxes: expected a 2D uint8 image, got {g.dtype} {g.shape}")
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    for b in sorted(boxes, key=lambda b: b["label"]):
        x0, y0, x1, y1 = int(b["x_min"]), int(b["y_min"]), int(b["x_max"]), int(b["y_max"])
        if x1 <= x0 or y1 <= y0:
            continue
        colour = box_colour(b["label"])
        rgb[y0, x0:x1] = colour
        rgb[y1 - 1, x0:x1] = colour
        rgb[y0:y1, x0] = colour
        rgb[y0:y1, x1 - 1] = colour
    return rgb


#: Named outline colours of visual prompts (RGB): the target of a question about a drawn
#: box is always in the first (``red``); other structures' boxes of the hard variant take
#: the others.  Pure hues, so a reader can name them.
PROMPT_COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 100, 255),
                  "yellow": (255, 220, 0)}


def draw_prompt(gray: np.ndarray, target, others=(), width: int = 2) -> np.ndarray:
    """An RGB copy of a ``uint8`` slice with the ``target`` box outlined in red and the
    ``others`` (at most three) in green, blue and yellow, in that order; outlines are
    ``width`` pixels thick, inside each box's edge (boxes in pixels, maxima exclusive).
    The target is drawn last, so it is never hidden by another box's outline."""
    g = np.asarray(gray)
    if g.dtype != np.uint8 or g.ndim != 2:
        raise ValueError(f"draw_prompt: expected a 2D uint8 image, got {g.dtype} {g.shape}")
    if len(others) > len(PROMPT_COLOURS) - 1:
        raise ValueError(f"draw_prompt: at most {len(PROMPT_COLOURS) - 1} other boxes, got {len(others)}")
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    colours = list(PROMPT_COLOURS.values())
    for b, colour in [*zip(others, colours[1:]), (target, colours[0])]:
        x0, y0, x1, y1 = int(b["x_min"]), int(b["y_min"]), int(b["x_max"]), int(b["y_max"])
        t = max(1, min(width, (x1 - x0) // 2, (y1 - y0) // 2))
        rgb[y0:y0 + t, x0:x1] = colour
        rgb[y1 - t:y1, x0:x1] = colour
        rgb[y0:y1, x0:x0 + t] = colour
        rgb[y0:y1, x1 - t:x1] = colour
    return rgb
