"""CT-RATE as an input (``source.layout: ct-rate``, recipe ``ct-rate``): the sample written the
way CT-RATE writes its files, discovery (one reconstruction per scan, scan letters as study
order, the official split), HU and spacing from the metadata, label-table findings without
masks, a build and its 3d-rad export."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.config.resources import resource_dir
from pipeline.core.volume_facts import CT_RATE_FINDINGS
from pipeline.errors import CaseError
from pipeline.exports.registry import export_corpus
from pipeline.inputs.layouts import ctrate
from pipeline.inputs.sample_ctrate import INTERCEPT, write_ctrate_sample
from pipeline.inputs.tree import InputTree
from pipeline.kinds.base import discover_volume_cases
from pipeline.launch.build import build

KEY = "test-key"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ctrate") / "input"
    write_ctrate_sample(root, n_patients=4)
    return root


def test_sample_is_written_like_ct_rate(sample):
    vol = sample / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert vol.is_file() and (sample / "dataset/train/train_1/train_1_a/train_1_a_2.nii.gz").is_file()
    assert (sample / "dataset/valid/valid_2/valid_2_c/valid_2_c_1.nii.gz").is_file()
    image = nib.load(str(vol))
    assert image.get_data_dtype() == np.int16
    with open(sample / "dataset/multi_abnormality_labels/train_predicted_labels.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["VolumeName", *CT_RATE_FINDINGS] and len(CT_RATE_FINDINGS) == 18
    assert set(CT_RATE_FINDINGS) == set(CT_RATE_FINDINGS)
    meta = pd.read_csv(sample / "dataset/metadata/validation_metadata.csv")
    assert meta["XYSpacing"][0] == "[0.75, 0.75]" and meta["RescaleIntercept"][0] == INTERCEPT


def test_discovery_one_scan_one_case(sample):
    cases, rejects = discover_volume_cases(str(sample), KEY, "auto")
    assert not rejects
    assert len(cases) == 4 * 3  # patients x scans; the second reconstruction of scan a is not a case
    assert all(c.layout == "ct-rate" and c.modality == "CT" for c in cases)
    assert {c.file("image").rsplit("/", 1)[-1].split("_")[3] for c in cases} == {"1.nii.gz"}
    by_patient: dict[str, list] = {}
    for c in cases:
        by_patient.setdefault(c.patient_key, []).append(c)
        prefix = c.file("image").rsplit("/", 1)[-1].split("_")[0]
        assert c.split == {"train": "train", "valid": "validation"}[prefix]
    assert len(by_patient) == 4
    for studies in by_patient.values():
        letters = sorted((c.study_order, c.file("image").rsplit("/", 1)[-1].split("_")[2]) for c in studies)
        assert letters == [(1, "a"), (2, "b"), (3, "c")]
    assert ctrate.is_root(InputTree(str(sample)))


def test_flat_folder_and_missing_label_row(tmp_path, sample):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(sample.rglob("*.nii.gz")):
        shutil.copy(p, flat / p.name)
    labels = pd.concat([pd.read_csv(p) for p in sorted(sample.rglob("*_predicted_labels.csv"))])
    labels = labels[labels["VolumeName"] != "train_3_b_1.nii.gz"]
    labels.to_csv(flat / "multi_abnormality_labels.csv", index=False)
    cases, rejects = discover_volume_cases(str(flat), KEY, "auto")
    assert len(cases) == 11
    assert [(r["source"], r["reason"]) for r in rejects] == [("train_3_b_1.nii.gz", "labels.missing_row")]


def test_load_uses_metadata_and_labels(sample, tmp_path):
    cases, _ = discover_volume_cases(str(sample), KEY, "ct-rate")
    case = next(c for c in cases if c.file("image").endswith("train_1_a_1.nii.gz"))
    loaded = ctrate.LAYOUT.load(case, str(sample), 64_000_000)
    raw = np.asarray(nib.load(str(sample / case.file("image"))).dataobj)
    assert loaded.masks == {}
    assert np.isclose(loaded.volume.array.min(), raw.min() + INTERCEPT)  # slope 1, intercept -1024
    assert loaded.volume.geometry.spacing == (0.75, 0.75, 1.5)
    row = pd.read_csv(sample / case.file("labels")).set_index("VolumeName").loc["train_1_a_1.nii.gz"]
    assert list(loaded.findings) == [ctrate.finding_label(f) for f in CT_RATE_FINDINGS if row[f] == 1]
    # a bad label cell is a named error
    bad = tmp_path / "bad"
    shutil.copytree(sample, bad)
    table = bad / case.file("labels")
    table.write_text(table.read_text().replace("train_1_a_1.nii.gz,0", "train_1_a_1.nii.gz,x", 1)
                     .replace("train_1_a_1.nii.gz,1", "train_1_a_1.nii.gz,x", 1))
    with pytest.raises(CaseError, match="Medical material: found 'x', expected 0 or 1"):
        ctrate.LAYOUT.load(case, str(bad), 64_000_000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample) -> Path:
    base = tmp_path_factory.mktemp("ctrate-build")
    out = base / "corpus"
    build(str(resource_dir("recipes") / "ct-rate.yaml"), str(out), input_dir=str(sample),
          beam_args=["--direct_running_mode=in_memory"], log=lambda m: None)
    return out


def test_build_asks_label_questions_only(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    qa = pd.read_parquet(corpus / "qa")
    assert set(qa["task"]) <= {"anomaly_detection", "existence_detection", "static_temporal_diagnosis",
                               "longitudinal_temporal_diagnosis"}
    assert {"existence_detection", "static_temporal_diagnosis"} <= set(qa["task"])
    assert set(qa["split"]) == {"train", "validation"}
    existence = qa[qa["task"] == "existence_detection"]
    for _, group in existence.groupby("split"):  # balanced per split
        assert (group["answer"] == "yes").sum() == (group["answer"] == "no").sum()
    assert manifest["audit"]["verdict"] == "ok"
    vols = pd.read_parquet(corpus / "volumes", columns=["split", "patient_key", "labelled_findings"])
    assert vols.groupby("patient_key")["split"].nunique().max() == 1
    assert all(f in {ctrate.finding_label(n) for n in CT_RATE_FINDINGS}
               for fs in vols["labelled_findings"] for f in fs)


def test_export_to_3d_rad_keeps_ct_rate_names(corpus, tmp_path):
    out = tmp_path / "export"
    export_corpus(str(corpus), str(out), "3d-rad")
    files = sorted((out / "3DRAD").glob("*/Task4_Existence_Detection/*.csv"))
    assert files
    for path in files:
        assert path.stem in CT_RATE_FINDINGS
        df = pd.read_csv(path)
        assert (df["Subtask"] == sorted(CT_RATE_FINDINGS).index(path.stem) + 1).all()
    assert {p.name for p in (out / "3DRAD").iterdir()} == {"train", "validation"}
    names = pd.read_csv(out / "valid_path.csv")["VolumeName"]
    assert names.str.fullmatch(r"(train|valid)_\d+_[abc]_1\.nii\.gz").all()
