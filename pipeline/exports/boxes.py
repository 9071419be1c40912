"""Box coordinate styles: a stored pixel box written the way each framework expects it.

Boxes are stored in pixels of the stored image (``x_min, y_min`` inclusive,
``x_max, y_max`` exclusive, i.e. the pixel-edge coordinates of the box) and
are written in the convention of :data:`BOX_STYLES`: in answers (rows with an
``answer_box``) and where a question mentions a box (the optional
``question_box`` column, else any ``[x0, y0, x1, y1]`` literal that fits in
the image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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


BOX_STYLES: dict[str, BoxStyle] = {
    "pixel": BoxStyle(
        "pixel", None, "[{0}, {1}, {2}, {3}]", "[{0}, {1}, {2}, {3}]",
        reference="radvqa's stored convention (docs/conventions.md)"),
    # Qwen2.5-VL grounds in absolute pixel coordinates of the image it is given
    # and answers with JSON objects carrying "bbox_2d" (Qwen2.5-VL Technical
    # Report, arXiv:2502.13923, sec. 2.2.1; QwenLM/Qwen2.5-VL
    # cookbooks/spatial_understanding.ipynb).  The pixels are those of the
    # stored image: a trainer that resizes (smart_resize to multiples of 28,
    # min/max pixels) must scale the boxes with the image.
    "qwen2.5-vl": BoxStyle(
        "qwen2.5-vl", None, "[{0}, {1}, {2}, {3}]", '{{"bbox_2d": [{0}, {1}, {2}, {3}]}}',
        reference="Qwen2.5-VL Technical Report (arXiv:2502.13923) sec. 2.2.1; "
                  "QwenLM/Qwen2.5-VL cookbooks/spatial_understanding.ipynb"),
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
                where: str = "box") -> list[int]:
    """Convert a stored pixel box to the coordinates of ``style``.

    Parameters
    ----------
    box : sequence of 4 int
        ``[x_min, y_min, x_max, y_max]`` in pixels of the stored image
        (maxima exclusive, so they are the box's right/bottom pixel edges).
    width, height : int
        Size of the stored image.
    style : str or BoxStyle
        ``pixel`` and ``qwen2.5-vl`` keep the pixels; ``internvl`` gives
        ``round(x / width * 1000)`` and ``round(y / height * 1000)`` as InternVL's
        data preparation does (Python's ``round``, half to even).

    Returns
    -------
    list of 4 int
        ``[x1, y1, x2, y2]``.

    Examples
    --------
    >>> convert_box([53, 15, 73, 28], 102, 54, "internvl")
    [520, 278, 716, 519]
    """
    s = box_style(style)
    x0, y0, x1, y1 = check_box(box, width, height, where)
    if s.normalise is None:
        return [x0, y0, x1, y1]
    n = s.normalise
    return [round(x0 / width * n), round(y0 / height * n), round(x1 / width * n), round(y1 / height * n)]


def box_text(box: Sequence[int], width: int, height: int, style: str | BoxStyle, *,
             answer: bool, where: str = "box") -> str:
    """A box as ``style`` writes it in a question (``answer=False``) or an answer."""
    s = box_style(style)
    return (s.answer if answer else s.question).format(*convert_box(box, width, height, s, where))


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


def box_style(style: str | BoxStyle) -> BoxStyle:
    """The :class:`BoxStyle` named ``style`` (a style is returned as is); :class:`ExportError` if unknown."""
    if isinstance(style, BoxStyle):
        return style
    try:
        return BOX_STYLES[style]
    except KeyError:
        raise ExportError(f"boxes: {style!r} is not one of {', '.join(BOX_STYLES)}") from None
