"""``sharegpt``: LLaMA-Factory's multimodal ShareGPT flavour, plus its ``dataset_info.json``.

``{id, messages: [{role: user, content}, {role: assistant, content}], images:
[path]}`` per record, plus a ``dataset_info.json`` entry per file
(``formatting: sharegpt``, columns ``messages``/``images``, tags
``role``/``content``/``user``/``assistant``); paths are relative to the export
folder, which is LLaMA-Factory's ``dataset_dir`` (and default ``media_dir``).

2D corpora only: LLaMA-Factory opens every file of ``images`` with PIL
(``src/llamafactory/data/mm_plugin.py``, ``_regularize_images``) and has no 3D
input, so a volumes corpus (``.npy`` volumes) is refused with an error rather
than written as files its loader crashes on.  Each user turn carries one
``<image>`` for the one image of its record (LLaMA-Factory's ``_validate_input``
requires as many ``<image>`` tokens as images).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.exports.boxes import BoxStyle
from pipeline.exports.conversations import ConversationFormat
from pipeline.exports.format import ExportJob
from pipeline.exports.records import format_human, render_row
from pipeline.io.atomic import write_file
from pipeline.io.shards import canonical_json

#: ShareGPT roles of the stored conversations' ``from`` values.
ROLES = {"human": "user", "gpt": "assistant"}


def sharegpt_record(row: Mapping, media: str, size: tuple[int, int] | None, style: str | BoxStyle,
                    where: str = "row") -> dict:
    """One LLaMA-Factory ShareGPT record: ``{id, messages, images}``."""
    question, answer = render_row(row, size, style, where)
    return {
        "id": row["id"],
        "messages": [
            {"role": "user", "content": format_human(question, row["question_type"], row["options"])},
            {"role": "assistant", "content": answer},
        ],
        "images": [media],
    }


def sharegpt_caption_record(caption: Mapping, media: str, size: tuple[int, int] | None) -> dict:
    """An ``alignment`` caption (stored conversation, no boxes) as a ShareGPT record."""
    return {"id": caption["id"],
            "messages": [{"role": ROLES[t["from"]], "content": t["value"]} for t in caption["conversations"]],
            "images": [media]}


def dataset_info_entry(file_name: str) -> dict:
    """LLaMA-Factory ``dataset_info.json`` entry for a multimodal ShareGPT file."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"},
    }


class ShareGpt(ConversationFormat):
    """LLaMA-Factory ShareGPT JSON with its ``dataset_info.json``."""

    name = "sharegpt"
    title = "sharegpt (LLaMA-Factory)"
    help = "LLaMA-Factory JSON + dataset_info.json + images/"
    default_boxes = "qwen2.5-vl"
    kinds = ("slices", "tree")

    def kind_error(self, corpus_dir: str, kind: str) -> str:
        return (f"{corpus_dir}: sharegpt (LLaMA-Factory) needs 2D images: LLaMA-Factory opens every file "
                f"of a record's images with PIL, and this {kind} corpus has .npy volumes, which PIL cannot "
                f"open — export it with --format llava (volumes/<volume_id>.npy, the M3D / RadFM convention)")

    def record(self, row, media, size, style, where="row"):
        return sharegpt_record(row, media, size, style, where)

    def caption_record(self, caption, media, size):
        return sharegpt_caption_record(caption, media, size)

    def finish(self, job: ExportJob, stems: list[str]) -> None:
        """``dataset_info.json``: one entry per JSON file written."""
        info = {stem: dataset_info_entry(f"{stem}.json") for stem in stems}
        write_file(os.path.join(job.output, "dataset_info.json"), canonical_json(info))


FORMAT = ShareGpt()
