"""Helpers shared by the generator modules of :mod:`pipeline.qa.generators`.

``gen`` is the question's keyed stream (:class:`pipeline.core.keys.KeyedStream`): every
draw here comes from it, so a question's choices depend on ``(seed, image, purpose)`` only.
"""

from __future__ import annotations

#: Display name of a record's ``modality`` code (other codes are shown as they are).
MODALITY_NAMES = {"CT": "CT", "MR": "MRI"}


def pick(gen, items: list):
    """One of ``items``, drawn from ``gen``; ``None`` when there are none."""
    return items[int(gen.integers(len(items)))] if items else None


def coin(gen) -> bool:
    """A fair coin flip drawn from ``gen``."""
    return bool(gen.integers(2))


def shuffled(gen, items) -> list:
    """``items`` in an order drawn from ``gen`` (a uniform permutation): distractors listed in
    a fixed order would let the answer's place among them give it away."""
    rest, out = list(items), []
    while rest:
        out.append(rest.pop(int(gen.integers(len(rest)))))
    return out
