"""``vlmevalkit``: the test set as VLMEvalKit TSVs — multiple choice, yes/no and open questions.

Tab-separated files in VLMEvalKit's layout for the test set (the
``benchmark`` config of a tree corpus (``instruct``'s test split when it has
none), the ``test`` split of a slices corpus): ``<name>_MCQ.tsv`` (``index,
image, question, A, B, C, D, answer, category, l2-category, split, qa_id``;
``answer`` a letter), ``<name>_YN.tsv`` (``answer`` ``Yes``/``No``) and
``<name>_VQA.tsv`` for open questions.  ``image`` is the stored PNG in base64 (a visual-prompt
question's prompted image, option ``prompt_image``,
:func:`pipeline.exports.records.prompt_column`); a later row of the same image holds the
``index`` of the first one instead
(VLMEvalKit's ``ImageBaseDataset`` resolves any ``image`` cell of at most 64
characters as the index of another row).  ``category`` is the task;
``l2-category`` the plane (slices) or the anatomical region (tree), never empty
(``report_acc`` sorts the categories; a NaN among strings cannot be sorted).
A file with no rows is not written.

How VLMEvalKit scores each file (read in open-compass/VLMEvalKit; the README's "Use
with VLMEvalKit" gives the commands):

- ``_MCQ.tsv``: a plain ``--data <name>_MCQ`` builds it as ``CustomMCQDataset`` (columns
  ``A``/``B``); exact matching (``can_infer``) compares the extracted letter with ``answer``.
- ``_YN.tsv``: a plain ``--data`` would build ``CustomVQADataset``, whose ``evaluate`` raises
  ``NotImplementedError``; it scores as ``ImageYORNDataset`` (``--data-config`` /
  ``--config`` with ``"class": "ImageYORNDataset"``): ``YOrN_Extraction`` of the prediction
  equals ``answer`` (``Yes``/``No``).
- ``_VQA.tsv``: scores as ``ImageVQADataset`` (same route).  Its default VQA score gives an
  answer ``min(1, matches among the *other* references / 3)``, and it ``eval``s an answer
  cell that parses as a list.  So ``answer`` is a Python list literal of
  :data:`VQA_REFERENCES` copies of the answer text (``['fluid', 'fluid', 'fluid',
  'fluid']``): a box answer is a string inside it (never ``eval``-ed into numbers), and a
  prediction equal to the answer (after VLMEvalKit's punctuation / article normalisation)
  scores 1.

Text cells go through :func:`pipeline.exports.cells.table_text`: nothing pandas'
default reader would turn into NaN is written bare.
"""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Mapping

from pipeline.exports.base import ExportError
from pipeline.exports.boxes import BoxStyle
from pipeline.exports.cells import table_text
from pipeline.exports.format import ExportFormat, ExportJob
from pipeline.exports.records import (
    LETTERS,
    PROMPT_OPTION,
    media_key,
    media_size,
    paired_shard,
    prompted_columns,
    read_media,
    read_rows,
    render_row,
)
from pipeline.exports.selection import BENCHMARK, LAYOUTS, Layout
from pipeline.io.atomic import AtomicFile
from pipeline.io.corpus import Corpus

TSV_MCQ_MIN_LETTERS = 4
#: Copies of the answer in a VQA ``answer`` list: VLMEvalKit's VQA score needs 3 other
#: references equal to the prediction for full credit (``vqa_eval.py: process_line``).
VQA_REFERENCES = 4
#: ``l2-category`` of a row with no plane or region.
L2_NONE = "unspecified"
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
    cells = {"index": index, "image": image, "question": table_text(question)}
    kind = tsv_kind(row["question_type"])
    if kind == "MCQ":
        options = list(row["options"] or ())
        if len(options) > letters:
            raise ExportError(f"{where}: options: {len(options)} options, the MCQ file has {letters} columns")
        for n in range(letters):  # an absent option stays empty: NaN, which VLMEvalKit skips
            cells[LETTERS[n]] = table_text(options[n]) if n < len(options) else ""
        cells["answer"] = row["answer"]
    elif kind == "YN":
        yn = {"yes": "Yes", "no": "No"}.get(str(row["answer"]).strip().lower())
        if yn is None:
            raise ExportError(f"{where}: answer: {row['answer']!r} is not yes/no")
        cells["answer"] = yn
    else:
        cells["answer"] = repr([answer] * VQA_REFERENCES)
    cells.update({"category": table_text(row["task"]), "l2-category": table_text(row.get("l2") or L2_NONE),
                  "split": table_text(row["split"]), "qa_id": table_text(row["id"])})
    return cells



class Tsv(AtomicFile):
    """A VLMEvalKit TSV (tab-separated, ``"``-quoted where needed, as pandas reads it)."""

    def __init__(self, path: str, columns: list[str]):
        super().__init__(path)
        self.columns = columns
        self.writer = csv.writer(self.f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        self.writer.writerow(columns)
        self.rows = 0
        self.first_index: dict[tuple, int] = {}  # media key -> index of the row carrying its bytes

    def add(self, cells: Mapping) -> None:
        """Append one row (column -> value; a missing column is empty)."""
        self.writer.writerow([cells.get(c, "") for c in self.columns])
        self.rows += 1


class VlmEvalKit(ExportFormat):
    """VLMEvalKit MCQ / Y/N / VQA TSVs of the test set."""

    name = title = "vlmevalkit"
    help = "MCQ / Y/N / VQA TSVs of the test set (2D corpora only)"
    default_boxes = "pixel"
    kinds = ("slices", "tree")
    options = {PROMPT_OPTION: "auto"}

    def kind_error(self, corpus_dir: str, kind: str) -> str:
        return (f"{corpus_dir}: vlmevalkit needs 2D images; this is a volumes (3D) corpus — "
                f"export it with --format llava (volumes as .npy)")

    def layout(self, corpus: Corpus, kind: str) -> Layout:
        """A tree corpus's stratified ``benchmark`` when it has one, else the kind's QA config."""
        if kind == "tree" and corpus.splits(BENCHMARK.rows):
            return BENCHMARK
        return LAYOUTS[kind]

    def default_splits(self, available: list[str]) -> list[str]:
        return ["test"]

    def export(self, job: ExportJob) -> None:
        corpus, layout, out, prefix = job.corpus, job.layout, job.output, job.prefix
        shards = [rel for split in job.splits for rel in corpus.shards(layout.rows, split)]
        letters = TSV_MCQ_MIN_LETTERS
        for rel in shards:  # a pass over the options column only: the MCQ file's letter columns
            for r in corpus.read_rows(rel, (layout.options, "question_type")):
                if r["question_type"] == "multiple_choice":
                    letters = max(letters, len(r[layout.options] or ()))
        columns = dict(TSV_COLUMNS)
        columns["MCQ"] = ["index", "image", "question", *LETTERS[:letters], *TSV_COLUMNS["MCQ"][7:]]
        writers = {k: Tsv(os.path.join(out, f"{prefix}_{k}.tsv"), cols) for k, cols in columns.items()}
        try:
            for rel in shards:
                n = self._unit(job, rel, writers, letters)
                job.log(f"export: {rel}: {n} rows")
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        for kind, w in writers.items():
            if w.rows:
                w.commit()
                job.result.files[f"{prefix}_{kind}.tsv"] = w.rows
            else:
                w.abort()

    def _unit(self, job: ExportJob, rel: str, writers: dict[str, Tsv], letters: int) -> int:
        """Rows of QA shard ``rel`` into their TSVs; an image's bytes go in its first row only."""
        corpus, layout = job.corpus, job.layout
        rows = read_rows(corpus, layout, rel, job.options.get(PROMPT_OPTION, "auto"))
        keys = {media_key(r) for r in rows}
        prompts = prompted_columns(keys)
        unit = {}
        for media_id, data, meta in read_media(corpus, layout, paired_shard(rel, layout.media),
                                               {k[0] for k in keys}, rel, prompts):
            where = f"{layout.media}/: {layout.key} {media_id}"
            size = media_size(layout, data, meta, where)
            for column in (None, *sorted(prompts.get(media_id, ()))):
                if (media_id, column) in keys:
                    unit[(media_id, column)] = (data if column is None else meta[column], size,
                                                meta.get("plane"))
        for row in rows:
            key = media_key(row)
            data, size, plane = unit[key]
            if plane and not row["l2"]:
                row["l2"] = plane
            tsv = writers[tsv_kind(row["question_type"])]
            index = tsv.rows
            first = tsv.first_index.get(key)
            if first is None:
                tsv.first_index[key] = index
                image = base64.b64encode(data).decode("ascii")
            else:
                image = str(first)
            tsv.add(tsv_cells(row, index, image, size, job.style, letters, where=f"{rel}: qa_id {row['id']}"))
        job.result.media += len(unit)
        return len(rows)


FORMAT = VlmEvalKit()
