"""The ood config (test images under recorded perturbations) for 2D and 3D corpora, and
boxed images (RadVUQA's boxed_V2): rows point at real test images, every perturbation is
reproducible from the stored pixels and the recorded family and strength."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config.resources import resource_dir
from pipeline.core import perturb
from pipeline.core.imaging import PROMPT_COLOURS, draw_prompt
from pipeline.engine.extract import prompt_boxes
from pipeline.engine.ood import chosen, image_rows
from pipeline.inputs.sample import write_longitudinal_sample, write_sample
from pipeline.launch.build import build

QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """A radvuqa build (boxed images on, two perturbations per test image) of six phantoms."""
    base = tmp_path_factory.mktemp("ood-slices")
    write_sample(base / "in", n_patients=6)
    text = (resource_dir("recipes") / "radvuqa.yaml").read_text()
    text = text.replace("fractions: {train: 0.8, validation: 0.1, test: 0.1}",
                        "fractions: {train: 0.5, test: 0.5}")
    text = text.replace("planes: [axial, coronal, sagittal]", "planes: [axial]")
    text = text.replace("ct_windows: [soft_tissue, lung, bone]", "ct_windows: [soft_tissue]")
    (base / "r.yaml").write_text(text)
    result = build(str(base / "r.yaml"), str(base / "out"), input_dir=str(base / "in"), **QUIET)
    return base / "out", result


def test_every_test_image_gets_its_perturbations(slices):
    out, result = slices
    ood = pq.read_table(out / "ood").to_pylist()
    images = {r["image_id"]: r for r in pq.read_table(out / "images").to_pylist()}
    test = {k for k, r in images.items() if r["split"] == "test"}
    assert test and {r["image_id"] for r in ood} == test  # fraction 1.0
    per_image = {}
    for r in ood:
        per_image.setdefault(r["image_id"], set()).add((r["family"], r["strength"]))
        assert r["split"] == "test" and r["family"] in perturb.FAMILIES and r["strength"] in perturb.LEVELS
        params = json.loads(r["parameters"])
        assert params == perturb.describe(r["family"], r["strength"])
    assert all(len(v) == 2 for v in per_image.values())  # per_image: 2, distinct pairs
    assert "ood/test-00000-of-00001.parquet" in result.manifest["files"]


def test_a_perturbed_image_is_the_stored_image_under_its_recorded_perturbation(slices):
    out, _ = slices
    images = {r["image_id"]: r["image"]["bytes"] for r in pq.read_table(out / "images").to_pylist()}
    seed = json.loads((out / "manifest.json").read_text())["seed"]
    ood = pq.read_table(out / "ood").to_pylist()
    for row in ood[:12]:
        clean = np.asarray(Image.open(io.BytesIO(images[row["image_id"]])), dtype=np.float32) / 255
        expect = perturb.perturb(clean, row["family"], row["strength"], seed=seed, key=row["image_id"])
        got = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])), dtype=np.float32) / 255
        assert got.shape == clean.shape == (row["height"], row["width"])
        assert np.abs(got - expect).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
        if row["family"] != "gamma" or row["strength"] != "mild":
            assert np.abs(got - clean).mean() > 0  # it is perturbed


def test_selection_is_keyed_and_shard_independent():
    conf = {"fraction": 0.3, "per_image": 1, "families": list(perturb.FAMILIES),
            "levels": list(perturb.LEVELS)}
    ids = [f"{n:020x}" for n in range(400)]
    a = chosen(ids, conf, seed=5)
    b = chosen(list(reversed(ids)), conf, seed=5)
    assert a == b and 0.2 < len(a) / len(ids) < 0.4
    assert chosen(ids[:200], conf, 5) == [x for x in a if x[0] in set(ids[:200])]


def test_image_rows_convert_colour_sources_to_grey():
    rgb = Image.new("RGB", (12, 9), (200, 40, 10))
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    conf = {"fraction": 1.0, "per_image": 1, "families": ["contrast"], "levels": ["mild"]}
    (row,) = image_rows({"a" * 20: buf.getvalue()}, "test", conf, seed=1)
    im = Image.open(io.BytesIO(row["image"]["bytes"]))
    assert im.mode == "L" and im.size == (12, 9) and row["family"] == "contrast"


def test_boxed_images_draw_the_prompt_in_red_and_its_neighbours_in_other_colours(slices):
    out, _ = slices
    rows = pq.read_table(out / "images", columns=["image_id", "image", "image_boxed", "image_boxed_easy",
                                                   "prompt_label", "boxes"]).to_pylist()
    red = PROMPT_COLOURS["red"]
    for r in rows:
        gray = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])))
        target, others = prompt_boxes(r["image_id"], r["boxes"], 50)
        assert r["prompt_label"] == target["label"] and target["area_px"] >= 50
        boxed = np.asarray(Image.open(io.BytesIO(r["image_boxed"]["bytes"])).convert("RGB"))
        easy = np.asarray(Image.open(io.BytesIO(r["image_boxed_easy"]["bytes"])).convert("RGB"))
        assert np.array_equal(boxed, draw_prompt(gray, target, others))
        assert np.array_equal(easy, draw_prompt(gray, target))
        for img in (boxed, easy):  # the target is drawn last: its corners are red
            assert tuple(img[target["y_min"], target["x_min"]]) == red
            assert tuple(img[target["y_max"] - 1, target["x_max"] - 1]) == red
        # the easy variant shows one box: every coloured pixel is red
        coloured = easy[(easy[:, :, 0] != easy[:, :, 1]) | (easy[:, :, 1] != easy[:, :, 2])]
        assert len(coloured) and all(tuple(c) == red for c in coloured)
    assert len({r["prompt_label"] for r in rows}) > 5


def test_without_the_option_image_boxed_is_null(tmp_path):
    write_sample(tmp_path / "in", n_patients=2)
    shutil.rmtree(tmp_path / "in" / "s0002")
    text = (resource_dir("recipes") / "sample.yaml").read_text()
    assert "boxed: true" in text
    (tmp_path / "r.yaml").write_text(text.replace("boxed: true", "boxed: false"))
    result = build(str(tmp_path / "r.yaml"), str(tmp_path / "out"), input_dir=str(tmp_path / "in"), **QUIET)
    assert result.exit_code == 0
    t = pq.read_table(tmp_path / "out" / "images", columns=["image_boxed", "image_boxed_easy", "prompt_label"])
    assert {c: set(t.column(c).to_pylist()) for c in t.column_names} == {
        "image_boxed": {None}, "image_boxed_easy": {None}, "prompt_label": {None}}


def test_volumes_get_perturbed_volumes(tmp_path):
    write_longitudinal_sample(tmp_path / "in", n_patients=2)
    text = (resource_dir("recipes") / "3d-rad.yaml").read_text()
    text = text.replace("fractions: {train: 0.65, test: 0.35}", "fractions: {train: 0.5, test: 0.5}")
    (tmp_path / "r.yaml").write_text(text.replace("target_shape: [32, 128, 128]", "target_shape: [16, 48, 48]"))
    build(str(tmp_path / "r.yaml"), str(tmp_path / "out"), input_dir=str(tmp_path / "in"), **QUIET)
    vols = {r["volume_id"]: r for r in pq.read_table(tmp_path / "out" / "volumes").to_pylist()}
    ood = pq.read_table(tmp_path / "out" / "ood").to_pylist()
    assert ood and all(vols[r["volume_id"]]["split"] == "test" for r in ood)
    for r in ood:
        clean = np.load(io.BytesIO(vols[r["volume_id"]]["npy"]))
        got = np.load(io.BytesIO(r["npy"]))
        assert got.shape == clean.shape == tuple(r["shape"]) and got.dtype == clean.dtype
        assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0
