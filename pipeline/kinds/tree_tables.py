"""The ``tree`` kind's tables, built column by column: ``alignment`` (image + caption
conversation), ``instruct`` (the other questions as conversations) and ``benchmark``.

No per-row dicts on the 7.5M-row path: each row's values are one tuple, the tuples are
transposed into columns and the table is assembled from Arrow arrays once per unit (the
benchmark's few rows go through :class:`Columns`).  The
conversation turns are LLaVA-style: the user turn is ``<image>`` and the question (with
``A. …`` option lines for multiple choice), the assistant turn the answer.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from pipeline.core import keys
from pipeline.io import shards
from pipeline.qa.options import LETTERS
from pipeline.qa.questions import generate_questions
from pipeline.schema import kernels, pyarrays
from pipeline.schema.arrow import (
    ALIGNMENT_SCHEMA,
    BENCHMARK_SCHEMA,
    IMAGE_STRUCT,
    INSTRUCT_SCHEMA,
    METADATA,
    TURN,
)

CAPTION_TASK = "caption"
#: Columns of up to this many values are built by :func:`pipeline.schema.pyarrays.array`, which
#: never imports pandas (pa.array's probe does, 0.13-0.19 s of CPU once a process); longer
#: ones by ``pa.array``, 50 ns a string faster (a full build's units, 90K rows of 10K images)
FEW_VALUES = 50_000


def _arr(values, type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)`` (the same array either way: tests/test_pyarrays.py)."""
    values = values if isinstance(values, list) else list(values)
    return pyarrays.array(values, type) if len(values) <= FEW_VALUES else pa.array(values, type)


def human_turn(question: str, question_type: str, options) -> str:
    """The user turn: ``<image>`` + question, multiple-choice options as ``A. …`` lines."""
    text = "<image>\n" + question
    if question_type == "multiple_choice":
        text += "\n" + "\n".join(f"{LETTERS[n]}. {o}" for n, o in enumerate(options))
    return text


def gpt_turn(answer: str, answer_text: str, question_type: str) -> str:
    """The assistant turn: ``A. text`` for multiple choice, the answer otherwise."""
    if question_type == "multiple_choice":
        return f"{answer}. {answer_text}"
    return answer


class Columns:
    """Column buffers for one table."""

    def __init__(self):
        self.cols: dict[str, list] = defaultdict(list)

    def add(self, **values):
        cols = self.cols
        for k, v in values.items():
            cols[k].append(v)

    def __len__(self):
        return len(next(iter(self.cols.values()), []))


def _conversations(humans: list[str], gpts: list[str]) -> pa.Array:
    n = len(humans)
    values = [None] * (2 * n)
    values[0::2], values[1::2] = humans, gpts
    turns = pa.StructArray.from_arrays(
        [_arr(["human", "gpt"] * n, pa.string()), _arr(values, pa.string())], fields=list(TURN)
    )
    return pa.ListArray.from_arrays(_arr(range(0, 2 * n + 1, 2), pa.int32()), turns)


def _metadata(c: dict, made: Mapping[str, pa.Array] | None = None) -> pa.Array:
    """The ``metadata`` structs of columns ``c``; ``made``: arrays already built for some of
    them (the same values in another column of the table: the task, the answer text, the id)."""
    made = made or {}

    def col(name, type=None):
        return made[name] if name in made else _arr(c[name], type or pa.string())
    return pa.StructArray.from_arrays(
        [col("m_content_type"), col("m_correct_text"), col("m_is_abnormal", pa.bool_()),
         col("m_location"), col("m_modality"), col("m_pathology"), col("m_question_id")],
        fields=list(METADATA),
    )


def _meta_values(row, record, pools) -> dict:
    m, r, label = record["modality"], record["region"], record["label"]
    return {
        "m_content_type": row["task"], "m_correct_text": row["answer_text"],
        "m_is_abnormal": pools.is_abnormal(label),
        "m_location": pools.region_display(m, r), "m_modality": pools.modality_metadata(m),
        "m_pathology": pools.display(label), "m_question_id": row["qa_id"],
    }


def _choices(row):
    return row["options"] if row["question_type"] == "multiple_choice" else None


def image_record(key: str, split: str, modality: str, region: str, label: str) -> dict:
    """A tree image's record (:meth:`pipeline.kinds.tree.TreeKind.records`; the benchmark's
    are made by the same): the image is its own case."""
    return {"image_id": key, "case_key": key, "split": split, "modality": modality,
            "region": region, "label": label}


#: This process's buffer for a unit's images (:func:`read_buffer`), reused from unit to unit.
_READ: dict = {"base": None}


def read_buffer(n: int) -> np.ndarray:
    """``n`` bytes for a unit's images laid end to end (``TreeKind.extract_cases``, whose
    ``alignment`` image column they become): a view of this process's buffer, reused from
    unit to unit while nothing of the last unit still refers to it (else a new array, used
    once).  A new ~380 MB array for each 8K-image unit of 224 px cost 0.4-0.5 s of system
    CPU in page faults (the kernel zeroing its pages) every unit, measured: ~5 % of a unit."""
    base = _READ["base"]
    if base is not None and sys.getrefcount(base) > 3:  # (the dict, here, the call's own)
        return np.empty(n, np.uint8)  # a view of it is alive: the last unit's table in use
    if base is None or len(base) < n:
        base = _READ["base"] = None  # (the old one freed before the new one is made)
        base = _READ["base"] = np.empty(int(n * 1.25) + (1 << 20), np.uint8)  # headroom:
    return base[:n]  # units differ in size


def release_read_buffer() -> None:
    """Let this process's image buffer go (its units done: the benchmark step's memory is
    then not on top of it); freed once nothing refers to it."""
    _READ["base"] = None


def image_array(data: list, paths: list[str], joined=None) -> pa.StructArray:
    """Hugging Face ``Image`` structs (``{bytes, path}``), built from their two columns.

    The bytes are joined once and wrapped as the binary column's data buffer (offsets from
    their lengths): an Arrow builder would grow its buffer by doubling, copying a unit's
    ~150 MB of PNGs several times over.  ``joined``: the bytes already laid end to end in
    one buffer (``data`` then only gives their lengths), used as it is."""
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:  # over 2 GiB: pa.binary's 32-bit offsets cannot
        binary = pa.array([bytes(d) for d in data], pa.binary())  # hold it in one chunk; let Arrow say so
    else:
        binary = pa.Array.from_buffers(pa.binary(), len(data), [
            None, pa.py_buffer(offsets.astype(np.int32)),
            pa.py_buffer(b"".join(data) if joined is None else joined)])
    return pa.StructArray.from_arrays([binary, _arr(paths, pa.string())],
                                      fields=list(IMAGE_STRUCT))


def render_tree_images(records: list[dict], images: pa.StructArray, ctx):
    """Alignment and instruct tables for ``records`` (sorted by key) and their images (the
    payload's ``image`` structs, in the same order: passed through to ``alignment``), the
    task counts and each instruct row's family."""
    pools = ctx.pools
    align: list[tuple] = []
    inst: list[tuple] = []
    tasks: Counter = Counter()
    captioned: list[int] = []
    families: list[str] = []  # each instruct row's (pipeline.kinds.tree_blocks)
    per_image: list[tuple] = []  # the instruct columns that are the image's, by its index
    for i, record in enumerate(records):
        image_id, split, label, m = (record["image_id"], record["split"], record["label"],
                                     record["modality"])
        # the metadata that is the image's, not the question's: once per image
        image_meta = (pools.is_abnormal(label), pools.region_display(m, record["region"]),
                      pools.modality_metadata(m), pools.display(label))
        per_image.append((image_id, split, *image_meta))
        for row in generate_questions(record, ctx.families, pools, seed=ctx.seed,
                                      settings=ctx.qa_settings):
            task, qtype, answer_text = row["task"], row["question_type"], row["answer_text"]
            tasks[task] += 1
            human = human_turn(row["question"], qtype, row["options"])
            gpt = gpt_turn(row["answer"], answer_text, qtype)
            if task == CAPTION_TASK:
                captioned.append(i)
                align.append((image_id, human, gpt, m, record["region"], label, split,
                              task, answer_text, *image_meta, row["qa_id"]))
            else:
                families.append(row["family"])
                inst.append((row["qa_id"], human, gpt, row["question"], _choices(row),
                             row["answer"], answer_text, qtype, task, row["template_id"], i))
    if captioned != list(range(len(records))):
        images = kernels.take(images, _arr(captioned, pa.int64()))
    return (_alignment_table(_transposed(align, _ALIGN_COLUMNS), images),
            _instruct_table(_transposed(inst, _INSTRUCT_COLUMNS),
                            _transposed(per_image, _IMAGE_COLUMNS)), tasks, families)


_META_COLUMNS = ("m_content_type", "m_correct_text", "m_is_abnormal", "m_location", "m_modality",
                 "m_pathology", "m_question_id")
_ALIGN_COLUMNS = ("image_id", "human", "gpt", "modality", "region", "label", "split",
                  *_META_COLUMNS)
#: an ``instruct`` row's own values and its image's index (``image``) in the records; the
#: values that are its image's (:data:`_IMAGE_COLUMNS`, made once an image) are taken by it
_INSTRUCT_COLUMNS = ("qa_id", "human", "gpt", "question", "choices", "answer", "answer_text",
                     "question_type", "task", "template_id", "image")
_IMAGE_COLUMNS = ("image_id", "split", "m_is_abnormal", "m_location", "m_modality",
                  "m_pathology")


def _empty(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()``, which imports pandas (see :data:`FEW_VALUES`)."""
    return pa.Table.from_arrays([pyarrays.array([], f.type) for f in schema], schema=schema)


def _transposed(rows: list[tuple], names: tuple[str, ...]) -> dict[str, list] | None:
    """Row tuples as columns (name -> values); ``None`` for no rows."""
    return dict(zip(names, (list(c) for c in zip(*rows)))) if rows else None


def _alignment_table(cols: dict | None, images: pa.StructArray) -> pa.Table:
    if cols is None:
        return _empty(ALIGNMENT_SCHEMA)
    s = pa.string()
    return pa.Table.from_arrays(
        [_arr(cols["image_id"], s), images,
         _conversations(cols["human"], cols["gpt"]), _metadata(cols),
         _arr(cols["modality"], s), _arr(cols["region"], s), _arr(cols["label"], s),
         _arr(cols["split"], s)], schema=ALIGNMENT_SCHEMA)


def _instruct_table(cols: dict | None, per_image: dict | None) -> pa.Table:
    """``cols``: the rows' own values (:data:`_INSTRUCT_COLUMNS`); ``per_image``: their
    images' (:data:`_IMAGE_COLUMNS`), each image's once, repeated for its rows by Arrow."""
    if cols is None:
        return _empty(INSTRUCT_SCHEMA)
    s = pa.string()
    at = _arr(cols["image"], pa.int64())

    def of_image(name: str, type=None) -> pa.Array:
        return kernels.take(_arr(per_image[name], type or s), at)
    # the metadata's task, answer text and question id are the row's own: built once
    qa_id, answer_text, task = (_arr(cols[c], s) for c in ("qa_id", "answer_text", "task"))
    return pa.Table.from_arrays(
        [qa_id, of_image("image_id"),
         _conversations(cols["human"], cols["gpt"]), _arr(cols["question"], s),
         _arr(cols["choices"], pa.list_(s)), _arr(cols["answer"], s),
         answer_text, _arr(cols["question_type"], s),
         task, _arr(cols["template_id"], s),
         _metadata(cols, {"m_content_type": task, "m_correct_text": answer_text,
                          "m_question_id": qa_id, "m_is_abnormal": of_image("m_is_abnormal", pa.bool_()),
                          **{c: of_image(c) for c in ("m_location", "m_modality", "m_pathology")}}),
         of_image("split")], schema=INSTRUCT_SCHEMA)


#: The benchmark's question rows without their image (:func:`benchmark_rows`): each row's
#: template family and, as ``order``, its question id in its image's own numbering (a
#: unit's ``qa_id``), by which an image's rows are ordered (:func:`benchmark_table`).
BENCHMARK_ROWS_SCHEMA = pa.schema([f for f in BENCHMARK_SCHEMA if f.name != "image"]
                                  + [pa.field("family", pa.string()), pa.field("order", pa.string())])


def benchmark_rows(records: list[dict], families: Mapping, ctx) -> pa.Table:
    """The ``benchmark`` rows of ``families`` (no captions) for the picked images' ``records``
    (sorted by image id, each with its planned ``assign``), in the benchmark's order (by
    image, then ``order``), without their image (:data:`BENCHMARK_ROWS_SCHEMA`); their
    question ids are their own (``stable_key("benchmark", …)``)."""
    c = Columns()
    for record in records:
        for row in generate_questions(record, families, ctx.pools, seed=ctx.seed,
                                      settings=ctx.qa_settings):
            if row["task"] == CAPTION_TASK:
                continue
            order = row["qa_id"]
            row["qa_id"] = keys.stable_key("benchmark", order)
            c.add(qa_id=row["qa_id"], image_id=record["image_id"],
                  question=row["question"], choices=_choices(row), answer=row["answer"],
                  question_type=row["question_type"], task=row["task"],
                  template_id=row["template_id"], split="test",
                  **_meta_values(row, record, ctx.pools), family=row["family"], order=order)
    cols, s = c.cols, pa.string()
    if not len(c):
        return _empty(BENCHMARK_ROWS_SCHEMA)
    return pa.Table.from_arrays(
        [_arr(cols["qa_id"], s), _arr(cols["image_id"], s),
         _arr(cols["question"], s), _arr(cols["choices"], pa.list_(s)),
         _arr(cols["answer"], s), _arr(cols["question_type"], s),
         _arr(cols["task"], s), _arr(cols["template_id"], s), _metadata(cols),
         _arr(cols["split"], s), _arr(cols["family"], s), _arr(cols["order"], s)],
        schema=BENCHMARK_ROWS_SCHEMA)


def benchmark_table(rows: pa.Table, images: Mapping[str, bytes]) -> tuple[pa.Table, Counter]:
    """The ``benchmark`` table of :func:`benchmark_rows`' ``rows`` (one table, or several
    families' concatenated in any order: ordered here by image, then ``order``) with each row's image
    (``images``: PNG bytes by image id); and the count of rows per question type."""
    if not rows.num_rows:
        return _empty(BENCHMARK_SCHEMA), Counter()
    # the benchmark's order (each key pair is one row's: a stable sort or not, the same)
    rows = kernels.sort_by(rows, [("image_id", "ascending"), ("order", "ascending")]).combine_chunks()
    ids = rows.column("image_id").to_pylist()
    column = question_images([images[k] for k in ids], [f"{k}.png" for k in ids])
    table = pa.Table.from_arrays([column if f.name == "image" else rows.column(f.name)
                                  for f in BENCHMARK_SCHEMA], schema=BENCHMARK_SCHEMA)
    return table, Counter(rows.column("question_type").to_pylist())


def question_images(data: list, paths: list[str]):
    """:func:`image_array` of the benchmark's rows, whose images repeat (each image asked up
    to nine questions, its rows together): each distinct image copied once, and the column a
    chunked array of one-row slices of those (no copy), not the ~9x larger joined column
    (10K tree: 2,770 rows of 320 images, 130 MB joined from 15 MB: 0.05-0.2 s of CPU, most
    of it the kernel's page faults; measured).

    The Parquet bytes are the same (tested): the writer dictionary-encodes the column
    (:data:`pipeline.io.shards.WRITER`), and how the column is chunked changes only how
    often the writer checks its page limits, which these tables never reach — the
    dictionary (the distinct images, 4 bytes more each) stays under its page limit and the
    indices of fewer than :data:`QUESTION_IMAGES_MAX_ROWS` rows under a data page.  Past
    either bound, the joined column, as before.  ``nbytes``, which sizes the row groups,
    is the same either way."""
    first: dict = {}
    rows = [first.setdefault(p, len(first)) for p in paths]
    distinct = [b""] * len(first)
    for d, n in zip(data, rows):
        distinct[n] = d
    if (len(first) == len(paths) or len(paths) >= QUESTION_IMAGES_MAX_ROWS
            or sum(len(d) + 4 for d in distinct) >= shards.WRITER["row_group_bytes"]):
        return image_array(data, paths)
    images = image_array(distinct, list(first))
    return pa.chunked_array([images.slice(n, 1) for n in rows], images.type)


#: Rows of a benchmark table whose image column :func:`question_images` may slice: their
#: dictionary indices (at most 17 bits for 100K images) stay well under a data page (1 MB).
QUESTION_IMAGES_MAX_ROWS = 100_000


class ImagesById(Mapping):
    """``{image id: PNG bytes}`` over a unit's Arrow image column: an image is copied out
    of Arrow only when asked for (the ``ood`` rows ask for a few)."""

    def __init__(self, ids: list[str], images: pa.StructArray):
        self._index = {k: i for i, k in enumerate(ids)}
        self._bytes = images.field("bytes")

    def __getitem__(self, key: str) -> bytes:
        return self._bytes[self._index[key]].as_py()

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)
