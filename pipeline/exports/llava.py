"""``llava``: LLaVA-1.5 conversation records, one JSON list per split, media beside them.

Records ``{id, image, width, height, conversations: [{from: human, value:
"<image>\\n…"}, {from: gpt, value}]}`` in ``<name>_<split>.json``; the media
files are written beside it (``images/<image_id>.png``; for volume corpora
``volumes/<volume_id>.npy``, the M3D / RadFM convention).  InternVL reads the
same records (it recommends the ``width``/``height`` keys).  Boxes default to the
``llava`` style: LLaVA-1.5's grounding convention, fractions in [0, 1] of the image
padded to a centred square (``image_aspect_ratio: pad``), two decimals; ``--boxes
internvl`` for InternVL.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.exports.boxes import BoxStyle
from pipeline.exports.conversations import ConversationFormat
from pipeline.exports.records import format_human, render_row


def llava_record(row: Mapping, media: str, size: tuple[int, int] | None, style: str | BoxStyle,
                 where: str = "row") -> dict:
    """One LLaVA-1.5 record: ``{id, image, [width, height,] conversations}``."""
    question, answer = render_row(row, size, style, where)
    record = {"id": row["id"], "image": media}
    if size is not None:
        record["width"], record["height"] = size
    record["conversations"] = [
        {"from": "human", "value": format_human(question, row["question_type"], row["options"])},
        {"from": "gpt", "value": answer},
    ]
    return record


def llava_caption_record(caption: Mapping, media: str, size: tuple[int, int] | None) -> dict:
    """An ``alignment`` caption (stored conversation, no boxes) as a LLaVA-1.5 record."""
    record = {"id": caption["id"], "image": media}
    if size is not None:
        record["width"], record["height"] = size
    record["conversations"] = [{"from": t["from"], "value": t["value"]} for t in caption["conversations"]]
    return record


class Llava(ConversationFormat):
    """LLaVA-1.5 / InternVL conversation JSON."""

    name = title = "llava"
    help = "JSON + images/"
    default_boxes = "llava"

    def record(self, row, media, size, style, where="row"):
        return llava_record(row, media, size, style, where)

    def caption_record(self, caption, media, size):
        return llava_caption_record(caption, media, size)


FORMAT = Llava()
