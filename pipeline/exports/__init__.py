"""Export a built corpus to training and evaluation frameworks' formats.

Formats (``radvqa export CORPUS --format …``):

``llava``
    One JSON list per split (``<name>_<split>.json``) of LLaVA-1.5 records
    ``{id, image, width, height, conversations: [{from: human, value:
    "<image>\\n…"}, {from: gpt, value}]}``; the media files are written beside
    it (``images/<image_id>.png``; for volume corpora ``volumes/<volume_id>.npy``,
    the M3D / RadFM convention).  InternVL reads the same records (it
    recommends the ``width``/``height`` keys).
``sharegpt``
    LLaMA-Factory's multimodal ShareGPT flavour: ``{id, messages: [{role: user,
    content}, {role: assistant, content}], images: [path]}`` per record, plus a
    ``dataset_info.json`` entry per file (``formatting: sharegpt``, columns
    ``messages``/``images``, tags ``role``/``content``/``user``/``assistant``);
    paths are relative to the export folder, which is LLaMA-Factory's
    ``dataset_dir`` (and default ``media_dir``).
``vlmevalkit``
    Tab-separated files in VLMEvalKit's layout for the test set (the
    ``benchmark`` config of a tree corpus (``instruct``'s test split when it has
    none), the ``test`` split of a slices
    corpus): ``<name>_MCQ.tsv`` (``index, image, question, A, B, C, D, answer,
    category, l2-category, split, qa_id``; ``answer`` a letter), ``<name>_YN.tsv``
    (``answer`` ``Yes``/``No``, as VLMEvalKit's Y/N datasets compare it) and
    ``<name>_VQA.tsv`` for open questions.  ``image`` is the stored PNG in
    base64; a later row of the same image holds the ``index`` of the first
    one instead (VLMEvalKit's ``ImageBaseDataset`` resolves any ``image`` cell
    of at most 64 characters as the index of another row).  ``category`` is
    the task; ``l2-category`` the plane (slices) or the anatomical region
    (tree).  VLMEvalKit builds an unknown TSV with columns ``A``/``B`` as a
    custom MCQ dataset and anything else as custom VQA; score the Y/N file with
    an ``ImageYORNDataset`` subclass whose ``load_data`` reads it.

Question formatting follows the ``instruct`` config: human ``"<image>\\n" +
question`` with multiple-choice options appended as ``"A. …"`` lines; gpt
``"A. text"`` for multiple choice, ``yes``/``no`` for closed, the text for
open questions.

Boxes are stored in pixels of the stored image (``x_min, y_min`` inclusive,
``x_max, y_max`` exclusive, i.e. the pixel-edge coordinates of the box) and
are written in the convention of :data:`BOX_STYLES`: in answers (rows with an
``answer_box``) and where a question mentions a box (the optional
``question_box`` column, else any ``[x0, y0, x1, y1]`` literal that fits in
the image).

Reading is shard by shard: a unit's QA shard and the media shard of the same
name (one work unit writes both), falling back to the other media shards for
an id the paired one lacks; image bytes are never all in memory.  Only the
configs listed in ``manifest.json`` are read — never ``dead_letters/`` or
``.radvqa/`` — and media files are named by id (no source file name exists in
a corpus).  Output is deterministic: splits in order, shards in name order,
rows sorted by id inside a shard; JSON is UTF-8 with ``ensure_ascii=False``;
every file is written under a temporary name, then renamed.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import string
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow.parquet as pq

FORMATS = ("llava", "sharegpt", "vlmevalkit")
KINDS = ("slices", "tree", "volumes")
MANIFEST = "manifest.json"
#: Folders of a corpus an export never reads.
PRIVATE_DIRS = ("dead_letters", ".radvqa")
SPLIT_ORDER = ("train", "validation", "test")
SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")
#: A box as the templates render it: ``[x_min, y_min, x_max, y_max]``.
BOX_LITERAL = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LETTERS = string.ascii_uppercase
TSV_MCQ_MIN_LETTERS = 4


class ExportError(ValueError):
    """An export that cannot be done: names the file and the field."""


# --------------------------------------------------------------------------- boxes


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

#: ``--boxes`` default per format.
DEFAULT_BOXES = {"llava": "pixel", "sharegpt": "qwen2.5-vl", "vlmevalkit": "pixel"}


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
    s = _style(style)
    x0, y0, x1, y1 = check_box(box, width, height, where)
    if s.normalise is None:
        return [x0, y0, x1, y1]
    n = s.normalise
    return [round(x0 / width * n), round(y0 / height * n), round(x1 / width * n), round(y1 / height * n)]


def box_text(box: Sequence[int], width: int, height: int, style: str | BoxStyle, *,
             answer: bool, where: str = "box") -> str:
    """A box as ``style`` writes it in a question (``answer=False``) or an answer."""
    s = _style(style)
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
    s = _style(style)
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


def _style(style: str | BoxStyle) -> BoxStyle:
    if isinstance(style, BoxStyle):
        return style
    try:
        return BOX_STYLES[style]
    except KeyError:
        raise ExportError(f"boxes: {style!r} is not one of {', '.join(BOX_STYLES)}") from None


# --------------------------------------------------------------------------- rows


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


def caption_record(fmt: str, caption: Mapping, media: str, size: tuple[int, int] | None) -> dict:
    """An ``alignment`` caption (stored conversation, no boxes) as a llava or sharegpt record."""
    turns = caption["conversations"]
    if fmt == "llava":
        record = {"id": caption["id"], "image": media}
        if size is not None:
            record["width"], record["height"] = size
        record["conversations"] = [{"from": t["from"], "value": t["value"]} for t in turns]
        return record
    roles = {"human": "user", "gpt": "assistant"}
    return {"id": caption["id"],
            "messages": [{"role": roles[t["from"]], "content": t["value"]} for t in turns],
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


TSV_COLUMNS = {
    "MCQ": ["index", "image", "question", "A", "B", "C", "D", "answer", "category", "l2-category",
            "split", "qa_id"],
    "YN": ["index", "image", "question", "answer", "category", "l2-category", "split", "qa_id"],
    "VQA": ["index", "image", "question", "answer", "category", "l2-category", "split", "qa_id"],
}


def tsv_kind(question_type: str) -> str:
    """Which VLMEvalKit TSV a question type goes to: ``MCQ``, ``YN`` or ``VQA``."""
    return {"multiple_choice": "MCQ", "closed": "YN", "open": "VQA"}[question_type]


def tsv_cells(row: Mapping, index: int, image: str, size: tuple[int, int] | None,
              style: str | BoxStyle, letters: int = TSV_MCQ_MIN_LETTERS, where: str = "row") -> dict:
    """One VLMEvalKit TSV row (column -> value) for a normalised row.

    Parameters
    ----------
    row : mapping
        Normalised row.
    index : int
        The row's ``index`` in its TSV.
    image : str
        Base64 PNG, or the ``index`` (as text) of an earlier row of the same image.
    size : (width, height) or None
    style : str or BoxStyle
    letters : int
        Option columns of the MCQ file (``A``… ``D`` at least).
    where : str
        Named in errors.
    """
    question, answer = render_row(row, size, style, where)
    cells = {"index": index, "image": image, "question": question}
    kind = tsv_kind(row["question_type"])
    if kind == "MCQ":
        options = list(row["options"] or ())
        if len(options) > letters:
            raise ExportError(f"{where}: options: {len(options)} options, the MCQ file has {letters} columns")
        for n in range(letters):
            cells[LETTERS[n]] = options[n] if n < len(options) else ""
        cells["answer"] = row["answer"]
    elif kind == "YN":
        yn = {"yes": "Yes", "no": "No"}.get(str(row["answer"]).strip().lower())
        if yn is None:
            raise ExportError(f"{where}: answer: {row['answer']!r} is not yes/no")
        cells["answer"] = yn
    else:
        cells["answer"] = answer
    cells.update({"category": row["task"], "l2-category": row.get("l2") or "", "split": row["split"],
                  "qa_id": row["id"]})
    return cells


# --------------------------------------------------------------------------- corpus layout


@dataclass(frozen=True)
class Layout:
    """Where one corpus kind keeps its rows and media."""

    kind: str
    rows: str  # config of the QA rows (llava / sharegpt)
    media: str  # config holding the media bytes
    key: str  # media id column (in rows and media)
    options: str  # options column of the rows
    media_dir: str  # folder of the exported media files
    media_columns: tuple[str, ...]  # media config columns read with the bytes


LAYOUTS = {
    "slices": Layout("slices", "qa", "images", "image_id", "options", "images",
                     ("image_id", "image", "width", "height", "plane")),
    "tree": Layout("tree", "instruct", "alignment", "image_id", "choices", "images",
                   ("image_id", "image")),
    "volumes": Layout("volumes", "qa", "volumes", "volume_id", "options", "volumes",
                      ("volume_id", "npy")),
}
BENCHMARK = Layout("tree", "benchmark", "benchmark", "image_id", "choices", "images",
                   ("image_id", "image"))


def read_manifest(corpus: str) -> dict:
    """``manifest.json`` of a corpus; :class:`ExportError` when missing or unreadable."""
    path = os.path.join(corpus, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (is {corpus} a radvqa corpus?)") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable: {err}") from err
    if not isinstance(manifest.get("files"), Mapping):
        raise ExportError(f"{path}: files: missing (expected {{relative_path: {{sha256, rows}}}})")
    return manifest


def corpus_configs(manifest: Mapping) -> dict[str, list[str]]:
    """Config name -> its Parquet shards (relative paths, sorted), from the manifest.

    ``dead_letters/`` and ``.radvqa/`` are never listed.
    """
    out: dict[str, list[str]] = {}
    for rel in sorted(manifest["files"]):
        parts = rel.split("/")
        if len(parts) != 2 or not rel.endswith(".parquet") or parts[0] in PRIVATE_DIRS \
                or parts[0].startswith("."):
            continue
        out.setdefault(parts[0], []).append(rel)
    return out


def detect_kind(manifest: Mapping, configs: Iterable[str]) -> str:
    """Corpus kind: ``manifest["kind"]`` when present, else inferred from the configs.

    ``volumes`` -> volumes; ``instruct`` or ``alignment`` -> tree; ``images`` and
    ``qa`` -> slices.
    """
    kind = manifest.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise ExportError(f"{MANIFEST}: kind: {kind!r} is not one of {', '.join(KINDS)}")
        return kind
    configs = set(configs)
    if "volumes" in configs:
        return "volumes"
    if configs & {"instruct", "alignment"}:
        return "tree"
    if {"images", "qa"} <= configs:
        return "slices"
    raise ExportError(f"{MANIFEST}: files: configs {sorted(configs)} are none of images+qa (slices), "
                      f"instruct/alignment (tree) or volumes (volumes)")


def shard_split(rel: str) -> str:
    """Split of a shard path ``<config>/<split>-SSSSS-of-NNNNN.parquet``."""
    m = SHARD_RE.match(rel.rsplit("/", 1)[-1])
    if not m:
        raise ExportError(f"{MANIFEST}: files: {rel} is not named <split>-SSSSS-of-NNNNN.parquet")
    return m["split"]


def order_splits(splits: Iterable[str]) -> list[str]:
    """train, validation, test first, then any other split by name."""
    splits = set(splits)
    return [s for s in SPLIT_ORDER if s in splits] + sorted(splits - set(SPLIT_ORDER))


def corpus_name(manifest: Mapping) -> str:
    """Default file prefix: ``radvqa_<recipe name>`` with non-alphanumerics as ``_``."""
    recipe = manifest.get("recipe")
    name = recipe.get("name") if isinstance(recipe, Mapping) else None
    return safe_name(f"radvqa_{name}" if name else "radvqa")


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def media_suffix(data: bytes, where: str) -> str:
    """File suffix of stored media bytes (PNG, JPEG or .npy)."""
    if data.startswith(PNG_SIGNATURE):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"\x93NUMPY"):
        return ".npy"
    raise ExportError(f"{where}: stored bytes are neither PNG, JPEG nor .npy (starts {data[:8]!r})")


def png_size(data: bytes, where: str) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise ExportError(f"{where}: image: not a PNG with an IHDR chunk")
    return struct.unpack(">II", data[16:24])


def normalise_row(row: Mapping, layout: Layout) -> dict:
    """A QA row of any config in the exporter's common shape.

    Keys: ``id``, ``media_id``, ``question``, ``question_type``, ``options``,
    ``answer``, ``answer_text``, ``answer_box``, ``question_box``, ``task``,
    ``split``, ``l2`` (region for tree rows; the plane is added from the
    images config for slices).
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
        "l2": meta.get("location") or "",
    }


# --------------------------------------------------------------------------- reading


class _Corpus:
    """A built corpus on local disk, read through its manifest."""

    def __init__(self, root: str):
        self.root = root
        self.manifest = read_manifest(root)
        self.configs = corpus_configs(self.manifest)
        self.kind = detect_kind(self.manifest, self.configs)

    def shards(self, config: str, split: str | None = None) -> list[str]:
        return [s for s in self.configs.get(config, []) if split is None or shard_split(s) == split]

    def splits(self, config: str) -> list[str]:
        return order_splits(shard_split(s) for s in self.shards(config))

    def open(self, rel: str) -> pq.ParquetFile:
        if rel.split("/", 1)[0] in PRIVATE_DIRS:  # operator-only folders: never exported
            raise ExportError(f"{rel}: {', '.join(PRIVATE_DIRS)} are never read by an export")
        path = os.path.join(self.root, *rel.split("/"))
        try:
            return pq.ParquetFile(path)
        except FileNotFoundError:
            raise ExportError(f"{path}: listed in {MANIFEST} but missing") from None
        except OSError as err:
            raise ExportError(f"{path}: unreadable Parquet: {err}") from err

    def read(self, rel: str, columns: Sequence[str], optional: Sequence[str] = ()) -> list[dict]:
        """Rows of ``rel`` (only ``columns`` + those of ``optional`` present)."""
        pf = self.open(rel)
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ExportError(f"{rel}: missing column(s) {', '.join(missing)}")
        return pf.read(columns=list(columns) + [c for c in optional if c in names]).to_pylist()

    def media(self, layout: Layout, paired: str, wanted: set[str], where: str) -> Iterator[tuple[str, bytes, dict]]:
        """``(id, bytes, metadata)`` of each wanted media id, reading one shard at a time.

        The paired shard (same unit) first; ids it lacks are looked up in the
        other shards of the media config.  Each id is yielded once.
        """
        remaining = set(wanted)
        shards = self.shards(layout.media)
        order = ([paired] if paired in shards else []) + [s for s in shards if s != paired]
        for rel in order:
            if not remaining:
                break
            pf = self.open(rel)
            missing = [c for c in layout.media_columns if c not in pf.schema_arrow.names]
            if missing:
                raise ExportError(f"{rel}: missing column(s) {', '.join(missing)}")
            ids = set(pf.read(columns=[layout.key]).column(layout.key).to_pylist())
            if not ids & remaining:
                continue
            for batch in pf.iter_batches(batch_size=64, columns=list(layout.media_columns)):
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
                    yield media_id, data, meta
        if remaining:
            raise ExportError(f"{where}: {layout.key} {sorted(remaining)[0]} not found in "
                              f"{layout.media}/ ({len(remaining)} missing)")


def _media_size(layout: Layout, data: bytes, meta: Mapping, where: str) -> tuple[int, int] | None:
    if layout.kind == "volumes":
        return None
    if meta.get("width") is not None and meta.get("height") is not None:
        return int(meta["width"]), int(meta["height"])
    return png_size(data, where)


# --------------------------------------------------------------------------- writing


class _AtomicText:
    """A UTF-8 text file written under a temporary name, renamed on success."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp-export"
        self.f = open(self.tmp, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class _JsonList(_AtomicText):
    """A JSON list streamed one record per line."""

    def __init__(self, path: str):
        super().__init__(path)
        self.rows = 0
        self.f.write("[")

    def add(self, record: Mapping) -> None:
        self.f.write(("\n" if not self.rows else ",\n") + json.dumps(record, ensure_ascii=False))
        self.rows += 1

    def commit(self) -> None:
        self.f.write("\n]\n" if self.rows else "]\n")
        super().commit()


class _Tsv(_AtomicText):
    """A VLMEvalKit TSV (tab-separated, ``"``-quoted where needed, as pandas reads it)."""

    def __init__(self, path: str, columns: list[str]):
        super().__init__(path)
        self.columns = columns
        self.writer = csv.writer(self.f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        self.writer.writerow(columns)
        self.rows = 0
        self.first_index: dict[str, int] = {}  # media id -> index of the row carrying its bytes

    def add(self, cells: Mapping) -> None:
        self.writer.writerow([cells.get(c, "") for c in self.columns])
        self.rows += 1


def write_media(out: str, rel_dir: str, media_id: str, data: bytes, where: str) -> tuple[str, bool]:
    """Write stored media bytes, unchanged, as ``rel_dir/<media_id><suffix>``.

    Returns the relative path and whether the file was written now (an id
    already written by this export is not written again).
    """
    rel = f"{rel_dir}/{media_id}{media_suffix(data, where)}"
    path = os.path.join(out, *rel.split("/"))
    if os.path.exists(path):
        return rel, False
    tmp = f"{path}.tmp-export"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return rel, True


# --------------------------------------------------------------------------- driver


@dataclass
class ExportResult:
    """What an export wrote."""

    format: str
    kind: str
    output: str
    boxes: str | None
    files: dict[str, int] = field(default_factory=dict)  # relative path -> rows
    media: int = 0

    @property
    def rows(self) -> int:
        return sum(self.files.values())

    def summary(self) -> str:
        """One line for the CLI."""
        media = "volumes" if self.kind == "volumes" else "images"
        boxes = f", boxes {self.boxes}" if self.boxes else ""
        return (f"radvqa export: {self.format} ({self.kind} corpus{boxes}): {self.rows:,} rows in "
                f"{len(self.files)} file(s), {self.media:,} {media} -> {self.output}")


def export_corpus(corpus_dir: str, output_dir: str, fmt: str, *, splits: Sequence[str] | None = None,
                  boxes: str | None = None, captions: bool = False, name: str | None = None,
                  log: Callable[[str], None] | None = None) -> ExportResult:
    """Export a built corpus to ``fmt``.

    Parameters
    ----------
    corpus_dir : str
        A corpus written by ``radvqa build`` (local folder with ``manifest.json``).
    output_dir : str
        Export folder; created, and must be empty if it exists.
    fmt : {"llava", "sharegpt", "vlmevalkit"}
    splits : sequence of str, optional
        Splits to export; default every split for llava/sharegpt and ``test``
        for vlmevalkit.
    boxes : {"pixel", "qwen2.5-vl", "internvl"}, optional
        Box convention; default :data:`DEFAULT_BOXES` of the format.
    captions : bool
        Tree corpora, llava/sharegpt: also write the ``alignment`` captions
        (``<name>_captions_<split>.json``).
    name : str, optional
        File prefix (default ``radvqa_<recipe name>``).
    log : callable, optional
        Progress messages (default: silent).

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        Unknown format, box style or split; a corpus that is not one or lacks a
        column; vlmevalkit on a volume corpus; a non-empty output folder.
    """
    log = log or (lambda msg: None)
    if fmt not in FORMATS:
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    style = _style(boxes or DEFAULT_BOXES[fmt])
    corpus = _Corpus(corpus_dir)
    prefix = safe_name(name) if name else corpus_name(corpus.manifest)
    if fmt == "vlmevalkit" and corpus.kind == "volumes":
        raise ExportError(f"{corpus_dir}: vlmevalkit needs 2D images; this is a volumes (3D) corpus — "
                          f"export it with --format llava or sharegpt (volumes as .npy)")
    if captions and (fmt == "vlmevalkit" or corpus.kind != "tree"):
        raise ExportError(f"captions: only tree corpora have alignment captions, exported with llava or "
                          f"sharegpt (this is a {corpus.kind} corpus, format {fmt})")
    layout = LAYOUTS[corpus.kind]
    if fmt == "vlmevalkit" and corpus.kind == "tree" and corpus.splits(BENCHMARK.rows):
        layout = BENCHMARK  # the stratified test set; without one, instruct's test split
    available = corpus.splits(layout.rows)
    if not available:
        raise ExportError(f"{corpus_dir}/{MANIFEST}: files: no {layout.rows}/ shards to export")
    wanted = list(dict.fromkeys(splits)) if splits else (["test"] if fmt == "vlmevalkit" else available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ExportError(f"splits: {', '.join(unknown)} not in {layout.rows}/ (available: "
                          f"{', '.join(available)})")
    _prepare_output(output_dir)
    result = ExportResult(fmt, corpus.kind, output_dir, None if corpus.kind == "volumes" else style.name)
    if fmt == "vlmevalkit":
        _export_tsv(corpus, layout, wanted, output_dir, prefix, style, result, log)
    else:
        _export_json(corpus, layout, wanted, output_dir, prefix, fmt, style, captions, result, log)
    return result


def _prepare_output(out: str) -> None:
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ExportError(f"output: {out} is a file, expected a folder")
        if os.listdir(out):
            raise ExportError(f"output: {out} is not empty; export into a new folder")
    os.makedirs(out, exist_ok=True)


ROW_COLUMNS = ("qa_id", "question", "question_type", "answer", "task", "split")


def _read_rows(corpus: _Corpus, layout: Layout, rel: str) -> list[dict]:
    optional = ("answer_text", "answer_box", "question_box", "metadata")
    rows = corpus.read(rel, (*ROW_COLUMNS, layout.key, layout.options), optional)
    out = [normalise_row(r, layout) for r in rows]
    out.sort(key=lambda r: r["id"])
    return out


def _paired(rel: str, config: str) -> str:
    return f"{config}/{rel.split('/', 1)[1]}"


def _export_json(corpus, layout, splits, out, prefix, fmt, style, captions, result, log) -> None:
    make = llava_record if fmt == "llava" else sharegpt_record
    os.makedirs(os.path.join(out, layout.media_dir), exist_ok=True)
    info: dict[str, dict] = {}
    jobs = [(f"{prefix}_{split}", split, False) for split in splits]
    if captions:
        jobs += [(f"{prefix}_captions_{split}", split, True) for split in splits
                 if corpus.shards(layout.media, split)]
    for stem, split, is_caption in jobs:
        writer = _JsonList(os.path.join(out, f"{stem}.json"))
        try:
            shards = corpus.shards(layout.media if is_caption else layout.rows, split)
            for rel in shards:
                if is_caption:
                    n = _caption_unit(corpus, layout, rel, out, fmt, writer, result)
                else:
                    n = _json_unit(corpus, layout, rel, out, make, style, writer, result)
                log(f"export: {rel}: {n} rows")
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        result.files[f"{stem}.json"] = writer.rows
        if fmt == "sharegpt":
            info[stem] = dataset_info_entry(f"{stem}.json")
    if fmt == "sharegpt":
        path = os.path.join(out, "dataset_info.json")
        with open(f"{path}.tmp-export", "w", encoding="utf-8") as f:
            f.write(json.dumps(info, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
        os.replace(f"{path}.tmp-export", path)


def _unit_media(corpus, layout, rel, rows, out, result):
    """Write the media of ``rows`` (one unit); returns id -> (relative path, size, metadata)."""
    wanted = {r["media_id"] for r in rows}
    found = {}
    for media_id, data, meta in corpus.media(layout, _paired(rel, layout.media), wanted, rel):
        where = f"{layout.media}/: {layout.key} {media_id}"
        media_rel, written = write_media(out, layout.media_dir, media_id, data, where)
        result.media += written
        found[media_id] = (media_rel, _media_size(layout, data, meta, where), meta)
    return found


def _json_unit(corpus, layout, rel, out, make, style, writer, result) -> int:
    rows = _read_rows(corpus, layout, rel)
    media = _unit_media(corpus, layout, rel, rows, out, result)
    for row in rows:
        media_rel, size, _ = media[row["media_id"]]
        writer.add(make(row, media_rel, size, style, where=f"{rel}: qa_id {row['id']}"))
    return len(rows)


def _caption_unit(corpus, layout, rel, out, fmt, writer, result) -> int:
    rows = corpus.read(rel, (layout.key, "conversations", "metadata"))
    caps = sorted(({"id": r["metadata"]["question_id"], "media_id": r[layout.key],
                    "conversations": r["conversations"]} for r in rows), key=lambda c: c["id"])
    media = _unit_media(corpus, layout, rel, caps, out, result)
    for cap in caps:
        media_rel, size, _ = media[cap["media_id"]]
        writer.add(caption_record(fmt, cap, media_rel, size))
    return len(caps)


def _export_tsv(corpus, layout, splits, out, prefix, style, result, log) -> None:
    shards = [rel for split in splits for rel in corpus.shards(layout.rows, split)]
    letters = TSV_MCQ_MIN_LETTERS
    for rel in shards:  # a pass over the options column only: the MCQ file's letter columns
        for r in corpus.read(rel, (layout.options, "question_type")):
            if r["question_type"] == "multiple_choice":
                letters = max(letters, len(r[layout.options] or ()))
    columns = dict(TSV_COLUMNS)
    columns["MCQ"] = ["index", "image", "question", *LETTERS[:letters], *TSV_COLUMNS["MCQ"][7:]]
    writers = {k: _Tsv(os.path.join(out, f"{prefix}_{k}.tsv"), cols) for k, cols in columns.items()}
    try:
        for rel in shards:
            rows = _read_rows(corpus, layout, rel)
            wanted = {r["media_id"] for r in rows}
            unit = {}
            for media_id, data, meta in corpus.media(layout, _paired(rel, layout.media), wanted, rel):
                where = f"{layout.media}/: {layout.key} {media_id}"
                unit[media_id] = (data, _media_size(layout, data, meta, where), meta.get("plane"))
            for row in rows:
                data, size, plane = unit[row["media_id"]]
                if plane and not row["l2"]:
                    row["l2"] = plane
                tsv = writers[tsv_kind(row["question_type"])]
                index = tsv.rows
                first = tsv.first_index.get(row["media_id"])
                if first is None:
                    tsv.first_index[row["media_id"]] = index
                    image = base64.b64encode(data).decode("ascii")
                else:
                    image = str(first)
                tsv.add(tsv_cells(row, index, image, size, style, letters,
                                  where=f"{rel}: qa_id {row['id']}"))
            result.media += len(unit)
            log(f"export: {rel}: {len(rows)} rows")
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for kind, w in writers.items():
        if w.rows:
            w.commit()
            result.files[f"{prefix}_{kind}.tsv"] = w.rows
        else:
            w.abort()
