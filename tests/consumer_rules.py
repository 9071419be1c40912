"""The parsing and scoring rules of the tools that read our exports, restated for tests.

VLMEvalKit, LLaMA-Factory and LLaVA do not install light (torch, GPU stacks), so
their rules are restated here, each function naming the file and function it
follows (open-compass/VLMEvalKit e8e78f05, hiyouga/LLaMA-Factory ff6d4d12,
haotian-liu/LLaVA).  Only what decides whether our files load and score is
restated; the judge-model paths (an LLM extracting answers) are not.
"""

from __future__ import annotations

import ast
import os
import re
import string
from collections.abc import Mapping

import numpy as np
import pandas as pd
from PIL import Image

# --------------------------------------------------------------------------- VLMEvalKit


def vlmeval_load_tsv(path) -> pd.DataFrame:
    """``vlmeval/smp/file.py: load`` for a ``.tsv``: ``pd.read_csv(f, sep='\\t')``, pandas' defaults."""
    return pd.read_csv(path, sep="\t")


def vlmeval_dataset(path) -> pd.DataFrame:
    """``vlmeval/dataset/image_base.py: ImageBaseDataset.__init__``: rows without an image are
    dropped, ``index`` becomes text, and an ``image`` cell of 1–64 characters is the index
    of the row holding the base64 (which must exist and be longer than 64)."""
    data = vlmeval_load_tsv(path)
    data = data[~pd.isna(data["image"])].copy()
    data["index"] = [str(x) for x in data["index"]]
    cells = {i: ("" if pd.isna(x) else str(x)) for i, x in zip(data["index"], data["image"])}
    for i, cell in list(cells.items()):
        if 0 < len(cell) <= 64:
            assert cell in cells and len(cells[cell]) > 64, f"index {i}: image refers to {cell!r}"
            cells[i] = cells[cell]
    data["image"] = [cells[i] for i in data["index"]]
    return data


def vlmeval_punctuation(text: str) -> str:
    """``vlmeval/smp/misc.py: process_punctuation``.

    Each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it stands next
    to a space anywhere in the text (or the text has a digit-comma-digit), else replaced
    by a space; then every period not between digits is deleted.
    """
    marks = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
             ",", "?", "!"]
    digit_comma = re.search(r"(\d)(,)(\d)", text) is not None
    out = text
    for m in marks:
        out = out.replace(m, "" if (m + " " in text or " " + m in text or digit_comma) else " ")
    return re.sub(r"(?<!\d)\.(?!\d)", "", out)


NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def vlmeval_answer(text: str) -> str:
    """``vlmeval/dataset/utils/vqa_eval.py: process_answer``: newlines and tabs to spaces,
    strip, :func:`vlmeval_punctuation`, then ``_process_digit_article``: lower case, number
    words to digits, articles dropped (its contraction table, which only re-adds
    apostrophes, is left out: it maps prediction and reference alike)."""
    text = vlmeval_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def vlmeval_is_list(cell) -> bool:
    """``vlmeval/smp/misc.py: istype(s, list)``: a list, or text whose ``eval`` is a list.

    ``eval`` is the consumer's; here :func:`ast.literal_eval` (the same for literals)."""
    if isinstance(cell, list):
        return True
    try:
        return isinstance(ast.literal_eval(cell), list)
    except (ValueError, SyntaxError):
        return False


def vlmeval_vqa_score(answer: str, prediction: str) -> float:
    """``vqa_eval.py: process_line`` (method ``vqa_score``, ``ImageVQADataset``'s default for a
    dataset name outside TextVQA/ChartQA/OCRVQA/GQA/DocVQA/InfoVQA) then ``hit_calculate``
    (mean of the matches): each reference scores ``min(1, other references equal to the
    prediction / 3)``."""
    refs = ast.literal_eval(answer) if vlmeval_is_list(answer) else [answer]
    gts = [vlmeval_answer(r) for r in refs]  # a non-str reference raises here, as theirs does
    pred = vlmeval_answer(str(prediction))
    scores = [min(1.0, sum(1 for j, g in enumerate(gts) if j != i and g == pred) / 3)
              for i in range(len(gts))]
    return float(np.mean(scores))


def vlmeval_yorn(prediction: str) -> str:
    """``vlmeval/dataset/utils/yorn.py: YOrN_Extraction``: ``Yes`` if the words (lower case,
    after :func:`vlmeval_punctuation`) hold ``yes`` and not ``no``, ``No`` the other way,
    else ``Unknown``."""
    words = vlmeval_punctuation(prediction.lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"


def vlmeval_yorn_rating(data: pd.DataFrame, predictions: Mapping[str, str]) -> dict[str, float]:
    """``image_yorn.py: ImageYORNDataset.evaluate`` with exact matching, then ``yorn.py:
    default_rating``: score = ``answer == YOrN_Extraction(prediction)``; ``Overall`` and one
    entry per ``category`` and ``l2-category`` (NaN categories skipped), in percent."""
    score = np.array([a == vlmeval_yorn(str(predictions[i])) for i, a in zip(data["index"], data["answer"])])
    out = {"Overall": float(score.mean() * 100)}
    for col in ("category", "l2-category"):
        for c in sorted(c for c in set(data[col]) if not pd.isna(c)):
            out[c] = float(score[(data[col] == c).to_numpy()].mean() * 100)
    return out


def vlmeval_choices(line: Mapping) -> dict[str, str]:
    """``vlmeval/dataset/utils/multiple_choice.py: build_choices``: every capital-letter
    column whose cell is not NaN."""
    return {c: line[c] for c in string.ascii_uppercase if c in line and not pd.isna(line[c])}


def vlmeval_can_infer(prediction: str, choices: Mapping[str, str]) -> str | bool:
    """``vlmeval/utils/matching_util.py: can_infer`` (``can_infer_option``, then ``can_infer_text``).

    Option: ``.()[],:;!*#{}`` become spaces; exactly one choice letter among the words, and
    among the last five words, is the answer; no letter but a ``Z`` (or empty word) gives
    ``Z``; else an "answer is X" phrase.  Text: if the prediction (lower case) is at most
    twice the total choice length and exactly one choice text (lower case) occurs in it.
    """
    words = prediction
    for ch in ".()[],:;!*#{}":
        words = words.replace(ch, " ")
    words = [w.strip() for w in words.split()]
    hits = [c for c in choices if c in words]
    if len(hits) == 1:
        for c in choices:
            if c in words and words.index(c) > len(words) - 5:
                return c
    elif not hits and sum(1 for c in ("Z", "") if c in words) == 1:
        return "Z"
    m = re.search(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", prediction or "")
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    low = prediction.lower()
    if len(low) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    found = [c for c, v in choices.items() if str(v).lower() in low]
    return found[0] if len(found) == 1 else False


def vlmeval_mcq_accuracy(data: pd.DataFrame, predictions: Mapping[str, str]) -> float:
    """``multiple_choice.py: mcq_vanilla_eval`` / ``eval_vanilla`` with exact matching: a hit when
    the letter :func:`vlmeval_can_infer` finds equals ``answer``; ``report_acc``'s Overall, percent."""
    hits = [vlmeval_can_infer(str(predictions[line["index"]]), vlmeval_choices(line)) == line["answer"]
            for _, line in data.iterrows()]
    return float(np.mean(hits) * 100)


# --------------------------------------------------------------------------- LLaMA-Factory


def llamafactory_sharegpt(record: Mapping, entry: Mapping, dataset_dir: str) -> list[dict]:
    """One record through LLaMA-Factory's ShareGPT reading; returns its aligned messages.

    ``src/llamafactory/data/converter.py: SharegptDatasetConverter.__call__``: messages come
    from ``columns.messages``; roles from ``tags`` alternate user (odd turns) / assistant
    (even turns) and their count is even, else the record is dropped as broken;
    ``_find_medias``: each image path is joined to ``media_dir`` (default ``dataset_dir``).
    ``mm_plugin.py: _validate_messages``: as many ``<image>`` in the contents as images;
    ``_regularize_images``: each opens with ``PIL.Image.open``.
    """
    tags, cols = entry["tags"], entry["columns"]
    messages = record[cols["messages"]]
    expected = (tags["user_tag"], tags["assistant_tag"])
    aligned = []
    for n, m in enumerate(messages):
        assert m[tags["role_tag"]] == expected[n % 2], f"invalid role tag in {messages}"
        aligned.append({"role": "user" if n % 2 == 0 else "assistant", "content": m[tags["content_tag"]]})
    assert len(aligned) % 2 == 0, "odd number of messages: broken data"
    images = [os.path.join(dataset_dir, p) for p in record[cols["images"]]]
    assert sum(m["content"].count("<image>") for m in aligned) == len(images), \
        "the number of images does not match the number of <image> tokens"
    for path in images:
        assert os.path.isfile(path), f"{path}: not in media_dir"
        with Image.open(path) as im:
            im.load()
    return aligned


# --------------------------------------------------------------------------- LLaVA


def llava_expand2square(image: Image.Image, fill=0) -> Image.Image:
    """``llava/mm_utils.py: expand2square``: a wider image pasted at ``(0, (w - h) // 2)``, a taller
    one at ``((h - w) // 2, 0)``, on a square of side ``max(w, h)``; a square image as is."""
    w, h = image.size
    if w == h:
        return image
    out = Image.new(image.mode, (max(w, h),) * 2, fill)
    out.paste(image, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out
