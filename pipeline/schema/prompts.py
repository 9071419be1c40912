"""Which stored image a visual-prompt question refers to (the exports, the report and the card
share the rule).

A slice of a recipe with ``slices.boxed`` has one visual prompt, drawn at extraction:
``prompt_label`` names the structure outlined in red; ``image_boxed`` shows it beside its
nearest structures in green, blue and yellow, ``image_boxed_easy`` alone.  Every question
with a ``visual_prompt`` (``red_box``) about that slice asks about that one structure, so
the image row carries everything the question needs; the plain ``image`` has no box.
"""

from __future__ import annotations

import re

#: ``prompt_image`` choice -> the image column of a visual prompt.
PROMPT_COLUMNS = {"boxed": "image_boxed", "easy": "image_boxed_easy"}
#: The choices: ``auto`` (by the question's wording, :func:`prompt_column`), ``boxed``, ``easy``.
PROMPT_CHOICES = ("auto", *PROMPT_COLUMNS)
#: Colours of the hard variant's other boxes: a question naming one needs ``image_boxed``.
OTHER_COLOURS = frozenset({"green", "blue", "yellow"})


def prompt_column(question: str, visual_prompt: str | None, choice: str = "auto") -> str | None:
    """The image column carrying a question's visual prompt; ``None`` without one.

    ``auto``: ``image_boxed`` when the question names a colour of the hard variant's other
    boxes (green, blue, yellow), else ``image_boxed_easy`` — the red box alone is all a
    question naming only red promises; ``boxed`` / ``easy`` choose the column outright.
    :class:`ValueError` for another choice.
    """
    if choice not in PROMPT_CHOICES:
        raise ValueError(f"{choice!r} is not one of {', '.join(PROMPT_CHOICES)}")
    if not visual_prompt:
        return None
    if choice == "auto":
        words = set(re.findall(r"[a-z]+", str(question).lower()))
        return "image_boxed" if words & OTHER_COLOURS else "image_boxed_easy"
    return PROMPT_COLUMNS[choice]
