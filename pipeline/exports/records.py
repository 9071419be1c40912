"""Turns and media shared by every format: QA rows normalised, rendered, and their media written.

Question formatting follows the ``instruct`` config: human ``"<image>\\n" +
question`` with multiple-choice options appended as ``"A. …"`` lines; gpt
``"A. text"`` for multiple choice, ``yes``/``no`` for closed, the text for
open questions.  Rows are read a unit (one QA shard) at a time and sorted by
id; the unit's media come from the media shard of the same name (one work unit
writes both), falling back to the other media shards for an id it lacks.
Media files are named by id (no source file name exists in a corpus) and keep
their stored bytes.

Visual prompts: a row whose ``visual_prompt`` is set (e.g. ``red_box``: "Which structure
is outlined by the red box?") is exported with the image that carries the prompt
(:func:`pipeline.schema.prompts.prompt_column`), never the plain ``image``, which has no box: ``image_boxed_easy``
(the red box alone) when the question names only red — all it promises — and
``image_boxed`` (the red box beside its nearest structures in green, blue and yellow) when
it names one of the other colours; the format option ``prompt_image`` (``auto``, ``boxed``,
``easy``) overrides the rule.  Prompted media are files of their own,
``<image_id>-boxed.png`` / ``<image_id>-boxed-easy.png`` (the corpus's own ``path``
names), written once each like the plain ones.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator, Mapping, Sequence

from pipeline.core.imaging import png_size
from pipeline.exports.base import ExportError, ExportResult
from pipeline.exports.boxes import BoxStyle, box_text, convert_question_boxes
from pipeline.exports.selection import Layout
from pipeline.io.atomic import write_file
from pipeline.io.corpus import Corpus
from pipeline.schema.prompts import prompt_column

LETTERS = string.ascii_uppercase
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Columns every QA config has.
ROW_COLUMNS = ("qa_id", "question", "question_type", "answer", "task", "split")
#: The format option choosing a visual prompt's image (:func:`pipeline.schema.prompts.prompt_column`).
PROMPT_OPTION = "prompt_image"
#: File name suffix of each prompted image column (the corpus's own ``path`` names).
PROMPT_SUFFIX = {"image_boxed": "-boxed", "image_boxed_easy": "-boxed-easy"}


def row_prompt_column(row: Mapping, choice: str = "auto") -> str | None:
    """The image column of a normalised row's visual prompt (``None`` without one):
    :func:`pipeline.schema.prompts.prompt_column` of its question, option ``choice``."""
    try:
        return prompt_column(row["question"], row.get("visual_prompt"), choice)
    except ValueError as err:
        raise ExportError(f"option: {PROMPT_OPTION}: {err}") from None


def format_human(question: str, question_type: str, options: Sequence[str] | None) -> str:
    """The human turn as the ``instruct`` config writes it.

    ``"<image>\\n" + question``, with ``"A. …"`` lines appended for multiple choice.
    """
    text = "<image>\n" + question
    if question_type == "multiple_choice":
        text += "\n" + "\n".join(f"{LETTERS[n]}. {o}" for n, o in enumerate(options or ()))
    return text


def format_gpt(question_type: str, answer: str, answer_text: str) -> str:
    """The gpt turn: ``"A. text"`` for multiple choice, else ``answer`` (``yes``/``no``, text)."""
    if question_type == "multiple_choice":
        return f"{answer}. {answer_text}"
    return answer


def render_row(row: Mapping, size: tuple[int, int] | None, style: str | BoxStyle,
               where: str = "row") -> tuple[str, str]:
    """Question and answer of a normalised row with its boxes in ``style``.

    Parameters
    ----------
    row : mapping
        A normalised row (:func:`normalise_row`): ``question``, ``question_type``,
        ``options``, ``answer``, ``answer_text``, ``answer_box`` (or None),
        ``question_box`` (or None).
    size : (width, height) or None
        Stored image size (needed when the row carries a box).
    style : str or BoxStyle
    where : str
        Named in errors.

    Returns
    -------
    (question, answer) : tuple of str
        The question text (options not included) and the answer text
        (``"A. text"`` for multiple choice).
    """
    # a multiple-choice answer is its letter, even if a future row carries a box
    answer_box = row.get("answer_box") if row["question_type"] != "multiple_choice" else None
    question_box = row.get("question_box")
    question = row["question"]
    if size is not None:
        question = convert_question_boxes(question, size, style, question_box=question_box,
                                          grounding=answer_box is not None, where=f"{where}: question")
    elif answer_box is not None or question_box is not None:
        raise ExportError(f"{where}: has a box but no image size")
    if answer_box is not None:
        answer = box_text(answer_box, size[0], size[1], style, answer=True, where=f"{where}: answer_box")
    else:
        answer = format_gpt(row["question_type"], row["answer"], row["answer_text"])
    return question, answer


def normalise_row(row: Mapping, layout: Layout) -> dict:
    """A QA row of any config in the exporter's common shape.

    Keys: ``id``, ``media_id``, ``question``, ``question_type``, ``options``,
    ``answer``, ``answer_text``, ``answer_box``, ``question_box``, ``task``,
    ``split``, ``l2`` (region for tree rows; the plane is added from the
    images config for slices), ``visual_prompt`` (or None).
    """
    meta = row.get("metadata") or {}
    answer_text = row.get("answer_text")
    if answer_text is None:  # the benchmark keeps the option text in metadata
        answer_text = meta.get("correct_text") if row["question_type"] == "multiple_choice" else row["answer"]
    return {
        "id": row["qa_id"], "media_id": row[layout.key], "question": row["question"],
        "question_type": row["question_type"], "options": list(row.get(layout.options) or ()),
        "answer": row["answer"], "answer_text": answer_text, "answer_box": row.get("answer_box"),
        "question_box": row.get("question_box"), "task": row["task"], "split": row["split"],
        "l2": meta.get("location") or "", "visual_prompt": row.get("visual_prompt"),
    }


def read_rows(corpus: Corpus, layout: Layout, rel: str, prompt: str = "auto") -> list[dict]:
    """The QA rows of shard ``rel``, normalised (:func:`normalise_row`) and sorted by id;
    each with ``image_column``, the image column of its visual prompt (:func:`prompt_column`
    with ``prompt``) or ``None`` (the plain media)."""
    optional = ("answer_text", "answer_box", "question_box", "metadata", "visual_prompt")
    rows = corpus.read_rows(rel, (*ROW_COLUMNS, layout.key, layout.options), optional)
    out = [normalise_row(r, layout) for r in rows]
    for r in out:
        r["image_column"] = row_prompt_column(r, prompt)
    out.sort(key=lambda r: r["id"])
    return out


def paired_shard(rel: str, config: str) -> str:
    """The shard of ``config`` written by the same unit as ``rel`` (same file name)."""
    return f"{config}/{rel.split('/', 1)[1]}"


def read_media(corpus: Corpus, layout: Layout, paired: str, wanted: set[str],
               where: str, prompts: Mapping[str, set[str]] | None = None) -> Iterator[tuple[str, bytes, dict]]:
    """``(id, bytes, metadata)`` of each wanted media id, reading one shard, one batch at a time.

    The paired shard (same unit) first; ids it lacks are looked up in the other shards
    of the media config, in name order.  Each id is yielded once; :class:`ExportError`
    names ``where`` when one is in no shard.  ``prompts`` (media id -> prompted image
    columns) adds those columns' bytes to the metadata (``{column: bytes}``); a missing
    one is an :class:`ExportError` naming the column.
    """
    prompts = prompts or {}
    prompt_columns = tuple(sorted(set().union(*prompts.values()))) if prompts else ()
    columns = [*layout.media_columns, *prompt_columns]
    remaining = set(wanted)
    shards = sorted(corpus.shards(layout.media))
    order = ([paired] if paired in shards else []) + [s for s in shards if s != paired]
    for rel in order:
        if not remaining:
            break
        pf = corpus.open_shard(rel, layout.media_columns)
        ids = set(pf.read(columns=[layout.key]).column(layout.key).to_pylist())
        if not ids & remaining:
            continue
        if prompt_columns and not set(prompt_columns) <= set(pf.schema_arrow.names):
            missing = sorted(set(prompt_columns) - set(pf.schema_arrow.names))[0]
            raise ExportError(f"{rel}: {missing}: no such column, but {where} has visual-prompt "
                              f"questions (built without slices.boxed?)")
        for batch in pf.iter_batches(batch_size=64, columns=columns):
            cols = batch.to_pydict()
            for n, media_id in enumerate(cols[layout.key]):
                if media_id not in remaining:
                    continue
                remaining.discard(media_id)
                value = cols[layout.media_columns[1]][n]
                data = value["bytes"] if isinstance(value, Mapping) else value
                if not data:
                    raise ExportError(f"{rel}: {layout.key} {media_id}: empty media bytes")
                meta = {c: cols[c][n] for c in layout.media_columns[2:]}
                for column in sorted(prompts.get(media_id, ())):
                    value = cols[column][n]
                    prompted = value["bytes"] if isinstance(value, Mapping) else value
                    if not prompted:
                        raise ExportError(f"{rel}: {layout.key} {media_id}: {column}: empty, but a "
                                          f"visual-prompt question of {where} refers to it")
                    meta[column] = prompted
                yield media_id, data, meta
    if remaining:
        raise ExportError(f"{where}: {layout.key} {sorted(remaining)[0]} not found in "
                          f"{layout.media}/ ({len(remaining)} missing)")


def media_suffix(data: bytes, where: str) -> str:
    """File suffix of stored media bytes (PNG, JPEG or .npy)."""
    if data.startswith(PNG_SIGNATURE):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"\x93NUMPY"):
        return ".npy"
    raise ExportError(f"{where}: stored bytes are neither PNG, JPEG nor .npy (starts {data[:8]!r})")


def media_size(layout: Layout, data: bytes, meta: Mapping, where: str) -> tuple[int, int] | None:
    """``(width, height)`` of a stored image: its ``width``/``height`` columns, else its PNG
    header; ``None`` for a volume."""
    if layout.kind == "volumes":
        return None
    if meta.get("width") is not None and meta.get("height") is not None:
        return int(meta["width"]), int(meta["height"])
    if len(data) < 24:
        raise ExportError(f"{where}: image: not a PNG with an IHDR chunk")
    try:
        return png_size(data)
    except ValueError as err:
        raise ExportError(f"{where}: image: not a PNG with an IHDR chunk") from err


def write_media(out: str, rel_dir: str, media_id: str, data: bytes, where: str,
                column: str | None = None) -> tuple[str, bool]:
    """Write stored media bytes, unchanged, as ``rel_dir/<media_id><suffix>``
    (``<media_id>-boxed<suffix>`` etc. for a prompted ``column``, :data:`PROMPT_SUFFIX`).

    Returns the relative path and whether the file was written now (an id
    already written by this export is not written again).
    """
    rel = f"{rel_dir}/{media_id}{PROMPT_SUFFIX.get(column, '')}{media_suffix(data, where)}"
    path = os.path.join(out, *rel.split("/"))
    if os.path.exists(path):
        return rel, False
    write_file(path, data)
    return rel, True


def unit_media(corpus: Corpus, layout: Layout, rel: str, rows: Sequence[Mapping], out: str,
               result: ExportResult) -> dict[tuple[str, str | None], tuple[str, tuple[int, int] | None, dict]]:
    """Write the media of ``rows`` (one unit, QA shard ``rel``) into ``out``: each row's
    plain media, or the prompted image of its ``image_column``.

    Returns
    -------
    dict
        (media id, image column or None) -> (relative path, size (:func:`media_size`),
        metadata columns).
    """
    keys = {media_key(r) for r in rows}
    prompts = prompted_columns(keys)
    found = {}
    wanted = {media_id for media_id, _ in keys}
    for media_id, data, meta in read_media(corpus, layout, paired_shard(rel, layout.media), wanted, rel,
                                           prompts):
        where = f"{layout.media}/: {layout.key} {media_id}"
        size = media_size(layout, data, meta, where)
        for column in (None, *sorted(prompts.get(media_id, ()))):
            if (media_id, column) not in keys:
                continue
            media_rel, written = write_media(out, layout.media_dir, media_id,
                                             data if column is None else meta[column], where, column)
            result.media += written
            found[(media_id, column)] = (media_rel, size, meta)
    return found


def media_key(row: Mapping) -> tuple[str, str | None]:
    """``(media id, image column or None)``: which stored image a row is exported with."""
    return row["media_id"], row.get("image_column")


def prompted_columns(keys) -> dict[str, set[str]]:
    """Media id -> the prompted image columns among media keys (:func:`media_key`)."""
    prompts: dict[str, set[str]] = {}
    for media_id, column in keys:
        if column is not None:
            prompts.setdefault(media_id, set()).add(column)
    return prompts

