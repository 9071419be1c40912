"""Our export files read by their consumers' rules (no corpus build: seconds).

Table cells pandas keeps, Qwen2.5-VL's smart_resize frame, LLaVA-1.5's padded
square, VLMEvalKit's scoring of MCQ / Y/N / VQA rows.  The consumers' rules are
restated in ``tests/consumer_rules.py``; the exported corpora are checked against
them in ``tests/test_exports.py``.
"""

from __future__ import annotations

import ast
import base64
import io

import numpy as np
import pandas as pd
import pytest
from pandas._libs.parsers import STR_NA_VALUES
from PIL import Image

from pipeline.exports.base import ExportError
from pipeline.exports.boxes import BOX_STYLES, convert_box, smart_resize, with_pixels
from pipeline.exports.cells import NA_TOKENS, table_text
from pipeline.exports.vlmevalkit import TSV_COLUMNS, VQA_REFERENCES, Tsv, tsv_cells, tsv_kind
from tests.consumer_rules import (
    llava_expand2square,
    vlmeval_can_infer,
    vlmeval_choices,
    vlmeval_dataset,
    vlmeval_load_tsv,
    vlmeval_mcq_accuracy,
    vlmeval_vqa_score,
    vlmeval_yorn_rating,
)

# --------------------------------------------------------------------------- table cells


def test_na_tokens_are_pandas_defaults():
    assert NA_TOKENS == set(STR_NA_VALUES)


def test_no_letter_case_is_lost_on_matching():
    for token in NA_TOKENS - {""}:
        text = table_text(token)
        assert text not in NA_TOKENS and text.lower() == token.lower()
    assert table_text(None) == table_text("") == ""
    assert table_text("fluid") == "fluid" and table_text("None seen") == "None seen"


def _png(w: int = 8, h: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, format="PNG")
    return buf.getvalue()


#: Answers, options and categories spelled like pandas' NA values, and ordinary ones.
AWKWARD = sorted(NA_TOKENS - {""}) + ["fluid", "None seen", "it's 'quoted'", 'say "NA"', "a\ttab"]


def _rows():
    rows = []
    for n, text in enumerate(AWKWARD):
        common = {"media_id": f"m{n % 3}", "answer_box": None, "question_box": None, "split": "test",
                  "task": text, "l2": text if n % 2 else ""}
        rows.append({**common, "id": f"mc{n}", "question": text, "question_type": "multiple_choice",
                     "options": [text, "other", "third"], "answer": "A", "answer_text": text})
        rows.append({**common, "id": f"yn{n}", "question": f"Is it {text}?", "question_type": "closed",
                     "options": [], "answer": "yes" if n % 2 else "no", "answer_text": None})
        rows.append({**common, "id": f"op{n}", "question": f"What is {text}?", "question_type": "open",
                     "options": [], "answer": text, "answer_text": text})
    return rows


def _write(tmp_path, rows):
    writers = {k: Tsv(str(tmp_path / f"t_{k}.tsv"), cols) for k, cols in TSV_COLUMNS.items()}
    image = base64.b64encode(_png()).decode("ascii")
    for row in rows:
        tsv = writers[tsv_kind(row["question_type"])]
        first = tsv.first_index.setdefault(row["media_id"], tsv.rows)
        tsv.add(tsv_cells(row, tsv.rows, image if first == tsv.rows else str(first), (8, 6), "pixel"))
    for w in writers.values():
        w.commit()
    return {k: tmp_path / f"t_{k}.tsv" for k in writers}


def test_pandas_reads_every_cell_back_as_meant(tmp_path):
    rows = _rows()
    files = _write(tmp_path, rows)
    by_id = {r["id"]: r for r in rows}
    for kind, path in files.items():
        data = vlmeval_load_tsv(path)
        assert len(data) == len(AWKWARD)
        for _, line in data.iterrows():
            row = by_id[line["qa_id"]]
            meant = {"question": row["question"], "category": row["task"], "l2-category": row["l2"] or "unspecified",
                     "split": "test"}
            if kind == "MCQ":
                meant.update(zip("ABC", row["options"]))
                assert pd.isna(line["D"])  # an absent option: NaN, which VLMEvalKit's build_choices skips
            for col, text in meant.items():
                cell = line[col]
                assert isinstance(cell, str), (kind, col, text, cell)
                assert cell == table_text(text) and cell.lower() == text.lower()
            if kind == "VQA":  # the references: a list of the answer text, even "None" or "nan"
                assert ast.literal_eval(line["answer"]) == [row["answer"]] * VQA_REFERENCES


def test_vlmevalkit_scores_awkward_answers(tmp_path):
    files = _write(tmp_path, _rows())
    mcq = vlmeval_dataset(files["MCQ"])
    assert all(len(vlmeval_choices(line)) == 3 for _, line in mcq.iterrows())
    assert vlmeval_mcq_accuracy(mcq, dict(zip(mcq["index"], mcq["answer"]))) == 100.0
    # a prediction giving the option's text, not its letter, is matched by text (case-blind)
    by_text = {i: a for i, a in zip(mcq["index"], mcq["A"])}
    assert vlmeval_mcq_accuracy(mcq, by_text) == 100.0
    yn = vlmeval_dataset(files["YN"])
    assert vlmeval_yorn_rating(yn, dict(zip(yn["index"], yn["answer"])))["Overall"] == 100.0
    vqa = vlmeval_dataset(files["VQA"])
    for _, line in vqa.iterrows():
        meant = ast.literal_eval(line["answer"])[0]
        assert vlmeval_vqa_score(line["answer"], meant) == 1.0


def test_vqa_box_answers_score_and_do_not_crash():
    """A bare box answer is ``eval``-ed into ints (their ``process_answer`` then fails on
    ``int.replace``), and a single reference scores 0 even when right: both measured here."""
    box = "[48, 68, 58, 78]"
    with pytest.raises(AttributeError):
        vlmeval_vqa_score(box, box)
    assert vlmeval_vqa_score("['fluid']", "fluid") == 0.0
    ours = repr([box] * VQA_REFERENCES)
    assert vlmeval_vqa_score(ours, box) == 1.0
    assert vlmeval_vqa_score(ours, "[48, 68, 58, 79]") == 0.0


def test_can_infer_rules():
    choices = {"A": "left", "B": "right", "C": "None"}
    assert vlmeval_can_infer("B", choices) == "B"
    assert vlmeval_can_infer("The answer is (C).", choices) == "C"
    assert vlmeval_can_infer("none", choices) == "C"
    assert vlmeval_can_infer("I cannot tell", choices) is False


# --------------------------------------------------------------------------- box frames

#: ``smart_resize(height, width, 28)`` of qwen-vl-utils 0.0.14 (``vision_process.py``), run on
#: these sizes (its functions executed alone: the module imports torch) -> (height, width).
QWEN_VL_UTILS = {
    (54, 102): (56, 112), (102, 54): (112, 56), (512, 512): (504, 504), (1, 1): (56, 56),
    (10, 10): (56, 56), (20, 400): (28, 392), (333, 217): (336, 224), (4000, 3000): (4004, 2996),
    (5000, 5000): (3556, 3556), (640, 480): (644, 476), (37, 201): (28, 196), (1000, 10): (1008, 28),
    (56, 56): (56, 56), (3, 600): (28, 588),
}


@pytest.mark.parametrize("size", sorted(QWEN_VL_UTILS))
def test_smart_resize_matches_qwen_vl_utils(size):
    assert smart_resize(*size) == QWEN_VL_UTILS[size]


def test_qwen_pixels_are_options():
    style = with_pixels(BOX_STYLES["qwen2.5-vl"], 256 * 28 * 28, 256 * 28 * 28)
    assert smart_resize(512, 512, 28, 256 * 28 * 28, 256 * 28 * 28) == (448, 448)  # qwen-vl-utils: (448, 448)
    assert convert_box([0, 0, 512, 512], 512, 512, style) == [0, 0, 448, 448]
    assert convert_box([0, 0, 512, 512], 512, 512, "qwen2.5-vl") == [0, 0, 504, 504]
    with pytest.raises(ExportError, match="boxes llava do not use it"):
        with_pixels(BOX_STYLES["llava"], 100, None)
    with pytest.raises(ExportError, match="expected 0 < min_pixels <= max_pixels"):
        with_pixels(BOX_STYLES["qwen2.5-vl"], 5000, 4000)
    with pytest.raises(ExportError, match="aspect ratio above 200"):
        convert_box([0, 0, 1, 1], 1, 300, "qwen2.5-vl")


@pytest.mark.parametrize("size", [(102, 54), (54, 102), (37, 200), (512, 384), (3, 5), (64, 64)])
def test_llava_boxes_are_fractions_of_the_padded_square(size):
    """Draw the box, pad the image as LLaVA does, find the box again: our fractions, to 2 decimals."""
    w, h = size
    rng = np.random.default_rng(w * 1000 + h)
    for _ in range(20):
        x0, x1 = sorted(rng.choice(w + 1, 2, replace=False))
        y0, y1 = sorted(rng.choice(h + 1, 2, replace=False))
        image = Image.new("L", (w, h), 0)
        image.paste(255, (int(x0), int(y0), int(x1), int(y1)))
        padded = llava_expand2square(image)
        side = padded.size[0]
        found = [v / side for v in padded.getbbox()]  # (left, top, right, bottom), right/bottom exclusive
        ours = convert_box([x0, y0, x1, y1], w, h, "llava")
        assert all(0.0 <= v <= 1.0 for v in ours)
        assert ours == [round(v, 2) for v in found]
