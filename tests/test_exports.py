"""``radvqa export``: llava, sharegpt (LLaMA-Factory) and vlmevalkit files from the three
corpus kinds, checked against the source rows; box conventions; VLMEvalKit's read-back;
dead letters never exported; CLI exit codes."""

from __future__ import annotations

import ast
import base64
import collections
import io
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config.resources import resource_dir
from pipeline.exports.base import ExportError
from pipeline.exports.boxes import (
    BOX_LITERAL,
    box_text,
    check_box,
    convert_box,
    convert_question_boxes,
    smart_resize,
)
from pipeline.exports.records import format_gpt, format_human, read_media, render_row
from pipeline.exports.registry import export_corpus
from pipeline.exports.selection import LAYOUTS, detect_kind
from pipeline.exports.sharegpt import dataset_info_entry
from pipeline.exports.vlmevalkit import VQA_REFERENCES
from pipeline.inputs.sample_tree import write_tree
from pipeline.io.corpus import Corpus, list_configs
from pipeline.launch.build import build
from pipeline.qa.label_pools import load_label_pools
from tests.consumer_rules import (
    llamafactory_sharegpt,
    vlmeval_dataset,
    vlmeval_mcq_accuracy,
    vlmeval_vqa_score,
    vlmeval_yorn_rating,
)

IN_MEMORY = ["--direct_running_mode=in_memory"]


# --------------------------------------------------------------------------- corpora


def _recipe_copy(base: Path, name: str, old: str, new: str) -> str:
    text = (resource_dir("recipes") / f"{name}.yaml").read_text()
    assert old in text
    (base / f"{name}.yaml").write_text(text.replace(old, new))
    return str(base / f"{name}.yaml")


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    """The sample recipe on five phantom patients (train, validation and test)."""
    base = tmp_path_factory.mktemp("slices")
    recipe = _recipe_copy(base, "sample", "sample_patients: 16", "sample_patients: 5")
    build(recipe, str(base / "corpus"), beam_args=IN_MEMORY, log=lambda m: None)
    return base / "corpus"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    """A 600-image RadImageNet-style corpus (several shards per split, an 18-image
    benchmark) with two dead-lettered inputs."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "input"
    write_tree(root, 600, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]),
               with_csv=True)
    knee = next(p for p in sorted((root / "MR" / "knee").iterdir()) if p.is_dir())
    (knee / "deadbroken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 20)
    (knee / "deadtruncated.png").write_bytes(next(knee.glob("*.png")).read_bytes()[:40])
    recipe = _recipe_copy(base, "radimagenet-vqa", "images: 1000", "images: 20")
    Path(recipe).write_text(Path(recipe).read_text().replace("images_per_shard: 10000",
                                                             "images_per_shard: 50"))
    out = base / "corpus"
    build(recipe, str(out), input_dir=str(root), beam_args=IN_MEMORY, log=lambda m: None)
    return out, root


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """The 3d-rad recipe on two longitudinal phantom patients."""
    base = tmp_path_factory.mktemp("volumes")
    recipe = _recipe_copy(base, "3d-rad", "sample_patients: 60", "sample_patients: 2")
    build(recipe, str(base / "corpus"), beam_args=IN_MEMORY, log=lambda m: None)
    return base / "corpus"


def _rows(corpus: Path, config: str, split: str | None = None,
          drop=("image", "npy", "image_boxed", "image_boxed_easy")) -> list[dict]:
    table = pq.read_table(corpus / config)
    table = table.drop_columns([c for c in drop if c in table.column_names])
    rows = table.to_pylist()
    return [r for r in rows if split is None or r["split"] == split]


def _media(corpus: Path, config: str, key: str = "image_id", column: str = "image") -> dict[str, bytes]:
    out = {}
    for r in pq.read_table(corpus / config, columns=[key, column]).to_pylist():
        value = r[column]
        out[r[key]] = value["bytes"] if isinstance(value, dict) else value
    return out


#: File name suffix of each prompted image column (README "Visual prompts in exports").
PROMPT_FILES = {"image": "", "image_boxed": "-boxed", "image_boxed_easy": "-boxed-easy"}


def _column(row: Mapping) -> str:
    """The image column a QA row is exported with: the README's rule, written out again."""
    if not row.get("visual_prompt"):
        return "image"
    return "image_boxed" if re.search(r"\b(green|blue|yellow)\b", row["question"], re.I) else "image_boxed_easy"


def _has_red_box(data: bytes, box: Mapping) -> bool:
    """The outline of ``box`` (pixels, maxima exclusive) is red on the image ``data``."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    x0, y0, x1, y1 = box["x_min"], box["y_min"], box["x_max"], box["y_max"]
    edges = [rgb[y0, x0:x1], rgb[y1 - 1, x0:x1], rgb[y0:y1, x0], rgb[y0:y1, x1 - 1]]
    return all((e == (255, 0, 0)).all() for e in edges)


def _load_json(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _vlmevalkit_load(path: Path) -> pd.DataFrame:
    """Read a TSV the way VLMEvalKit does: ``vlmeval.smp.load`` (``pd.read_csv(f, sep='\\t')``),
    then ``ImageBaseDataset.__init__``'s image-index resolution, then base64 decode."""
    data = pd.read_csv(path, sep="\t")
    data["index"] = [str(x) for x in data["index"]]
    data["image"] = [str(x) for x in data["image"]]
    image_map = dict(zip(data["index"], data["image"]))
    for k in image_map:
        if len(image_map[k]) <= 64:
            idx = image_map[k]
            assert idx in image_map and len(image_map[idx]) > 64
            image_map[k] = image_map[idx]
    data["image"] = [image_map[k] for k in data["index"]]
    data["pil"] = [Image.open(io.BytesIO(base64.b64decode(x))) for x in data["image"]]
    return data


# --------------------------------------------------------------------------- boxes (pure)


@pytest.mark.parametrize(
    "box, size, style, expected",
    [
        ([53, 15, 73, 28], (102, 54), "pixel", [53, 15, 73, 28]),
        # smart_resize(54, 102) = (56, 112): 53*112/102 = 58.2, 15*56/54 = 15.6, 73*112/102 = 80.2, 28*56/54 = 29.0
        ([53, 15, 73, 28], (102, 54), "qwen2.5-vl", [58, 16, 80, 29]),
        # padded square of side 102, y offset (102 - 54) // 2 = 24: 53/102, 39/102, 73/102, 52/102
        ([53, 15, 73, 28], (102, 54), "llava", [0.52, 0.38, 0.72, 0.51]),
        # 53/102*1000 = 519.6, 15/54*1000 = 277.8, 73/102*1000 = 715.7, 28/54*1000 = 518.5
        ([53, 15, 73, 28], (102, 54), "internvl", [520, 278, 716, 519]),
        ([0, 0, 512, 256], (512, 256), "internvl", [0, 0, 1000, 1000]),
        # Python's round (half to even), as InternVL's normalize_coordinates: 62.5 -> 62, 187.5 -> 188
        ([1, 3, 2, 5], (16, 16), "internvl", [62, 188, 125, 312]),
    ],
    ids=["pixel", "qwen-smart-resize", "llava-padded-square", "internvl-known-box", "internvl-full-image", "internvl-half-even"],
)
def test_convert_box(box, size, style, expected):
    assert convert_box(box, *size, style) == expected


@pytest.mark.parametrize(
    "box, fragment",
    [([5, 5, 5, 9], "does not fit a 10x10 image"), ([0, 0, 11, 4], "does not fit a 10x10 image"),
     ([1, 2, 3], "is not [x_min, y_min, x_max, y_max]"), (None, "is not [x_min")],
    ids=["empty", "outside", "three-values", "none"],
)
def test_bad_boxes_name_the_field(box, fragment):
    with pytest.raises(ExportError) as err:
        check_box(box, 10, 10, "qa/test-00000-of-00001.parquet: qa_id q1: answer_box")
    assert "qa_id q1: answer_box" in str(err.value) and fragment in str(err.value)


def test_box_text_per_style():
    box, size = [53, 15, 73, 28], (102, 54)
    assert box_text(box, *size, "pixel", answer=True) == "[53, 15, 73, 28]"
    qwen = box_text(box, *size, "qwen2.5-vl", answer=True)
    assert json.loads(qwen) == {"bbox_2d": [58, 16, 80, 29]}
    assert box_text(box, *size, "qwen2.5-vl", answer=False) == "[58, 16, 80, 29]"
    assert box_text(box, *size, "llava", answer=True) == "[0.52, 0.38, 0.72, 0.51]"
    assert box_text([0, 0, 10, 10], 10, 40, "llava", answer=True) == "[0.38, 0.00, 0.62, 0.25]"
    assert box_text(box, *size, "internvl", answer=True) == "<box>[[520, 278, 716, 519]]</box>"
    assert box_text(box, *size, "internvl", answer=False) == "<box>[[520, 278, 716, 519]]</box>"
    with pytest.raises(ExportError, match="boxes: 'llava-1.5' is not one of pixel, qwen2.5-vl, llava, internvl"):
        box_text(box, *size, "llava-1.5", answer=True)


def test_question_boxes():
    q = "Name the structure inside the bounding box [43, 58, 50, 64]."
    assert convert_question_boxes(q, (100, 100), "pixel") == q
    assert convert_question_boxes(q, (112, 112), "qwen2.5-vl") == q  # 112 = 4 x 28: the frame is the image
    assert convert_question_boxes(q, (100, 100), "internvl") == \
        "Name the structure inside the bounding box <box>[[430, 580, 500, 640]]</box>."
    # with the question_box column: exactly that literal, which must occur
    assert convert_question_boxes(q, (100, 100), "internvl", question_box=[43, 58, 50, 64]).endswith(
        "<box>[[430, 580, 500, 640]]</box>.")
    with pytest.raises(ExportError, match="question_box \\[1, 2, 3, 4\\] does not occur"):
        convert_question_boxes(q, (100, 100), "internvl", question_box=[1, 2, 3, 4], where="q1")
    # a 4-integer list that is no box of this image stays as written
    history = "Prior presence, oldest first: [1, 0, 1, 1]."
    assert convert_question_boxes(history, (100, 100), "internvl") == history
    # grounding questions lose the word "pixels" when the coordinates are not pixels
    g = "Give the bounding box of the liver as [x_min, y_min, x_max, y_max] in pixels (end exclusive)."
    assert convert_question_boxes(g, (100, 100), "internvl", grounding=True) == (
        "Give the bounding box of the liver as [x_min, y_min, x_max, y_max] in coordinates "
        "normalised to 0–1000 (end exclusive).")
    assert convert_question_boxes(g, (112, 112), "qwen2.5-vl", grounding=True) == g


@pytest.mark.parametrize(
    "qtype, options, answer, answer_text, human, gpt",
    [
        ("multiple_choice", ["liver", "spleen", "aorta", "colon"], "B", "spleen",
         "<image>\nQ?\nA. liver\nB. spleen\nC. aorta\nD. colon", "B. spleen"),
        ("closed", [], "yes", "yes", "<image>\nQ?", "yes"),
        ("open", [], "left kidney", "left kidney", "<image>\nQ?", "left kidney"),
    ],
    ids=["multiple-choice", "closed", "open"],
)
def test_turn_formatting(qtype, options, answer, answer_text, human, gpt):
    assert format_human("Q?", qtype, options) == human
    assert format_gpt(qtype, answer, answer_text) == gpt


def test_render_row_grounding():
    row = {"id": "q", "question": "Locate the spleen; answer with its pixel box [x_min, y_min, x_max, y_max].",
           "question_type": "open", "options": [], "answer": "[10, 20, 30, 40]",
           "answer_text": "[10, 20, 30, 40]", "answer_box": [10, 20, 30, 40], "question_box": None}
    assert render_row(row, (200, 100), "pixel") == (row["question"], "[10, 20, 30, 40]")
    q, a = render_row(row, (200, 100), "internvl")
    assert a == "<box>[[50, 200, 150, 400]]</box>" and "0–1000 normalised box" in q
    with pytest.raises(ExportError, match="has a box but no image size"):
        render_row(row, None, "pixel")


@pytest.mark.parametrize(
    "manifest, configs, kind",
    [
        ({"kind": "tree"}, ["images", "qa"], "tree"),
        ({}, ["images", "qa", "structures"], "slices"),
        ({}, ["alignment", "benchmark", "instruct"], "tree"),
        ({}, ["qa", "volumes"], "volumes"),
    ],
    ids=["manifest-kind", "slices", "tree", "volumes"],
)
def test_detect_kind(manifest, configs, kind):
    assert detect_kind(manifest, configs) == kind


def test_detect_kind_errors():
    with pytest.raises(ExportError, match="kind: 'pictures' is not one of slices, tree, volumes"):
        detect_kind({"kind": "pictures"}, [])
    with pytest.raises(ExportError, match="configs \\['structures'\\] are none of"):
        detect_kind({}, ["structures"])


def test_private_folders_are_never_listed():
    files = {"qa/test-00000-of-00001.parquet": {}, "dead_letters/dead_letters.jsonl": {},
             "dead_letters/qa-00000-of-00001.parquet": {}, ".radvqa/units/x.parquet": {},
             "README.md": {}, "images/test-00000-of-00001.parquet": {}}
    assert list_configs({"files": files}) == {"images": ["images/test-00000-of-00001.parquet"],
                                                "qa": ["qa/test-00000-of-00001.parquet"]}


# --------------------------------------------------------------------------- slices corpus


@pytest.fixture(scope="module")
def slices_llava(slices, tmp_path_factory):
    out = tmp_path_factory.mktemp("x") / "llava"
    return out, export_corpus(str(slices), str(out), "llava")


def test_slices_llava_matches_the_qa_rows(slices, slices_llava):
    out, result = slices_llava
    images = {r["image_id"]: r for r in _rows(slices, "images")}
    stored = _media(slices, "images")
    assert result.kind == "slices" and result.boxes == "llava"
    referenced = set()
    for split in ("train", "validation", "test"):
        source = {r["qa_id"]: r for r in _rows(slices, "qa", split)}
        records = _load_json(out / f"radvqa_sample_{split}.json")
        assert result.files[f"radvqa_sample_{split}.json"] == len(records) == len(source)
        assert {r["id"] for r in records} == set(source)
        for rec in records:
            row = source[rec["id"]]
            img = images[row["image_id"]]
            name = f"{row['image_id']}{PROMPT_FILES[_column(row)]}"
            assert rec["image"] == f"images/{name}.png"
            assert (rec["width"], rec["height"]) == (img["width"], img["height"])
            human, gpt = (t["value"] for t in rec["conversations"])
            assert [t["from"] for t in rec["conversations"]] == ["human", "gpt"]
            size = (img["width"], img["height"])  # boxes: LLaVA-1.5's [0, 1] on the padded square
            assert human.startswith("<image>\n" + convert_question_boxes(
                row["question"], size, "llava", question_box=row.get("question_box"),
                grounding=row["answer_box"] is not None))
            if row["question_type"] == "multiple_choice":
                letter = row["answer"]
                assert gpt == f"{letter}. {row['options'][ord(letter) - 65]}" == f"{letter}. {row['answer_text']}"
                assert human.endswith(f"\n{'ABCD'[len(row['options']) - 1]}. " + row["options"][-1])
            elif row["answer_box"] is not None:
                assert gpt == box_text(row["answer_box"], *size, "llava", answer=True)
            else:
                assert gpt == row["answer"]
            referenced.add((row["image_id"], _column(row)))
    files = sorted((out / "images").iterdir())
    names = {f"{i}{PROMPT_FILES[c]}.png": (i, c) for i, c in referenced}
    assert [p.name for p in files] == sorted(names)  # ids (and prompted variants) only, once each
    assert any(c != "image" for _, c in referenced)
    assert result.media == len(files)
    prompted = {c: _media(slices, "images", column=c) for c in ("image_boxed", "image_boxed_easy")}
    for path in files:
        data = path.read_bytes()
        image_id, column = names[path.name]
        assert data == (stored if column == "image" else prompted[column])[image_id]  # stored bytes
        with Image.open(path) as im:
            assert im.size == (images[image_id]["width"], images[image_id]["height"])


def test_slices_rows_are_sorted_by_id_and_export_is_deterministic(slices, slices_llava, tmp_path):
    out, _ = slices_llava
    test = _load_json(out / "radvqa_sample_test.json")  # one shard: sorted by id
    assert [r["id"] for r in test] == sorted(r["id"] for r in test)
    again = tmp_path / "again"
    export_corpus(str(slices), str(again), "llava", splits=["test", "validation"])
    for name in ("radvqa_sample_test.json", "radvqa_sample_validation.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    text = (out / "radvqa_sample_test.json").read_text(encoding="utf-8")
    assert text.startswith("[\n{") and text.endswith("}\n]\n")


def test_slices_grounding_boxes_per_framework(slices, tmp_path):
    images = {r["image_id"]: r for r in _rows(slices, "images")}
    source = {r["qa_id"]: r for r in _rows(slices, "qa", "test")}
    grounding = [r for r in source.values() if r["answer_box"] is not None]
    boxed_questions = [r for r in source.values() if BOX_LITERAL.search(r["question"])]
    # the built-in families quote no box in a question any more (visual prompts instead):
    # converting quoted boxes is covered by test_question_boxes
    assert grounding
    qwen = {r["id"]: r for r in _load_json(
        _export(slices, tmp_path / "qwen", "sharegpt", splits=["test"]) / "radvqa_sample_test.json")}
    intern = {r["id"]: r for r in _load_json(
        _export(slices, tmp_path / "intern", "llava", splits=["test"], boxes="internvl")
        / "radvqa_sample_test.json")}
    llava = {r["id"]: r for r in _load_json(
        _export(slices, tmp_path / "llava", "llava", splits=["test"]) / "radvqa_sample_test.json")}
    for row in grounding:
        w, h = images[row["image_id"]]["width"], images[row["image_id"]]["height"]
        answer = json.loads(qwen[row["qa_id"]]["messages"][1]["content"])
        h2, w2 = smart_resize(h, w)  # Qwen2.5-VL: pixels of the image its processor sees
        x0, y0, x1, y1 = row["answer_box"]
        assert answer == {"bbox_2d": [round(x0 * w2 / w), round(y0 * h2 / h), round(x1 * w2 / w),
                                      round(y1 * h2 / h)]}
        side = max(w, h)  # LLaVA-1.5: [0, 1] on the centred square, two decimals
        ox, oy = (side - w) // 2, (side - h) // 2
        assert llava[row["qa_id"]]["conversations"][1]["value"] == "[{:.2f}, {:.2f}, {:.2f}, {:.2f}]".format(
            *(round(v / side, 2) for v in (x0 + ox, y0 + oy, x1 + ox, y1 + oy)))
        x0, y0, x1, y1 = row["answer_box"]
        expected = [round(x0 / w * 1000), round(y0 / h * 1000), round(x1 / w * 1000), round(y1 / h * 1000)]
        assert intern[row["qa_id"]]["conversations"][1]["value"] == f"<box>[[{', '.join(map(str, expected))}]]</box>"
        assert "pixel" not in intern[row["qa_id"]]["conversations"][0]["value"]
    for row in boxed_questions:
        w, h = images[row["image_id"]]["width"], images[row["image_id"]]["height"]
        literal = BOX_LITERAL.search(row["question"]).group(0)
        box = json.loads(literal)
        if row.get("question_box") is not None:  # the column, where the build writes it
            assert list(row["question_box"]) == box
        converted = intern[row["qa_id"]]["conversations"][0]["value"]
        assert literal not in converted
        assert f"<box>[{convert_box(box, w, h, 'internvl')}]</box>" in converted
        assert str(convert_box(box, w, h, "qwen2.5-vl")) in qwen[row["qa_id"]]["messages"][0]["content"]


def _export(corpus: Path, out: Path, fmt: str, **kw) -> Path:
    export_corpus(str(corpus), str(out), fmt, **kw)
    return out


def test_slices_sharegpt_is_valid_for_llama_factory(slices, tmp_path):
    out = _export(slices, tmp_path / "sg", "sharegpt")
    info = json.loads((out / "dataset_info.json").read_text())
    assert sorted(info) == ["radvqa_sample_test", "radvqa_sample_train", "radvqa_sample_validation"]
    for name, entry in info.items():
        assert entry == {
            "file_name": f"{name}.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant"},
        } == dataset_info_entry(f"{name}.json")
        records = _load_json(out / entry["file_name"])
        assert len(records) == len(_rows(slices, "qa", name.rsplit("_", 1)[1]))
        for rec in records:
            roles = [m["role"] for m in rec["messages"]]
            assert roles == ["user", "assistant"]
            # LLaMA-Factory's converter and checks: roles, <image> tokens == images, PIL opens them
            assert len(llamafactory_sharegpt(rec, entry, str(out))) == 2 and len(rec["images"]) == 1


def test_slices_vlmevalkit_reads_back_as_vlmevalkit_does(slices, tmp_path):
    out = _export(slices, tmp_path / "vlm", "vlmevalkit")
    images = {r["image_id"]: r for r in _rows(slices, "images")}
    stored = _media(slices, "images")
    source = {r["qa_id"]: r for r in _rows(slices, "qa", "test")}
    by_type = collections.Counter(r["question_type"] for r in source.values())
    tables = {k: _vlmevalkit_load(out / f"radvqa_sample_{k}.tsv") for k in ("MCQ", "YN", "VQA")}
    mcq, yn, vqa = tables["MCQ"], tables["YN"], tables["VQA"]
    assert (len(mcq), len(yn), len(vqa)) == (by_type["multiple_choice"], by_type["closed"], by_type["open"])
    assert list(mcq.columns[:12]) == ["index", "image", "question", "A", "B", "C", "D", "answer",
                                      "category", "l2-category", "split", "qa_id"]
    for kind, table in tables.items():
        assert table["index"].tolist() == [str(i) for i in range(len(table))]
        for _, line in table.iterrows():
            row = source[line["qa_id"]]
            img = images[row["image_id"]]
            assert line["pil"].size == (img["width"], img["height"])
            if _column(row) == "image":  # the prompted ones: test_red_box_questions_carry_their_prompt
                assert base64.b64decode(line["image"]) == stored[row["image_id"]]
            assert line["category"] == row["task"] and line["l2-category"] == img["plane"]
            assert line["split"] == "test" and line["question"] == row["question"]
        raw = pd.read_csv(out / f"radvqa_sample_{kind}.tsv", sep="\t")
        carried = [x for x in raw["image"].astype(str) if len(x) > 64]
        # base64 once per image (and once per prompted variant of it)
        assert len(carried) == len({(source[q]["image_id"], _column(source[q])) for q in raw["qa_id"]})
    for _, line in mcq.iterrows():
        row = source[line["qa_id"]]
        # VLMEvalKit drops the empty (NaN) option columns of a question with fewer options
        assert [line[c] for c in "ABCD" if not pd.isna(line[c])] == row["options"]
        assert line["answer"] == row["answer"]
    assert set(yn["answer"]) <= {"Yes", "No"}
    for _, line in yn.iterrows():
        assert line["answer"] == source[line["qa_id"]]["answer"].capitalize()
    for _, line in vqa.iterrows():  # several references, as VLMEvalKit's VQA score needs
        assert ast.literal_eval(line["answer"]) == [source[line["qa_id"]]["answer"]] * VQA_REFERENCES


def _scores(out: Path, prefix: str) -> dict[str, tuple[float, float]]:
    """VLMEvalKit's exact-matching scores (percent) of each TSV, for a perfect prediction file
    and for a constant one (``Yes`` / ``A`` / the most common answer)."""
    mcq, yn, vqa = (vlmeval_dataset(out / f"{prefix}_{k}.tsv") for k in ("MCQ", "YN", "VQA"))
    perfect, constant = dict(zip(mcq["index"], mcq["answer"])), dict.fromkeys(mcq["index"], "A")
    scores = {"MCQ": (vlmeval_mcq_accuracy(mcq, perfect), vlmeval_mcq_accuracy(mcq, constant))}
    perfect, constant = dict(zip(yn["index"], yn["answer"])), dict.fromkeys(yn["index"], "Yes")
    scores["YN"] = (vlmeval_yorn_rating(yn, perfect)["Overall"], vlmeval_yorn_rating(yn, constant)["Overall"])
    refs = [ast.literal_eval(a)[0] for a in vqa["answer"]]
    common = collections.Counter(refs).most_common(1)[0][0]
    scores["VQA"] = (100 * float(np.mean([vlmeval_vqa_score(a, r) for a, r in zip(vqa["answer"], refs)])),
                     100 * float(np.mean([vlmeval_vqa_score(a, common) for a in vqa["answer"]])))
    return scores


def test_slices_vlmevalkit_scores_with_vlmevalkit_rules(slices, tmp_path):
    out = _export(slices, tmp_path / "vlm", "vlmevalkit")
    source = _rows(slices, "qa", "test")
    scores = _scores(out, "radvqa_sample")
    assert {k: perfect for k, (perfect, _) in scores.items()} == {"MCQ": 100.0, "YN": 100.0, "VQA": 100.0}
    # a constant prediction scores the share of that answer: about half for yes/no (balanced)
    closed = [r["answer"] for r in source if r["question_type"] == "closed"]
    mc = [r["answer"] for r in source if r["question_type"] == "multiple_choice"]
    assert scores["YN"][1] == pytest.approx(100 * closed.count("yes") / len(closed))
    assert 35 <= scores["YN"][1] <= 65
    assert scores["MCQ"][1] == pytest.approx(100 * mc.count("A") / len(mc))
    assert scores["VQA"][1] < 100


def test_qwen_boxes_in_the_smart_resize_frame_for_every_train_image_size(slices, tmp_path):
    images = {r["image_id"]: r for r in _rows(slices, "images")}
    train = _rows(slices, "qa", "train")
    sizes = sorted({(images[r["image_id"]]["width"], images[r["image_id"]]["height"]) for r in train})
    frames = {(w, h): smart_resize(h, w) for w, h in sizes}
    assert len(sizes) >= 2 and all(frames[(w, h)] != (h, w) for w, h in sizes)  # none is unchanged
    for w, h in sizes:  # the whole image spans the resized image
        assert convert_box([0, 0, w, h], w, h, "qwen2.5-vl") == [0, 0, frames[(w, h)][1], frames[(w, h)][0]]
    records = {r["id"]: r for r in _load_json(
        _export(slices, tmp_path / "sg", "sharegpt", splits=["train"]) / "radvqa_sample_train.json")}
    grounding = [r for r in train if r["answer_box"] is not None]
    assert grounding
    for row in grounding:
        w, h = images[row["image_id"]]["width"], images[row["image_id"]]["height"]
        h2, w2 = frames[(w, h)]
        x0, y0, x1, y1 = row["answer_box"]
        expected = [round(x0 * w2 / w), round(y0 * h2 / h), round(x1 * w2 / w), round(y1 * h2 / h)]
        assert json.loads(records[row["qa_id"]]["messages"][1]["content"]) == {"bbox_2d": expected}


def test_media_are_streamed_never_read_whole(slices, tmp_path, monkeypatch):
    """Image bytes only ever come through ``iter_batches`` of one shard."""
    whole_reads = []
    original = pq.ParquetFile.read

    def spy(self, columns=None, **kw):
        whole_reads.append(tuple(columns or ("<all>",)))
        return original(self, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    export_corpus(str(slices), str(tmp_path / "a"), "llava")
    export_corpus(str(slices), str(tmp_path / "b"), "vlmevalkit")
    assert whole_reads and not any({"image", "image_boxed", "image_boxed_easy", "npy", "<all>"} & set(cols)
                                   for cols in whole_reads)


def _exported_images(out: Path, fmt: str) -> dict[str, bytes]:
    """qa id -> the bytes of the image each exported question is shown with."""
    if fmt == "vlmevalkit":
        return {line["qa_id"]: base64.b64decode(line["image"])
                for kind in ("MCQ", "YN", "VQA") if (out / f"radvqa_sample_{kind}.tsv").exists()
                for _, line in _vlmevalkit_load(out / f"radvqa_sample_{kind}.tsv").iterrows()}
    got = {}
    for path in sorted(out.glob("radvqa_sample_*.json")):
        for rec in _load_json(path):
            got[rec["id"]] = (out / (rec["image"] if fmt == "llava" else rec["images"][0])).read_bytes()
    return got


@pytest.mark.parametrize("fmt", ["llava", "sharegpt", "vlmevalkit"])
def test_red_box_questions_carry_their_prompt(slices, tmp_path, fmt):
    """Every exported red-box question's image has the red outline at the prompted
    structure's box (the stored ``image_boxed_easy``: its wording names red only); the
    other questions get the plain image, never a boxed file."""
    images = {r["image_id"]: r for r in _rows(slices, "images")}
    source = {r["qa_id"]: r for r in _rows(slices, "qa")}
    plain, easy = _media(slices, "images"), _media(slices, "images", column="image_boxed_easy")
    got = _exported_images(_export(slices, tmp_path / fmt, fmt), fmt)
    prompted = [q for q in got if source[q]["visual_prompt"]]
    assert len(prompted) >= 5 and len(got) - len(prompted) >= 5
    for qa_id, data in got.items():
        row = source[qa_id]
        img = images[row["image_id"]]
        if row["visual_prompt"]:
            assert row["visual_prompt"] == "red_box" and "red" in row["question"]
            box = next(b for b in img["boxes"] if b["label"] == img["prompt_label"])
            assert _has_red_box(data, box), qa_id
            assert data == easy[row["image_id"]]
        else:
            assert data == plain[row["image_id"]], qa_id
            assert not any(_has_red_box(data, b) for b in img["boxes"])


def test_prompt_image_option_chooses_the_variant(slices, tmp_path):
    """``--option prompt_image=boxed``: the hard variant (red beside green, blue, yellow);
    a bad value names the option."""
    source = {r["qa_id"]: r for r in _rows(slices, "qa", "test")}
    hard = _media(slices, "images", column="image_boxed")
    out = _export(slices, tmp_path / "hard", "llava", splits=["test"], options={"prompt_image": "boxed"})
    records = _load_json(out / "radvqa_sample_test.json")
    prompted = [r for r in records if source[r["id"]]["visual_prompt"]]
    assert prompted
    for rec in prompted:
        image_id = source[rec["id"]]["image_id"]
        assert rec["image"] == f"images/{image_id}-boxed.png"
        assert (out / rec["image"]).read_bytes() == hard[image_id]
    with pytest.raises(ExportError, match="prompt_image: 'red' is not one of auto, boxed, easy"):
        export_corpus(str(slices), str(tmp_path / "bad"), "llava", options={"prompt_image": "red"})


def test_media_lookup_falls_back_to_other_shards(slices):
    corpus = Corpus(str(slices))
    wanted = {r["image_id"] for r in _rows(slices, "images", "validation")}
    got = {i for i, _, _ in read_media(corpus, LAYOUTS["slices"], "images/not-a-shard.parquet",
                                       wanted, "qa/x")}
    assert got == wanted
    with pytest.raises(ExportError, match="qa/x: image_id nope not found in images/ \\(1 missing\\)"):
        list(read_media(corpus, LAYOUTS["slices"], "images/test-00000-of-00001.parquet", {"nope"},
                        "qa/x"))


# --------------------------------------------------------------------------- tree corpus


def test_tree_llava_follows_the_instruct_config(tree, tmp_path):
    corpus, _ = tree
    out = _export(corpus, tmp_path / "llava", "llava", captions=True)
    stored = _media(corpus, "alignment")
    shards = json.loads((corpus / "manifest.json").read_text())["files"]
    assert len([f for f in shards if f.startswith("instruct/train-")]) > 1  # several shards per split
    for split in ("train", "validation", "test"):
        instruct = {r["qa_id"]: r for r in _rows(corpus, "instruct", split)}
        records = _load_json(out / f"radvqa_radimagenet_vqa_{split}.json")
        assert len(records) == len(instruct)
        for rec in records:
            row = instruct[rec["id"]]
            assert rec["conversations"] == row["conversations"]  # formatting in step with instruct
            name = f"{row['image_id']}{PROMPT_FILES[_column(row)]}"
            assert rec["image"] == f"images/{name}.png"
        captions = {r["metadata"]["question_id"]: r for r in _rows(corpus, "alignment", split)}
        cap_records = _load_json(out / f"radvqa_radimagenet_vqa_captions_{split}.json")
        assert {r["id"] for r in cap_records} == set(captions)
        for rec in cap_records:
            assert rec["conversations"] == captions[rec["id"]]["conversations"]
    files = sorted((out / "images").iterdir())
    assert len(files) == len(stored)
    for path in files:
        assert path.read_bytes() == stored[path.stem]
        with Image.open(path) as im, Image.open(io.BytesIO(stored[path.stem])) as ref:
            assert im.size == ref.size


def test_tree_sharegpt_messages(tree, tmp_path):
    corpus, _ = tree
    out = _export(corpus, tmp_path / "sg", "sharegpt", splits=["validation"], name="rin")
    assert json.loads((out / "dataset_info.json").read_text()) == {"rin_validation": dataset_info_entry(
        "rin_validation.json")}
    instruct = {r["qa_id"]: r for r in _rows(corpus, "instruct", "validation")}
    records = _load_json(out / "rin_validation.json")
    assert len(records) == len(instruct)
    for rec in records:
        conv = instruct[rec["id"]]["conversations"]
        assert [m["content"] for m in rec["messages"]] == [t["value"] for t in conv]


def test_tree_vlmevalkit_is_the_benchmark(tree, tmp_path):
    corpus, _ = tree
    out = _export(corpus, tmp_path / "vlm", "vlmevalkit")
    bench = {r["qa_id"]: r for r in _rows(corpus, "benchmark")}
    stored = _media(corpus, "benchmark")
    types = collections.Counter(r["question_type"] for r in bench.values())
    mcq = _vlmevalkit_load(out / "radvqa_radimagenet_vqa_MCQ.tsv")
    yn = _vlmevalkit_load(out / "radvqa_radimagenet_vqa_YN.tsv")
    vqa = _vlmevalkit_load(out / "radvqa_radimagenet_vqa_VQA.tsv")
    assert (len(mcq), len(yn), len(vqa)) == (types["multiple_choice"], types["closed"], types["open"])
    # up to nine questions per image (the pathology multiple choice skips two in three normal ones)
    assert len(mcq) + len(yn) + len(vqa) == len(bench) and 8 * len(stored) <= len(bench) <= 9 * len(stored)
    assert stored
    for table in (mcq, yn, vqa):
        for _, line in table.iterrows():
            row = bench[line["qa_id"]]
            if _column(row) == "image":  # the prompted ones: test_red_box_questions_carry_their_prompt
                assert base64.b64decode(line["image"]) == stored[row["image_id"]]
            with Image.open(io.BytesIO(stored[row["image_id"]])) as ref:
                assert line["pil"].size == ref.size
            assert line["category"] == row["task"]
            assert line["l2-category"] == (row["metadata"]["location"] or "unspecified")
    for _, line in mcq.iterrows():
        row = bench[line["qa_id"]]
        # a two-option question (CT anatomy: two regions) leaves C and D empty
        assert [line[c] for c in "ABCD" if isinstance(line[c], str)] == row["choices"]
        assert row["choices"]["ABCD".index(line["answer"])] == row["metadata"]["correct_text"]
    for _, line in yn.iterrows():
        assert line["answer"] == {"yes": "Yes", "no": "No"}[bench[line["qa_id"]]["answer"]]
    for _, line in vqa.iterrows():
        assert ast.literal_eval(line["answer"]) == [bench[line["qa_id"]]["answer"]] * VQA_REFERENCES
    scores = _scores(out, "radvqa_radimagenet_vqa")
    assert {k: perfect for k, (perfect, _) in scores.items()} == {"MCQ": 100.0, "YN": 100.0, "VQA": 100.0}
    with pytest.raises(ExportError, match="splits: train not in benchmark/ \\(available: test\\)"):
        export_corpus(str(corpus), str(tmp_path / "bad"), "vlmevalkit", splits=["train"])


def test_nothing_from_dead_letters_reaches_an_export(tree, tmp_path):
    corpus, source_root = tree
    letters = [json.loads(x) for x in (corpus / "dead_letters" / "dead_letters.jsonl").read_text().splitlines()]
    assert {Path(d["source"]).name for d in letters} >= {"deadbroken.png", "deadtruncated.png"}
    # plant rows where an export must never look: dead_letters/ (even listed in the
    # manifest) and .radvqa/
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    shard = sorted(f for f in json.loads((copy / "manifest.json").read_text())["files"]
                   if f.startswith("instruct/test-"))[0]
    table = pq.read_table(copy / shard)
    leaked = table.set_column(table.column_names.index("question"), "question",
                              [["LEAKED QUESTION"] * table.num_rows])
    pq.write_table(leaked, copy / "dead_letters" / "test-00000-of-00001.parquet")  # names a shard
    (copy / ".radvqa" / "instruct").mkdir(parents=True)
    pq.write_table(leaked, copy / ".radvqa" / "instruct" / "test-00000-of-00001.parquet")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["dead_letters/test-00000-of-00001.parquet"] = {"rows": table.num_rows}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    stems = {p.stem for p in source_root.rglob("*.png")}
    dead_keys = {d["case_key"] for d in letters}
    accepted = len(_media(corpus, "alignment"))
    for fmt, kw in (("llava", {"captions": True}), ("sharegpt", {}), ("vlmevalkit", {})):
        out = _export(copy, tmp_path / fmt, fmt, **kw)
        names = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
        text = "\n".join((out / n).read_text(encoding="utf-8") for n in names if not n.endswith(".png"))
        assert "LEAKED" not in text
        assert not any(k in text or any(k in n for n in names) for k in dead_keys)
        assert not any(s in text or any(s in n for n in names) for s in stems)  # ids only
        if fmt != "vlmevalkit":
            assert len([n for n in names if n.startswith("images/")]) == accepted


# --------------------------------------------------------------------------- volumes corpus


@pytest.mark.parametrize("fmt", ["llava"])
def test_volumes_export_npy_beside_the_json(volumes, tmp_path, fmt):
    out = _export(volumes, tmp_path / fmt, fmt)
    vols = {r["volume_id"]: r for r in _rows(volumes, "volumes")}
    stored = _media(volumes, "volumes", key="volume_id", column="npy")
    used = set()
    splits = sorted({r["split"] for r in _rows(volumes, "qa")})
    assert len(list(out.glob("radvqa_3d_rad_*.json"))) == len(splits)
    for split in splits:
        source = {r["qa_id"]: r for r in _rows(volumes, "qa", split)}
        records = _load_json(out / f"radvqa_3d_rad_{split}.json")
        assert len(records) == len(source) and {r["id"] for r in records} == set(source)
        for rec in records:
            row = source[rec["id"]]
            media = rec["image"] if fmt == "llava" else rec["images"][0]
            assert media == f"volumes/{row['volume_id']}.npy"
            turns = rec["conversations"] if fmt == "llava" else rec["messages"]
            human, gpt = (t["value"] if fmt == "llava" else t["content"] for t in turns)
            assert human == format_human(row["question"], row["question_type"], row["options"])
            assert gpt == format_gpt(row["question_type"], row["answer"], row["answer_text"])
            used.add(row["volume_id"])
    files = sorted((out / "volumes").iterdir())
    assert [p.stem for p in files] == sorted(used)
    for path in files:
        assert path.read_bytes() == stored[path.stem]
        arr = np.load(path, allow_pickle=False)
        assert list(arr.shape) == vols[path.stem]["shape"] and arr.dtype == np.float16
        assert 0.0 <= float(arr.min()) <= float(arr.max()) <= 1.0


def test_sharegpt_refuses_a_volume_corpus(volumes, tmp_path):
    """LLaMA-Factory opens every ``images`` file with PIL (``mm_plugin.py: _regularize_images``): no .npy."""
    with pytest.raises(ExportError, match="sharegpt \\(LLaMA-Factory\\) needs 2D images: .* this volumes corpus "
                                          "has .npy volumes, which PIL cannot open — export it with --format llava"):
        export_corpus(str(volumes), str(tmp_path / "x"), "sharegpt")
    assert not (tmp_path / "x").exists()


def test_vlmevalkit_refuses_a_volume_corpus(volumes, tmp_path):
    with pytest.raises(ExportError, match="vlmevalkit needs 2D images; this is a volumes \\(3D\\) corpus"):
        export_corpus(str(volumes), str(tmp_path / "x"), "vlmevalkit")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_export_writes_and_summarises(slices, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(slices), "--format", "llava", "--output", str(out), "--splits", "test",
                 "--boxes", "internvl"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radvqa export: llava (slices corpus, boxes internvl): ")
    n = len(_rows(slices, "qa", "test"))
    assert f"{n:,} rows in 1 file(s)" in lines[0] and str(out) in lines[0]
    assert "export: qa/test-00000-of-00001.parquet" in captured.err
    assert len(_load_json(out / "radvqa_sample_test.json")) == n


def test_cli_pixels_set_the_qwen_frame(slices, tmp_path):
    """``--min-pixels`` / ``--max-pixels``: the smart_resize bounds of qwen2.5-vl boxes."""
    out = tmp_path / "small"
    assert main(["export", str(slices), "--format", "sharegpt", "--output", str(out), "--splits", "test",
                 "--min-pixels", "784", "--max-pixels", "1568"]) == 0
    images = {r["image_id"]: r for r in _rows(slices, "images")}
    rows = [r for r in _rows(slices, "qa", "test") if r["answer_box"] is not None]
    records = {r["id"]: r for r in _load_json(out / "radvqa_sample_test.json")}
    for row in rows:
        w, h = images[row["image_id"]]["width"], images[row["image_id"]]["height"]
        h2, w2 = smart_resize(h, w, 28, 784, 1568)
        assert h2 * w2 <= 1568
        x0, y0, x1, y1 = row["answer_box"]
        sx, sy = round(x0 * w2 / w), round(y0 * h2 / h)
        expected = [sx, sy, max(sx + 1, round(x1 * w2 / w)), max(sy + 1, round(y1 * h2 / h))]
        assert json.loads(records[row["qa_id"]]["messages"][1]["content"]) == {"bbox_2d": expected}


def test_cli_bad_format_exits_2(slices, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(slices), "--format", "coco", "--output", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "argument --format: invalid choice: 'coco' (choose from" in capsys.readouterr().err


@pytest.mark.parametrize(
    "corpus, args, message",
    [
        ("volumes", ["--format", "vlmevalkit"], "vlmevalkit needs 2D images"),
        ("slices", ["--format", "llava", "--splits", "train,holdout"], "splits: holdout not in qa/"),
        ("slices", ["--format", "llava", "--captions"], "captions: only tree corpora"),
        ("missing", ["--format", "llava"], "manifest.json: not found"),
        ("slices", ["--format", "llava", "--output", "NONEMPTY"], "is not empty; export into a new folder"),
        ("volumes", ["--format", "sharegpt"], "sharegpt (LLaMA-Factory) needs 2D images"),
        ("slices", ["--format", "llava", "--max-pixels", "1000"], "boxes llava do not use it"),
    ],
    ids=["vlmevalkit-3d", "unknown-split", "captions-slices", "not-a-corpus", "non-empty-output",
         "sharegpt-3d", "pixels-not-qwen"],
)
def test_cli_errors_exit_2_with_a_message(request, tmp_path, capsys, corpus, args, message):
    path = tmp_path / "nothing" if corpus == "missing" else request.getfixturevalue(corpus)
    (tmp_path / "NONEMPTY").mkdir()
    (tmp_path / "NONEMPTY" / "keep.txt").write_text("mine")
    args = [str(tmp_path / a) if a == "NONEMPTY" else a for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    assert main(["export", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radvqa export: error: ") and message in err
    assert (tmp_path / "NONEMPTY" / "keep.txt").read_text() == "mine"


def test_images_written_once_even_when_shared(slices, tmp_path):
    """Every image id is one file; rows of the same image point to it."""
    out = _export(slices, tmp_path / "once", "llava", splits=["test"])
    records = _load_json(out / "radvqa_sample_test.json")
    per_image = collections.Counter(r["image"] for r in records)
    assert max(per_image.values()) > 1
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").iterdir()) == sorted(per_image)
