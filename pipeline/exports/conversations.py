"""Conversation formats (llava, sharegpt): one JSON list per split, media files beside it.

Each split's rows become ``<prefix>_<split>.json`` (one record per QA row, in
shard order, rows sorted by id inside a shard); with ``--captions`` a tree
corpus's ``alignment`` conversations become ``<prefix>_captions_<split>.json``.
The media are written once each, into ``images/`` (``volumes/`` for a volume
corpus), named by id; a visual-prompt question points at its prompted image
(``images/<image_id>-boxed-easy.png`` / ``-boxed.png``, option ``prompt_image``,
:func:`pipeline.exports.records.prompt_column`).  A format says only how one record looks.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Mapping

from pipeline.exports.base import JsonList
from pipeline.exports.boxes import BoxStyle
from pipeline.exports.format import ExportFormat, ExportJob
from pipeline.exports.records import PROMPT_OPTION, media_key, read_rows, unit_media


class ConversationFormat(ExportFormat):
    """A format of JSON lists of conversations; subclasses give the record shapes."""

    captions = True
    options = {PROMPT_OPTION: "auto"}

    @abstractmethod
    def record(self, row: Mapping, media: str, size: tuple[int, int] | None, style: BoxStyle,
               where: str = "row") -> dict:
        """The record of one normalised QA row whose media file is ``media`` (relative path)."""

    @abstractmethod
    def caption_record(self, caption: Mapping, media: str, size: tuple[int, int] | None) -> dict:
        """The record of one ``alignment`` caption (``{id, media_id, conversations}``, no boxes)."""

    def finish(self, job: ExportJob, stems: list[str]) -> None:
        """Write what accompanies the JSON files ``<stem>.json`` (nothing by default)."""

    def export(self, job: ExportJob) -> None:
        corpus, layout, out = job.corpus, job.layout, job.output
        os.makedirs(os.path.join(out, layout.media_dir), exist_ok=True)
        files = [(f"{job.prefix}_{split}", split, False) for split in job.splits]
        if job.captions:
            files += [(f"{job.prefix}_captions_{split}", split, True) for split in job.splits
                      if corpus.shards(layout.media, split)]
        stems = []
        for stem, split, is_caption in files:
            with JsonList(os.path.join(out, f"{stem}.json")) as writer:
                for rel in corpus.shards(layout.media if is_caption else layout.rows, split):
                    n = (self._caption_unit if is_caption else self._qa_unit)(job, rel, writer)
                    job.log(f"export: {rel}: {n} rows")
            job.result.files[f"{stem}.json"] = writer.rows
            stems.append(stem)
        self.finish(job, stems)

    def _qa_unit(self, job: ExportJob, rel: str, writer: JsonList) -> int:
        rows = read_rows(job.corpus, job.layout, rel, job.options.get(PROMPT_OPTION, "auto"))
        media = unit_media(job.corpus, job.layout, rel, rows, job.output, job.result)
        for row in rows:
            media_rel, size, _ = media[media_key(row)]
            writer.add(self.record(row, media_rel, size, job.style, where=f"{rel}: qa_id {row['id']}"))
        return len(rows)

    def _caption_unit(self, job: ExportJob, rel: str, writer: JsonList) -> int:
        layout = job.layout
        rows = job.corpus.read_rows(rel, (layout.key, "conversations", "metadata"))
        caps = sorted(({"id": r["metadata"]["question_id"], "media_id": r[layout.key],
                        "conversations": r["conversations"]} for r in rows), key=lambda c: c["id"])
        media = unit_media(job.corpus, layout, rel, caps, job.output, job.result)
        for cap in caps:
            media_rel, size, _ = media[media_key(cap)]
            writer.add(self.caption_record(cap, media_rel, size))
        return len(caps)
