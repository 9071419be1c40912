"""Gallery views drawn with Pillow: a stored image scaled for display, its boxes outlined.

Conventions: 2D boxes are stored-image pixels, ``x_min, y_min`` inclusive, ``x_max,
y_max`` exclusive; an image shown at integer scale ``s`` has each box outlined on the
outermost pixels of ``[x_min*s, x_max*s) × [y_min*s, y_max*s)``.  3D volumes are
``[k, j, i]`` arrays whose axial slice ``a[k]`` is already in display orientation (rows
j: anterior at the top; columns i: the patient's right on the left).  Views are PNGs
encoded by Pillow without metadata, kept in the report's cache by a key of the image,
boxes, colours, :data:`VIEW_VERSION` and the library versions.

Pillow is imported when a view is drawn: a report whose views are all in its cache (a
regenerated corpus shows the same images) never decodes an image — the PNG header gives a
stored image's size (:class:`LazyImage`) — nor imports Pillow, 15 ms of CPU of a 0.5 s
text-only regenerate of the sample with its decoders and fonts (measured).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from pipeline.core.imaging import png_size
from pipeline.report.charts import library_versions

GALLERY_PX = 420  # target of the longer side of a gallery image
ANSWER_BOX_COLOUR = (255, 215, 0)


def label_colours(labels: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """A saturated colour per label (golden-ratio hues over the sorted labels)."""
    out = {}
    for i, label in enumerate(sorted(set(labels))):
        hue = (0.02 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0 if i % 2 == 0 else 0.85)
        out[label] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def display_scale(width: int, height: int, target: int = GALLERY_PX) -> float:
    """Integer upscale for small images (boxes stay on whole pixels), downscale for large ones."""
    longest = max(width, height, 1)
    if longest <= target:
        return float(max(1, target // longest))
    return target / longest


def scaled_box(box, scale: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Outline rectangle (inclusive ends, display pixels) of a stored box (ends exclusive)."""
    x0, y0, x1, y1 = box
    X0, Y0 = math.floor(x0 * scale), math.floor(y0 * scale)
    X1 = min(width, max(X0 + 1, math.ceil(x1 * scale)))
    Y1 = min(height, max(Y0 + 1, math.ceil(y1 * scale)))
    if X0 >= width or Y0 >= height or X1 <= 0 or Y1 <= 0:
        return None
    return max(X0, 0), max(Y0, 0), X1 - 1, Y1 - 1


class Undecodable(ValueError):
    """Stored image bytes that are absent or that Pillow cannot read."""


class LazyImage:
    """An image decoded on first use (:meth:`image`); its ``size`` known without decoding."""

    def __init__(self, size: tuple[int, int], decode: Callable):
        self.size = size
        self._decode = decode
        self._image = None

    def image(self):
        if self._image is None:
            self._image = self._decode()
        return self._image

    @classmethod
    def stored(cls, data: bytes | None) -> LazyImage:
        """A stored image's bytes: its size from the PNG header, else from Pillow's header
        read.  :class:`Undecodable` for absent bytes, or (here or when decoded) bytes
        Pillow cannot read."""
        if not data:
            raise Undecodable("no image bytes")
        try:
            size = png_size(data)
        except ValueError:  # not a PNG: Pillow reads the header (of what it can decode)
            size = _read(data, lambda im: im.size)
        return cls(size, lambda: _read(data, _loaded))

    @classmethod
    def pixels(cls, plane: np.ndarray) -> LazyImage:
        """A uint8 grey plane."""
        return cls((plane.shape[1], plane.shape[0]), lambda: _from_array(plane, "L"))


def _read(data: bytes, what: Callable):
    """``what(image)`` of Pillow's image of ``data``; :class:`Undecodable` when it fails."""
    # Pillow on a cache miss only (see the module docstring)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return what(im)
    except Exception as err:  # Pillow raises many kinds for bad bytes
        raise Undecodable(f"{type(err).__name__}: {err}") from err


def _loaded(im):
    im.load()
    return im.copy()


def _from_array(arr: np.ndarray, mode: str):
    # Pillow on a cache miss only (see the module docstring)
    from PIL import Image

    return Image.fromarray(arr, mode)


def to_rgb(img):
    """Any Pillow image as 8-bit RGB (16-bit and float images min-max scaled)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = _from_array(np.rint(arr).astype(np.uint8), "L")
    return img.convert("RGB")


def _font(size: int = 11):
    # Pillow on a cache miss only (see the module docstring)
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def draw_boxes(img, boxes: list[tuple[str, tuple[int, int, int, int]]],
               colours: Mapping[str, tuple[int, int, int]], *, labels: bool = True,
               target: int = GALLERY_PX):
    """Scale ``img`` for display and outline every ``(label, (x_min, y_min, x_max, y_max))``.

    Boxes are in stored-image pixels, maxima exclusive.  Label texts are drawn
    first and the outlines last (largest box first), so no text hides a box
    border.  Returns ``(RGB image, scale)``.
    """
    # Pillow on a cache miss only (see the module docstring)
    from PIL import Image, ImageDraw

    img = to_rgb(img)
    w, h = img.size
    scale = display_scale(w, h, target)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    out = img.resize(size, resample)
    draw = ImageDraw.Draw(out)
    width = 2 if scale >= 3 else 1
    rects = []
    for label, box in boxes:
        rect = scaled_box(box, scale, *size)
        if rect is not None:
            rects.append((label, rect))
    if labels:
        font = _font()
        for label, (X0, Y0, _, _) in rects:
            tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), label, font=font)
            tw, th = tx1 - tx0, ty1 - ty0
            ty = Y0 - th - 3 if Y0 - th - 3 >= 0 else min(Y0 + width + 1, max(0, size[1] - th - 2))
            tx = min(X0, max(0, size[0] - tw - 2))
            draw.rectangle([tx, ty, tx + tw + 1, ty + th + 2], fill=(0, 0, 0))
            draw.text((tx + 1 - tx0, ty + 1 - ty0), label, fill=colours[label], font=font)
    for label, rect in sorted(rects, key=lambda lr: (-(lr[1][2] - lr[1][0]) * (lr[1][3] - lr[1][1]),
                                                      lr[0])):
        draw.rectangle(rect, outline=colours[label], width=width)
    return out, scale


def png_bytes(img) -> bytes:
    """PNG at zlib's default level: ``optimize`` took 5x the time for 2-3 % fewer bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


#: Part of a gallery view's cache key: bump with any change to :func:`draw_boxes` that can
#: change its pixels (the library versions, the image, boxes and colours are hashed anyway).
VIEW_VERSION = 1


def boxed_view(src: LazyImage, data: bytes, boxes, colours: Mapping, cache=None) -> tuple[bytes, float]:
    """PNG of ``src`` (decoded from ``data``) scaled for the gallery with ``boxes`` drawn,
    and the scale; from ``cache`` (the report's :class:`~pipeline.report.chart_cache.ChartCache`) when an identical view
    was drawn before — a regenerated corpus shows the same images — without decoding
    ``src``.  :class:`Undecodable` for a stored image that cannot be decoded."""
    scale = display_scale(*src.size)
    key = None
    if cache is not None:
        spec = {"view": VIEW_VERSION, "libraries": library_versions(), "px": GALLERY_PX,
                "image": hashlib.sha256(data).hexdigest(),
                "boxes": [[label, [int(v) for v in box]] for label, box in boxes],
                "colours": {label: list(colours[label]) for label, _ in boxes}}
        key = "view-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()
        png = cache.get(key)
        if png is not None:
            return png, scale
    shown, scale = draw_boxes(src.image(), boxes, colours)
    png = png_bytes(shown)
    if cache is not None:
        cache.put(key, png)
    return png, scale


def volume_slice(npy: bytes) -> tuple[np.ndarray, int]:
    """The middle axial slice of a stored volume (``[k, j, i]`` in [0, 1]) as uint8, and its k."""
    arr = np.load(io.BytesIO(npy), allow_pickle=False)
    k = arr.shape[0] // 2
    plane = np.nan_to_num(arr[k].astype(np.float32), nan=0.0)
    return np.clip(np.rint(plane * 255.0), 0, 255).astype(np.uint8), k
