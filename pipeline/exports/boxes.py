"""Box coordinate styles: a stored pixel box written the way each framework expects it.

Boxes are stored in pixels of the stored image (``x_min, y_min`` inclusive,
``x_max, y_max`` exclusive, i.e. the pixel-edge coordinates of the box) and
are written in the convention of :data:`BOX_STYLES`: in answers (rows with an
``answer_box``) and where a question mentions a box (the optional
``question_box`` column, else any ``[x0, y0, x1, y1]`` literal that fits in
the image).  Each style names the frame its coordinates live in
(:data:`FRAMES`): the stored image, the image padded to a centred square
(LLaVA-1.5), or the image as Qwen2.5-VL's processor resizes it (``smart_resize``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pipeline.exports.base import ExportError

#: A box as the templates render it: ``[x_min, y_min, x_max, y_max]``.
BOX_LITERAL = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


@dataclass(frozen=True)
class BoxStyle:
    """How one framework writes a box.

    Attributes
    ----------
    name : str
        The ``--boxes`` value.
    normalise : int or None
        ``None`` for pixel coordinates, else the scale of normalised ones
        (``round(x / width * scale)``, ``round(y / height * scale)``).
    question : str
        Format of a box mentioned in a question (``{0}``…``{3}`` = x1, y1, x2, y2).
    answer : str
        Format of a box given as the answer.
    units : tuple of (str, str)
        Replacements for the words ``pixels`` and ``pixel`` in the question of
        a grounding row, when the coordinates are no longer pixels.
    reference : str
        Where the convention comes from.
    """

    name: str
    normalise: int | None
    question: str
    answer: str
    units: tuple[str, str] | None = None
    reference: str = ""
    frame: str = "image"
    decimals: int | None = None
    min_pixels: int = 0
    max_pixels: int = 0


#: Frames a box style's coordinates live in.
#: ``image``: the stored image.  ``padded-square``: the stored image pasted,
#: centred, on a square of side ``max(width, height)`` (LLaVA's
#: ``llava/mm_utils.py: expand2square``, used with ``image_aspect_ratio: pad``).
#: ``smart-resize``: the image resized by :func:`smart_resize` (Qwen2.5-VL).
FRAMES = ("image", "padded-square", "smart-resize")

#: Qwen2.5-VL's image processor: sides are multiples of patch 14 x merge 2 = 28 pixels, and
#: the defaults of qwen-vl-utils 0.0.14 ``vision_process.py`` (``IMAGE_MIN_TOKEN_NUM`` 4,
#: ``IMAGE_MAX_TOKEN_NUM`` 16384 tokens of 28x28), which are also ``min_pixels`` /
#: ``max_pixels`` of Qwen2.5-VL-*-Instruct's ``preprocessor_config.json``.
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 4 * 28 * 28  # 3,136
QWEN_MAX_PIXELS = 16384 * 28 * 28  # 12,845,056
#: qwen-vl-utils refuses images whose long side is more than 200 times the short one.
QWEN_MAX_RATIO = 200


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of an image as Qwen2.5-VL's processor resizes it.

    The rules of ``smart_resize`` in qwen-vl-utils (``vision_process.py``) and in
    transformers' ``Qwen2VLImageProcessor``: each side rounded to the nearest
    multiple of ``factor`` (at least ``factor``); if the area then exceeds
    ``max_pixels``, both sides are scaled by ``sqrt(height * width / max_pixels)``
    and floored to multiples of ``factor``; if it falls below ``min_pixels``, scaled
    by ``sqrt(min_pixels / (height * width))`` and ceiled.  Aspect ratios above 200
    are refused.  (qwen-vl-utils imports torch at module top, so it is mirrored here,
    not imported.)

    Examples
    --------
    >>> smart_resize(54, 102)
    (56, 112)
    >>> smart_resize(512, 512)
    (504, 504)
    """
    if max_pixels < min_pixels:
        raise ExportError(f"boxes: max_pixels {max_pixels} is below min_pixels {min_pixels}")
    if max(height, width) / min(height, width) > QWEN_MAX_RATIO:
        raise ExportError(f"boxes: a {width}x{height} image has an aspect ratio above {QWEN_MAX_RATIO}, "
                          f"which Qwen2.5-VL's smart_resize refuses")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def padded_square(width: int, height: int) -> tuple[int, int, int]:
    """``(side, x_offset, y_offset)`` of the image pasted on LLaVA's square.

    LLaVA's ``expand2square`` pastes a wider image at ``(0, (width - height) // 2)`` and a
    taller one at ``((height - width) // 2, 0)`` on a square of side ``max(width, height)``.
    """
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


BOX_STYLES: dict[str, BoxStyle] = {
    "pixel": BoxStyle(
        "pixel", None, "[{0}, {1}, {2}, {3}]", "[{0}, {1}, {2}, {3}]",
        reference="radvqa's stored convention (docs/conventions.md)"),
    # Qwen2.5-VL grounds in absolute pixel coordinates of the image it is given
    # and answers with JSON objects carrying "bbox_2d" (Qwen2.5-VL Technical
    # Report, arXiv:2502.13923, sec. 2.2.1; QwenLM/Qwen2.5-VL
    # cookbooks/spatial_understanding.ipynb).  The image it is given is the
    # stored one resized by smart_resize (sides multiples of 28, min/max
    # pixels), so the boxes are written in that frame: round(x * w' / w).
    "qwen2.5-vl": BoxStyle(
        "qwen2.5-vl", None, "[{0}, {1}, {2}, {3}]", '{{"bbox_2d": [{0}, {1}, {2}, {3}]}}',
        reference="Qwen2.5-VL Technical Report (arXiv:2502.13923) sec. 2.2.1; "
                  "QwenLM/Qwen2.5-VL cookbooks/spatial_understanding.ipynb; qwen-vl-utils smart_resize",
        frame="smart-resize", min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS),
    # LLaVA-1.5 grounding data: [x1, y1, x2, y2] as fractions in [0, 1] of the
    # image padded to a centred square (image_aspect_ratio: pad, expand2square;
    # haotian-liu/LLaVA issue #606), two decimals as in llava_v1_5_mix665k.
    "llava": BoxStyle(
        "llava", 1, "[{0}, {1}, {2}, {3}]", "[{0}, {1}, {2}, {3}]",
        units=("coordinates normalised to [0, 1] on the image padded to a square", "normalised"),
        reference="haotian-liu/LLaVA llava/mm_utils.py expand2square; issue #606 (boxes of the "
                  "LLaVA-1.5 mix665k grounding data)",
        frame="padded-square", decimals=2),
    # InternVL normalises each coordinate by the image width/height to
    # [0, 1000] with Python's round() and writes <box>[[x1, y1, x2, y2]]</box>
    # (InternVL docs, "Chat Data Format", Grounding / Detection Data).
    "internvl": BoxStyle(
        "internvl", 1000, "<box>[[{0}, {1}, {2}, {3}]]</box>", "<box>[[{0}, {1}, {2}, {3}]]</box>",
        units=("coordinates normalised to 0–1000", "0–1000 normalised"),
        reference="InternVL docs, get_started/chat_data_format.md, 'Grounding / Detection Data'"),
}


def check_box(box: Sequence[int], width: int, height: int, where: str = "box") -> tuple[int, int, int, int]:
    """Validate a stored pixel box against its image size.

    Parameters
    ----------
    box : sequence of 4 int
        ``[x_min, y_min, x_max, y_max]``, minima inclusive, maxima exclusive.
    width, height : int
        Size of the stored image in pixels.
    where : str
        Named in the error (e.g. ``"qa/test-….parquet: qa_id 1a2b: answer_box"``).

    Returns
    -------
    tuple of 4 int

    Raises
    ------
    ExportError
        Not four integers, or not ``0 <= x_min < x_max <= width`` and
        ``0 <= y_min < y_max <= height``.
    """
    if box is None or len(box) != 4:
        raise ExportError(f"{where}: {box!r} is not [x_min, y_min, x_max, y_max]")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ExportError(f"{where}: {[x0, y0, x1, y1]} does not fit a {width}x{height} image "
                          f"(expected 0 <= x_min < x_max <= width, 0 <= y_min < y_max <= height)")
    return x0, y0, x1, y1


def convert_box(box: Sequence[int], width: int, height: int, style: str | BoxStyle,
                where: str = "box") -> list[int] | list[float]:
    """Convert a stored pixel box to the coordinates of ``style``.

    Parameters
    ----------
    box : sequence of 4 int
        ``[x_min, y_min, x_max, y_max]`` in pixels of the stored image
        (maxima exclusive, so they are the box's right/bottom pixel edges).
    width, height : int
        Size of the stored image.
    style : str or BoxStyle
        ``pixel`` keeps the pixels; ``qwen2.5-vl`` scales them into the
        :func:`smart_resize` frame (``round(x * w' / width)``, ``round(y * h' / height)``;
        a side that would shrink to nothing keeps one pixel); ``internvl`` gives
        ``round(x / width * 1000)`` and ``round(y / height * 1000)`` as InternVL's
        data preparation does (Python's ``round``, half to even); ``llava`` gives
        ``round((x + x_offset) / side, 2)`` on the padded square (:func:`padded_square`).

    Returns
    -------
    list of 4 int, or 4 float for a style with ``decimals``
        ``[x1, y1, x2, y2]``.

    Examples
    --------
    >>> convert_box([53, 15, 73, 28], 102, 54, "internvl")
    [520, 278, 716, 519]
    >>> convert_box([53, 15, 73, 28], 102, 54, "llava")
    [0.52, 0.38, 0.72, 0.51]
    >>> convert_box([53, 15, 73, 28], 102, 54, "qwen2.5-vl")
    [58, 16, 80, 29]
    """
    s = box_style(style)
    x0, y0, x1, y1 = check_box(box, width, height, where)
    if s.frame == "smart-resize":
        h2, w2 = smart_resize(height, width, QWEN_FACTOR, s.min_pixels, s.max_pixels)
        sx, sy = round(x0 * w2 / width), round(y0 * h2 / height)
        return [sx, sy, max(sx + 1, round(x1 * w2 / width)), max(sy + 1, round(y1 * h2 / height))]
    if s.frame == "padded-square":
        side, ox, oy = padded_square(width, height)
        x0, x1, y0, y1 = x0 + ox, x1 + ox, y0 + oy, y1 + oy
        width = height = side
    if s.normalise is None:
        return [x0, y0, x1, y1]
    n = s.normalise
    out = [x0 / width * n, y0 / height * n, x1 / width * n, y1 / height * n]
    return [round(v, s.decimals) for v in out] if s.decimals is not None else [round(v) for v in out]


def box_text(box: Sequence[int], width: int, height: int, style: str | BoxStyle, *,
             answer: bool, where: str = "box") -> str:
    """A box as ``style`` writes it in a question (``answer=False``) or an answer."""
    s = box_style(style)
    values = convert_box(box, width, height, s, where)
    if s.decimals is not None:
        values = [f"{v:.{s.decimals}f}" for v in values]
    return (s.answer if answer else s.question).format(*values)


def convert_question_boxes(question: str, size: tuple[int, int] | None, style: str | BoxStyle, *,
                           question_box: Sequence[int] | None = None, grounding: bool = False,
                           where: str = "question") -> str:
    """Rewrite the boxes a question mentions in ``style``.

    Parameters
    ----------
    question : str
        Question text; boxes appear as ``[x0, y0, x1, y1]`` (pixels).
    size : (width, height) or None
        Stored image size; ``None`` (no image, e.g. volumes) leaves the text alone.
    style : str or BoxStyle
    question_box : sequence of 4 int, optional
        The box the question mentions (``question_box`` column).  When given,
        exactly that literal is converted and it must occur in the text;
        otherwise every 4-integer literal that fits in the image is converted.
    grounding : bool
        The row's answer is a box: the words ``pixels``/``pixel`` are replaced
        by the style's units when they are not pixels.
    where : str
        Named in errors.

    Returns
    -------
    str
    """
    s = box_style(style)
    if size is None or s.name == "pixel":
        return question
    width, height = size
    if question_box is not None:
        literal = BOX_STYLES["pixel"].question.format(*check_box(question_box, width, height, where))
        if literal not in question:
            raise ExportError(f"{where}: question_box {literal} does not occur in the question {question!r}")
        out = question.replace(literal, box_text(question_box, width, height, s, answer=False, where=where))
    else:
        def repl(m: re.Match) -> str:
            box = [int(g) for g in m.groups()]
            x0, y0, x1, y1 = box
            if not (x0 < x1 <= width and y0 < y1 <= height):
                return m.group(0)  # not a box of this image: leave the literal alone
            return box_text(box, width, height, s, answer=False, where=where)

        out = BOX_LITERAL.sub(repl, question)
    if grounding and s.units:
        plural, adjective = s.units
        out = re.sub(r"\bpixels\b", plural, out)
        out = re.sub(r"\bpixel\b", adjective, out)
    return out


def with_pixels(style: BoxStyle, min_pixels: int | None, max_pixels: int | None) -> BoxStyle:
    """``style`` with the ``min_pixels`` / ``max_pixels`` given (``None`` keeps the default).

    Only a ``smart-resize`` style takes them; :class:`ExportError` otherwise, or when a
    bound is not positive or ``max_pixels < min_pixels``.
    """
    if min_pixels is None and max_pixels is None:
        return style
    if style.frame != "smart-resize":
        raise ExportError(f"boxes: --min-pixels/--max-pixels set the smart_resize frame of qwen2.5-vl "
                          f"boxes; boxes {style.name} do not use it")
    lo = style.min_pixels if min_pixels is None else int(min_pixels)
    hi = style.max_pixels if max_pixels is None else int(max_pixels)
    if lo <= 0 or hi < lo:
        raise ExportError(f"boxes: min_pixels {lo} / max_pixels {hi}: expected 0 < min_pixels <= max_pixels")
    return replace(style, min_pixels=lo, max_pixels=hi)


def box_style(style: str | BoxStyle) -> BoxStyle:
    """The :class:`BoxStyle` named ``style`` (a style is returned as is); :class:`ExportError` if unknown."""
    if isinstance(style, BoxStyle):
        return style
    try:
        return BOX_STYLES[style]
    except KeyError:
        raise ExportError(f"boxes: {style!r} is not one of {', '.join(BOX_STYLES)}") from None
