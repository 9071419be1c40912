"""The dataset card: every config and split its YAML header names loads with the real
Hugging Face ``datasets`` client, with the row counts and features it states, for each
corpus kind; and the card says what a reader must know."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config.resources import resource_dir
from pipeline.inputs.sample import write_longitudinal_sample, write_sample
from pipeline.inputs.sample_tree import write_tree
from pipeline.launch.build import build
from pipeline.qa.label_pools import load_label_pools

QUIET = {"log": lambda m: None}


def _inputs(kind: str, root):
    if kind == "sample":
        write_sample(root, n_patients=4)
    elif kind == "radimagenet-vqa":
        write_tree(root, 1500, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
    else:
        write_longitudinal_sample(root, n_patients=3)


@pytest.fixture(scope="module", params=["sample", "radimagenet-vqa", "3d-rad"])
def corpus(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    _inputs(request.param, base / "in")
    result = build(request.param, str(base / "out"), input_dir=str(base / "in"), **QUIET)
    return base / "out", result


def _header(out) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_every_config_and_split_loads_with_the_datasets_client(corpus):
    from datasets import load_dataset
    from PIL import Image

    out, result = corpus
    header = _header(out)
    infos = {i["config_name"]: i for i in header["dataset_info"]}
    configs = [c["config_name"] for c in header["configs"]]
    assert set(configs) == set(infos) and [c for c in header["configs"] if c.get("default")]
    assert "ood" in configs
    loaded = 0
    for config in configs:
        for split in infos[config]["splits"]:
            ds = load_dataset(str(out), config, split=split["name"])
            assert ds.num_rows == split["num_examples"], (config, split)
            assert [f["name"] for f in infos[config]["features"]] == list(ds.features)
            if ds.num_rows and "image" in ds.features:
                assert isinstance(ds[0]["image"], Image.Image), config
            loaded += 1
    parquet_files = {p.split("/")[0] + "/" + p.split("/")[1].split("-")[0]
                     for p in result.manifest["files"] if p.endswith(".parquet")}
    assert loaded == len(parquet_files)  # every config/split pair on disk was loaded


def test_the_card_features_are_the_parquet_schemas(corpus):
    out, _ = corpus
    for info in _header(out)["dataset_info"]:
        first = sorted((out / info["config_name"]).glob("*.parquet"))[0]
        assert [f["name"] for f in info["features"]] == pq.read_schema(first).names


def test_the_card_tells_a_reader_what_they_need(corpus):
    out, result = corpus
    text = (out / "README.md").read_text()
    for needle in ("## Configs", "## Conventions", "## Shortcut audit", "## Build accounting",
                   "## De-identification", "operator-only", "burned into the pixels",
                   result.manifest["fingerprint"]):
        assert needle in text, needle
    if result.manifest.get("kind", "slices") == "slices":  # which image a red-box question shows
        assert "`visual_prompt`" in text and "`image_boxed_easy`" in text and "`prompt_label`" in text
