"""``radvqa export --format 3d-rad``: 3D-RAD's own files, read back and scored the way its
evaluation code does (github.com/Tang-xiaoxiao/3D-RAD: ``M3D/Bench/dataset/multi_dataset.py``
``RADDataset`` reads a task CSV and ``valid_path.csv``; ``M3D/Bench/eval/eval_3DRAD.py``
scores a closed answer as correct when ``AnswerChoice + '.'`` is in the generated text)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.exports.base import ExportError
from pipeline.exports.registry import export_corpus
from pipeline.exports.threedrad import (
    COLUMNS,
    TEMPORAL_CHOICES,
    read_options,
    size_text,
    threedrad_row,
    volume_array,
    volume_names,
)
from tests.test_exports import volumes  # noqa: F401  (the 2-patient 3d-rad corpus fixture)

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")  # their code uses it
CHOICES = ["Choice A", "Choice B", "Choice C", "Choice D"]


def _rad_dataset_items(csv_path: Path, path_table: Path):
    """Mirror of ``RADDataset.__init__`` / ``__getitem__`` (M3D/Bench/dataset/multi_dataset.py):
    ``pd.read_csv`` of the task file and of the path table indexed by ``VolumeName``;
    ``np.load`` of the ``Path``; question + ``Choices: A. … D. …`` and answer
    ``"{AnswerChoice}. {Answer}"`` when the row has the four choice columns."""
    data_list = pd.read_csv(csv_path)
    data_root_df = pd.read_csv(path_table)
    data_root_df.set_index("VolumeName", inplace=True)
    for idx in range(len(data_list)):
        data = data_list.iloc[idx]
        image = np.load(data_root_df.at[data["VolumeName"], "Path"])
        question = data["Question"]
        if all(x in data for x in CHOICES):
            choices = "Choices: A. {} B. {} C. {} D. {}".format(*(data[c] for c in CHOICES))
            answer = "{}. {}".format(data["AnswerChoice"], data["Answer"])
        else:
            choices, answer = "", str(data["Answer"])
        question = question + "\n" + choices + "\nAnswer:" if choices else question + "\nAnswer:"
        yield {"question": question, "answer": answer, "answer_choice": data["AnswerChoice"],
               "question_type": data["QuestionType"], "image": image}


def _closed_accuracy(items, predict) -> float:
    """``eval_3DRAD.py``'s closed scoring: correct when ``answer_choice + '.'`` is in the text."""
    correct = [1 if item["answer_choice"] + "." in predict(item) else 0 for item in items]
    return sum(correct) / len(correct)


@pytest.fixture(scope="module")
def exported(volumes, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("threedrad") / "export"
    export_corpus(str(volumes), str(out), "3d-rad")
    return out


def test_files_and_columns_are_3d_rads(exported, volumes):  # noqa: F811
    csvs = sorted((exported / "3DRAD").glob("*/*/*.csv"))
    assert csvs
    for path in csvs:
        split, task_dir = path.parts[-3], path.parts[-2]
        assert split in ("train", "test") and task_dir.startswith("Task")
        df = pd.read_csv(path)
        assert list(df.columns) == COLUMNS
        assert not df.isna().any().any(), path  # "-" where 3D-RAD leaves a cell empty, never NaN
        assert set(df["QuestionType"]) <= {"Close", "Open"}
        assert (df["Task"] == int(task_dir[4])).all()
        assert (df["VolumeName"].str.startswith(split + "_")).all()
        closed = df[df["QuestionType"] == "Close"]
        assert all(closed.apply(lambda r: r["Choice " + r["AnswerChoice"]] == r["Answer"], axis=1))
        if task_dir.startswith(("Task5", "Task6")):
            assert (df["AnswerChoice"].isin(list("ABCD"))).all()
            for letter, text in zip("ABCD", TEMPORAL_CHOICES):
                assert (df["Choice " + letter] == text).all()
            assert (df["VolumeName"].str.split("_").str[2] == path.stem).all()
        if task_dir.startswith("Task4"):
            assert (df["Choice A"] == "Yes").all() and (df["Choice B"] == "No").all()
            assert (df[["Choice C", "Choice D"]] == "-").all().all()
        if path.stem == "Size":
            assert df["Answer"].str.fullmatch(r"\d+x\d+ mm").all()
    # every exported row is a row of the corpus: the counts add up per split
    qa = pq.read_table(volumes / "qa", columns=["split", "subtask"]).to_pylist()
    kept = [r for r in qa if r["subtask"] not in ("volume", "mean_hu")]
    assert sum(len(pd.read_csv(p)) for p in csvs) == len(kept)


def test_volumes_load_as_their_loader_takes_them(exported):
    table = pd.read_csv(exported / "valid_path.csv")
    assert list(table.columns) == ["VolumeName", "Path"]
    assert table["VolumeName"].str.fullmatch(r"(train|test|valid)_\d+_[a-z]_1\.nii\.gz").all()
    for path in table["Path"]:
        assert Path(path).is_absolute()
        arr = np.load(path)
        assert arr.shape == (1, 32, 256, 256) and arr.dtype == np.float32
        assert 0.0 <= arr.min() and arr.max() <= 1.0


def test_perfect_and_constant_predictions_score_as_expected(exported, volumes):  # noqa: F811
    items = [item for path in sorted((exported / "3DRAD").glob("*/*/*.csv"))
             for item in _rad_dataset_items(path, exported / "valid_path.csv")
             if item["question_type"] == "Close"]
    assert items
    assert _closed_accuracy(items, lambda item: item["answer"]) == 1.0
    # the constant "A." is right exactly where the corpus's answer is 3D-RAD's A:
    # Refractory (temporal), yes (yes/no), the first option (other multiple choice)
    qa = pq.read_table(volumes / "qa").to_pylist()

    def is_a(r):
        if r["task"].endswith("temporal_diagnosis"):
            return r["answer_text"] == "Refractory"
        return r["answer"] in ("yes", "A")

    closed = [r for r in qa if r["question_type"] in ("closed", "multiple_choice")]
    expected = sum(map(is_a, closed)) / len(closed)
    assert len(items) == len(closed)
    assert _closed_accuracy(items, lambda item: "A.") == pytest.approx(expected)
    assert 0.0 < expected < 1.0


def test_temporal_letter_follows_the_class_not_our_option_order():
    row = {"task": "static_temporal_diagnosis", "subtask": "lung_nodule", "question_type": "multiple_choice",
           "question": "q?", "options": ["New", "No abnormality", "Resolved", "Refractory"], "answer": "C",
           "answer_text": "Resolved"}
    task, stem, cells = threedrad_row(row, "train_3_c_1.nii.gz", "here")
    assert (task, stem, cells["AnswerChoice"], cells["Answer"]) == (5, "c", "B", TEMPORAL_CHOICES[1])
    with pytest.raises(ExportError, match="here: answer_text: 'Maybe'"):
        threedrad_row(row | {"answer_text": "Maybe"}, "train_3_c_1.nii.gz", "here")


def test_names_sizes_and_options():
    vols = [{"volume_id": v, "patient_key": p, "split": s, "study_order": o}
            for v, p, s, o in [("v1", "pB", "train", 2), ("v2", "pB", "train", 1), ("v3", "pA", "validation", 5)]]
    assert volume_names(vols) == {"v1": "train_2_b_1.nii.gz", "v2": "train_2_a_1.nii.gz",
                                  "v3": "valid_1_a_1.nii.gz"}
    assert size_text("33.8 x 29.3 mm") == "34x29 mm" and size_text("46.4 mm") == "46.4 mm"
    assert read_options({}) == ((32, 256, 256), 0, "absolute")
    assert read_options({"volume_shape": "16,64,64", "channel_axis": "none"}) == ((16, 64, 64), None, "absolute")
    with pytest.raises(ExportError, match="option volume_shape"):
        read_options({"volume_shape": "16,64"})
    arr = np.linspace(0, 1, 4 * 8 * 8, dtype=np.float16).reshape(4, 8, 8)
    buf = io.BytesIO()
    np.save(buf, arr)
    assert volume_array(buf.getvalue(), (8, 16, 16), -1).shape == (8, 16, 16, 1)


def test_refuses_a_2d_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"kind": "slices", "files": {}}))
    with pytest.raises(ExportError, match="3d-rad needs a volumes corpus"):
        export_corpus(str(corpus), str(tmp_path / "out"), "3d-rad")
    assert main(["export", str(corpus), "--format", "3d-rad", "--output", str(tmp_path / "o2")]) == 2
    with pytest.raises(ExportError, match="option: 'volume_shape' is not an option of llava"):
        export_corpus(str(corpus), str(tmp_path / "o3"), "llava", options={"volume_shape": "1,1,1"})


def test_cli_options(volumes, tmp_path):  # noqa: F811
    out = tmp_path / "small"
    assert main(["export", str(volumes), "--format", "3d-rad", "--output", str(out), "--splits", "train",
                 "--option", "volume_shape=8,32,32", "--option", "channel_axis=-1",
                 "--option", "paths=relative"]) == 0
    table = pd.read_csv(out / "valid_path.csv")
    assert table["VolumeName"].str.startswith("train_").all()
    assert np.load(out / table["Path"][0]).shape == (8, 32, 32, 1)
