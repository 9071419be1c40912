"""PNG encoding (deterministic, dependency-free) for stored slices.

``zlib`` at a fixed level and strategy on fixed bytes gives the same file on every
machine, which Pillow's encoder options do not promise across versions.

Two strategies (:data:`PNG_STRATEGIES`, the recipe's ``slices.png_strategy``):

* ``default``: rows unfiltered, zlib at ``level`` (every PNG up to ``EXTRACT_VERSION`` 3);
* ``rle``: every row filtered with Up (the byte above subtracted) and deflated with zlib's
  run-length strategy (``Z_RLE``, the same bytes at every level but 0, which stores).  On
  windowed CT and MR slices it is 4-6x faster than level 6 and smaller (measured on the
  pyradiomics lung CTs and brain MR: 7-11 % fewer bytes).  Since ``EXTRACT_VERSION`` 5 a
  slice's plain PNG and its visual prompts (:func:`encode_slice_pngs`) share deflated
  bytes: the rows are deflated in bands, each ended by a full flush (a block boundary after
  which nothing refers back, zlib's documented restart point; the last band by the end of
  the stream), cut where each prompt's outlines begin and end; a prompt is stored with
  indexed colour on a grey-ramp palette (index = grey level; the outline colours just
  above the slice's highest level, or at its lowest unused levels when there is no room
  above), so that its Up-filtered rows are the plain image's outside its outlines' rows
  (and the row below them), and each band is deflated once per distinct set of outlines
  crossing it.  A slice without prompts is one band.  Measured on
  the 216 slices of a generated 1.5 mm TotalSegmentator case (plain, boxed, boxed-easy):
  encoding CPU 0.23 -> 0.14 s, bytes +1.0 %; fixed bands of 16-128 rows cost 0.15-0.20 s,
  a cut at every box's edges 0.15 s (more blocks, each with its own Huffman tables).  When
  the slice leaves too few unused levels, the prompt is RGB (Up, zlib level 3, where
  ``Z_RLE`` would double the size), as before.

``Z_RLE`` is run by zlib-ng (python-zlib-ng) when it is installed: the very bytes of zlib's
``Z_RLE`` at every level but 0 (checked on the 648 PNGs of a generated 1.5 mm
TotalSegmentator case and by ``tests/test_nifti_plain.py``) at half its CPU; level 0
stores, by zlib (one stream, no bands).  zlib-ng's adler32 and crc32 are used too (the
same values, 10-20x faster than zlib's).
ISA-L's deflate (python-isal) would take a third of zlib's time, but gave different bytes
for 2 of 1,296 PNGs between two builds of the same code and inputs, so it is not used.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

try:  # zlib-ng's Z_RLE: zlib's bytes at half the CPU (module docstring)
    from zlib_ng import zlib_ng as _rle_lib
except ImportError:  # pragma: no cover - zlib-ng is a dependency; zlib writes the same bytes
    _rle_lib = zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join((struct.pack(">I", len(data)), kind, data,  # (one copy of data, not three)
                     struct.pack(">I", _rle_lib.crc32(data, _rle_lib.crc32(kind)) & 0xFFFFFFFF)))


#: PNG encoding strategies (see the module docstring).
PNG_STRATEGIES = ("default", "rle")
#: zlib level of an RGB image under ``rle`` (level 3: within 3 % of level 6's size on RGB
#: slices at less than half its time; ``Z_RLE`` finds no run in three equal bytes a pixel).
RLE_RGB_LEVEL = 3
#: zlib's memory level for ``Z_RLE`` (9: up to 32 K symbols a block, 16 K at 8; on the
#: PNGs of a 1.5 mm TotalSegmentator case 0.1 % smaller, CPU the same or less).
MEM_LEVEL = 9
#: zlib's header for a ``Z_RLE`` stream (deflate, 32 KiB window, FLEVEL 0).
_ZLIB_HEADER = b"\x78\x01"
#: The flush ending a band: a full flush, or the stream's end after an image's last band.
_FLUSH = (zlib.Z_FULL_FLUSH, zlib.Z_FINISH)
_IEND = _chunk(b"IEND", b"")
#: The grey-ramp palette of a prompt (outline colours written over it), as PLTE bytes.
_RAMP_BYTES = bytes(np.repeat(np.arange(256, dtype=np.uint8), 3))


def _up_rows(a: np.ndarray) -> np.ndarray:
    """The PNG scanlines of ``a`` (2D ``uint8``) filtered with Up (filter byte 2; the first
    row unfiltered), a C-contiguous ``uint8`` array: one subtraction in :func:`_padded`."""
    pad = _padded(a)
    return np.subtract(pad[1:], pad[:-1])  # modulo 256, as PNG's


@functools.lru_cache(maxsize=64)
def _filter_column(h: int) -> np.ndarray:
    """``2 * row`` modulo 256 for rows ``0 .. h``: differences of 2, Up's filter byte."""
    return (np.arange(h + 1, dtype=np.int64) * 2).astype(np.uint8)


def _padded(a: np.ndarray) -> np.ndarray:
    """``a`` in a ``[h + 1, w + 1]`` buffer below a row of zeros (what Up subtracts from the
    first row) beside :func:`_filter_column`: each row minus the one above is a scanline."""
    pad = np.empty((a.shape[0] + 1, a.shape[1] + 1), dtype=np.uint8)
    pad[:, 0], pad[0, 1:], pad[1:, 1:] = _filter_column(a.shape[0]), 0, a
    return pad


def _deflate(bands, level: int) -> list[bytes]:
    """Raw deflate of each ``(scanlines, last)`` of ``bands`` (consecutive or not), ``Z_RLE`` at
    ``level`` (> 0), each ended by a full flush (byte-aligned; nothing after it refers back),
    an image's last band by the stream's end: its bytes may stand in another image's stream."""
    c = _rle_lib.compressobj(level, zlib.DEFLATED, -15, MEM_LEVEL, zlib.Z_RLE)
    return [c.compress(rows) + c.flush(_FLUSH[last]) for rows, last in bands]


def _zlib_stream(segments: list[bytes], adler: int) -> list[bytes]:
    """The pieces of a zlib stream of deflate ``segments`` of scanlines of Adler-32 ``adler``."""
    return [_ZLIB_HEADER, *segments, struct.pack(">I", adler & 0xFFFFFFFF)]


def _adler32_extend(adler: int, before: int, after: int, size: int) -> int:
    """The Adler-32 of bytes whose Adler-32 is ``adler`` followed by ``size`` bytes taking a
    string's from ``before`` to ``after`` (zlib's adler32_combine when ``before`` is 1)."""
    a1, a0, a2 = adler & 0xFFFF, before & 0xFFFF, after & 0xFFFF
    b = (adler >> 16) - (before >> 16) + (after >> 16) + size * (a1 - a0)
    return b % 65521 << 16 | (a1 - a0 + a2) % 65521


def _stored(raw: np.ndarray) -> bytes:
    """``rle`` at level 0: the scanlines stored (by zlib: zlib-ng splits stored blocks apart)."""
    c = zlib.compressobj(0, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return c.compress(raw) + c.flush()


@functools.lru_cache(maxsize=64)
def _head(w: int, h: int, color_type: int) -> bytes:
    """The signature and IHDR chunk of a ``w`` x ``h`` 8-bit PNG (made once a plane)."""
    return _SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))


_IDAT_CRC = _rle_lib.crc32(b"IDAT")


@functools.lru_cache(maxsize=1024)
def _palette(size: int, levels: tuple[int, ...]) -> bytes:
    """The PLTE chunk of a prompt: the grey ramp's first ``size`` levels, ``levels[c]``
    holding :data:`PROMPT_COLOURS`' colour ``c`` (made once a kind)."""
    palette = bytearray(_RAMP_BYTES[:3 * size])
    for c, v in enumerate(levels):
        palette[3 * v:3 * v + 3] = _COLOUR_BYTES[c]
    return _chunk(b"PLTE", bytes(palette))


def _png_file(w: int, h: int, color_type: int, compressed: bytes | list[bytes],
              plte: bytes = b"") -> bytes:
    """A PNG file: ``plte`` (:func:`_palette`, or none), one IDAT of ``compressed`` (pieces)."""
    pieces = [compressed] if isinstance(compressed, bytes) else compressed
    crc = _IDAT_CRC
    for piece in pieces:
        crc = _rle_lib.crc32(piece, crc)
    return b"".join((
        _head(w, h, color_type), plte,
        struct.pack(">I4s", sum(map(len, pieces)), b"IDAT"), *pieces,
        struct.pack(">I", crc & 0xFFFFFFFF), _IEND))


def _png(pixels: np.ndarray, color_type: int, level: int, strategy: str) -> bytes:
    """A PNG of ``pixels`` (``[rows, cols]`` or ``[rows, cols, 3]``, uint8) as ``color_type``."""
    if strategy not in PNG_STRATEGIES:
        raise ValueError(f"PNG strategy must be one of {PNG_STRATEGIES}, got {strategy!r}")
    h, w = pixels.shape[:2]
    rle, rows = strategy == "rle", pixels.reshape(h, -1)
    # scanlines, filter byte 2 (Up) or 0 (None), as a C-contiguous array: deflated as it is
    data = _up_rows(rows) if rle else np.concatenate((np.zeros((h, 1), np.uint8), rows), 1)
    if not rle:
        compressed = zlib.compress(data, level)
    elif color_type == 2:
        compressed = zlib.compress(data, min(level, RLE_RGB_LEVEL))
    elif not level:
        compressed = _stored(data)
    else:
        compressed = _zlib_stream(_deflate([(data, True)], level), _rle_lib.adler32(data))
    return _png_file(w, h, color_type, compressed)


def encode_png(pixels: np.ndarray, level: int = 6, strategy: str = "default") -> bytes:
    """Encode a ``uint8`` image, ``[rows, cols]`` (grey) or ``[rows, cols, 3]`` (RGB), with
    zlib ``level`` and ``strategy`` (:data:`PNG_STRATEGIES`)."""
    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8:
        raise ValueError(f"encode_png: dtype must be uint8, got {a.dtype}")
    if a.ndim == 2:
        color_type = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color_type = 2
    else:
        raise ValueError(f"encode_png: shape must be (H, W) or (H, W, 3), got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"encode_png: empty image {a.shape}")
    return _png(a, color_type, level, strategy)


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


#: Named outline colours of visual prompts (RGB): the target of a question about a drawn
#: box is always in the first (``red``); other structures' boxes of the hard variant take
#: the others.  Pure hues, so a reader can name them.
PROMPT_COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 100, 255),
                  "yellow": (255, 220, 0)}
_COLOUR_BYTES = [bytes(c) for c in PROMPT_COLOURS.values()]


def _prompt_outlines(target, others) -> list[tuple[tuple[int, int, int, int], int]]:
    """``((x_min, y_min, x_max, y_max), index into PROMPT_COLOURS)`` of each box, others first."""
    if len(others) > len(PROMPT_COLOURS) - 1:
        raise ValueError(f"draw_prompt: at most {len(PROMPT_COLOURS) - 1} other boxes, got {len(others)}")
    return [((int(b["x_min"]), int(b["y_min"]), int(b["x_max"]), int(b["y_max"])), c)
            for b, c in [*zip(others, range(1, len(PROMPT_COLOURS))), (target, 0)]]


def _outline_box(canvas: np.ndarray, box: tuple[int, int, int, int], value, width: int) -> None:
    """Draw ``box``'s (``(x_min, y_min, x_max, y_max)``) outline, ``width`` px inside its edge."""
    x0, y0, x1, y1 = box
    t = max(1, min(width, (x1 - x0) // 2, (y1 - y0) // 2))
    canvas[y0:y0 + t, x0:x1] = value
    canvas[y1 - t:y1, x0:x1] = value
    canvas[y0:y1, x0:x0 + t] = value
    canvas[y0:y1, x1 - t:x1] = value


def _grey(gray: np.ndarray, caller: str) -> np.ndarray:
    g = np.asarray(gray)
    if g.dtype != np.uint8 or g.ndim != 2:
        raise ValueError(f"{caller}: expected a 2D uint8 image, got {g.dtype} {g.shape}")
    return g


def draw_prompt(gray: np.ndarray, target, others=(), width: int = 2) -> np.ndarray:
    """An RGB copy of a ``uint8`` slice with the ``target`` box outlined in red and the
    ``others`` (at most three) in green, blue and yellow, in that order; outlines are
    ``width`` pixels thick, inside each box's edge (boxes in pixels, maxima exclusive).
    The target is drawn last, so it is never hidden by another box's outline."""
    g = _grey(gray, "draw_prompt")
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    colours = list(PROMPT_COLOURS.values())
    for box, c in _prompt_outlines(target, others):
        _outline_box(rgb, box, colours[c], width)
    return rgb


def encode_prompt_png(gray: np.ndarray, target, others=(), width: int = 2, *,
                      level: int = 6, strategy: str = "default") -> bytes:
    """The PNG of :func:`draw_prompt` ``(gray, target, others, width)`` — the same pixels.
    ``default``: an RGB PNG.  ``rle``: indexed colour on a grey-ramp palette (index = grey
    level; the outline colours at the lowest levels the slice does not use) when there are
    enough unused levels, compressed as a grey image is; an RGB PNG otherwise."""
    return encode_prompt_pngs(gray, [(target, others)], width, level=level, strategy=strategy)[0]


def encode_prompt_pngs(gray: np.ndarray, prompts, width: int = 2, *, level: int = 6,
                       strategy: str = "default") -> list[bytes]:
    """:func:`encode_prompt_png` of each ``(target, others)`` of ``prompts`` over one slice."""
    return encode_slice_pngs(gray, prompts, width, level=level, strategy=strategy)[1]


_BYTES = [bytes((v,)) for v in range(256)]


def _lowest_unused(g: np.ndarray, k: int) -> list[int]:
    """The ``k`` lowest grey levels (or fewer, if fewer are left) that ``g`` does not use:
    the first ``k`` of ``flatnonzero(bincount(g) == 0)``, by a byte search a level (a used
    level is found at once, in about a third of bincount's time on a 1.5 mm slice)."""
    data = g.tobytes()
    out = []
    for v, b in enumerate(_BYTES):
        if b not in data:
            out.append(v)
            if len(out) == k:
                break
    return out


def encode_slice_pngs(gray: np.ndarray, prompts, width: int = 2, *, level: int = 6,
                      strategy: str = "default") -> tuple[bytes, list[bytes]]:
    """``(encode_png(gray, level, strategy), [encode_prompt_png of each (target, others) of
    prompts])``; under ``rle`` each band of Up-filtered rows is deflated once per distinct
    set of outlines crossing it, and its bytes shared by every PNG of the slice that has
    those rows (module docstring)."""
    g = _grey(gray, "encode_prompt_png")
    h, w = g.shape
    if h < 1 or w < 1:
        raise ValueError(f"encode_prompt_png: empty image {g.shape}")
    drawn = [_prompt_outlines(target, others) for target, others in prompts]
    if strategy != "rle":
        return (encode_png(g, level, strategy),
                [encode_png(draw_prompt(g, t, o, width), level, strategy) for t, o in prompts])
    pad = _padded(g)  # (the prompts draw in it)
    raw = np.subtract(pad[1:], pad[:-1])
    # bands cut where each prompt's outlines begin and end (the first row and the row below
    # the last that it changes): fewer blocks than a cut at every box's edges, the same CPU
    spans = [(min(box[1] for box, _ in d), max(box[3] for box, _ in d) + 1) for d in drawn]
    edges = sorted({0, h, *(e for span in spans for e in span if 0 < e < h)})
    last = len(edges) - 2  # the last band
    if level:  # prefix[k]: the Adler-32 of the scanlines above band k (and of all, at the end)
        scanlines = [raw[edges[k]:edges[k + 1]] for k in range(last + 1)]
        segments = _deflate([(rows, k == last) for k, rows in enumerate(scanlines)], level)
        prefix = [1]
        for rows in scanlines:
            prefix.append(_rle_lib.adler32(rows, prefix[-1]))
        plain = _png_file(w, h, 0, _zlib_stream(segments, prefix[-1]))
    else:
        plain = _png_file(w, h, 0, _stored(raw))
    if not prompts:
        return plain, []
    top, free, fresh = int(g.max()), None, True  # (fresh: pad still holds g)
    done, out = {}, []  # a prompt band: (band, outlines crossing) -> (deflated, 1, Adler-32, bytes)
    for (target, others), boxes, (y_lo, y_hi) in zip(prompts, drawn, spans):
        k = len(boxes)  # its colours: 0 .. k - 1 (_prompt_outlines)
        if top + k <= 255:  # outline colours above the slice's highest level
            levels = tuple(range(top + 1, top + 1 + k))
        else:  # else at its lowest unused levels, if it leaves enough
            if free is None:  # (all below the slice's lowest level, when there are enough)
                low = int(g.min())
                free = (np.arange(low) if low >= len(PROMPT_COLOURS)
                        else _lowest_unused(g, len(PROMPT_COLOURS)))
            levels = tuple(int(v) for v in free[:k]) if k <= len(free) else None
        if levels is None or not all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
                                     for (x0, y0, x1, y1), _ in boxes):
            out.append(encode_png(draw_prompt(g, target, others, width), level, strategy))
            continue
        palette = _palette(max(top, *levels) + 1, levels)
        outlined = [(box, levels[c]) for box, c in boxes]
        if not level:
            rows, fresh = _outlined_rows(pad, None if fresh else g, outlined, width, 0, h), False
            out.append(_png_file(w, h, 3, _stored(rows), palette))
            continue
        # its bands: those its outlines span (the rest are the plain image's), each keyed by
        # the outlines that change its Up-filtered rows (a box's rows y0..y1)
        k0, k1 = edges.index(y_lo), edges.index(min(y_hi, h))
        keys = [(k, tuple([o for o in outlined if o[0][1] < edges[k + 1] and o[0][3] >= edges[k]]))
                for k in range(k0, k1)]
        new = [key for key in keys if key[1] and key not in done]
        if new:  # their scanlines filtered at once, from the rows they span (keys: in order)
            lo, hi = edges[new[0][0]], edges[new[-1][0] + 1]
            rows, fresh = _outlined_rows(pad, None if fresh else g, outlined, width, lo, hi), False
            scanlines = [rows[edges[k] - lo:edges[k + 1] - lo] for k, _ in new]
            segs = _deflate([(band, key[0] == last) for key, band in zip(new, scanlines)], level)
            for key, band, seg in zip(new, scanlines, segs):
                done[key] = (seg, 1, _rle_lib.adler32(band), band.nbytes)
        # its Adler-32: the plain scanlines' above band k0, then its bands', then the plain
        # scanlines' from band k1 on (from the plain prefixes: no byte summed again)
        adler, bands = prefix[k0], []
        for k, crossing in keys:  # (a band crossed by none of them: the plain image's)
            seg, before, after, size = done[k, crossing] if crossing else (
                segments[k], prefix[k], prefix[k + 1], (edges[k + 1] - edges[k]) * (w + 1))
            adler = _adler32_extend(adler, before, after, size)
            bands.append(seg)
        adler = _adler32_extend(adler, prefix[k1], prefix[-1], (h - edges[k1]) * (w + 1))
        out.append(_png_file(w, h, 3, _zlib_stream([*segments[:k0], *bands, *segments[k1:]], adler),
                             palette))
    return plain, out


def _outlined_rows(pad: np.ndarray, g, outlined, width: int, start: int, stop: int):
    """Scanlines ``start:stop`` (:func:`_up_rows`) of :func:`_padded` ``pad`` with each ``(box,
    value)`` of ``outlined`` drawn, the rows read restored from ``g`` first (unless None)."""
    if g is not None:
        pad[max(start, 1):stop + 1, 1:] = g[max(start - 1, 0):stop]
    canvas = pad[1:, 1:]
    for box, value in outlined:
        _outline_box(canvas, box, value, width)
    return np.subtract(pad[start + 1:stop + 1], pad[start:stop])
