"""Inputs read through Beam's FileSystems: every corpus kind built from an object store
(the in-memory ``radvqamem://`` filesystem stands in for gs:// and s3://) is byte for byte
the corpus built from the same files on disk; InputTree lists and stages like a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.config.resources import resource_dir
from pipeline.inputs.sample import write_longitudinal_sample, write_sample
from pipeline.inputs.sample_tree import write_tree
from pipeline.inputs.tree import InputTree
from pipeline.launch.build import build
from pipeline.qa.label_pools import load_label_pools
from tests.memfs import PREFIX, MemoryFileSystem, upload_folder
from tests.test_incremental import corpus_digest as corpus

QUIET = {"log": lambda m: None}


@pytest.fixture()
def store():
    MemoryFileSystem.reset()
    yield
    MemoryFileSystem.reset()


def _inputs(kind: str, root: Path) -> str:
    if kind == "sample":
        write_sample(root, n_patients=4)
    elif kind == "radimagenet-vqa":
        write_tree(root, 400, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]),
                   with_csv=True)
    else:
        write_longitudinal_sample(root, n_patients=2)
    return kind


@pytest.mark.parametrize("recipe", ["sample", "radimagenet-vqa", "3d-rad"])
def test_a_corpus_built_from_an_object_store_equals_the_one_built_from_disk(tmp_path, store, recipe):
    local = tmp_path / "in"
    _inputs(recipe, local)
    url = f"{PREFIX}bucket/inputs"
    assert upload_folder(local, url) > 10
    a, b = tmp_path / "from-disk", tmp_path / "from-store"
    build(recipe, str(a), input_dir=str(local), **QUIET)
    result = build(recipe, str(b), input_dir=url, **QUIET)
    assert result.exit_code == 0
    assert corpus(a) == corpus(b)
    assert json.loads((b / ".radvqa" / "build.json").read_text())["input"] == url
    assert not [p for p in Path("/tmp").glob("radvqa-case-*")]  # staged copies removed


def test_regenerate_reuses_a_remote_input_build(tmp_path, store):
    local = tmp_path / "in"
    write_sample(local, n_patients=3)
    url = f"{PREFIX}bucket/again"
    upload_folder(local, url)
    out = tmp_path / "out"
    build("sample", str(out), input_dir=url, **QUIET)
    from pipeline.launch.build import regenerate

    again = regenerate(str(out), **QUIET)
    assert again.manifest["build"]["cases_extracted"] == 0
    units = sum(s["shards"] for s in again.manifest["splits"].values())
    assert len(again.manifest["build"]["units_skipped"]) == units > 0


def test_input_tree_lists_and_stages_like_a_folder(tmp_path, store):
    local = tmp_path / "in"
    (local / "case" / "segmentations").mkdir(parents=True)
    (local / "case" / "ct.nii.gz").write_bytes(b"ct")
    (local / "case" / "segmentations" / "liver.nii.gz").write_bytes(b"liver!")
    (local / "case" / ".hidden").write_bytes(b"x")
    (local / "meta.csv").write_text("image_id\ncase\n")
    upload_folder(local, f"{PREFIX}b/in")
    trees = [InputTree(str(local)), InputTree(f"{PREFIX}b/in")]
    for tree in trees:
        assert tree.exists() and tree.listdir("") == ["case", "meta.csv"]
        assert {"ct.nii.gz", "segmentations"} <= set(tree.listdir("case"))
        assert tree.isdir("case") and not tree.isdir("meta.csv") and tree.isfile("meta.csv")
        assert tree.walk_files("case") == ["case/ct.nii.gz", "case/segmentations/liver.nii.gz"]
        assert tree.stat("case/segmentations/liver.nii.gz")[0] == 6
        assert tree.stat("nope") == (-1, -1)
        assert tree.read_bytes("meta.csv").startswith(b"image_id")
        with tree.local(["case/ct.nii.gz", "case/segmentations"]) as root:
            assert Path(root, "case", "segmentations", "liver.nii.gz").read_bytes() == b"liver!"
            assert Path(root, "case", "ct.nii.gz").read_bytes() == b"ct"
            staged = root
        assert os.path.isdir(staged) == (not tree.remote)  # a remote copy is removed after use
    assert [x[:2] for x in trees[0].identity(["case"])] == [x[:2] for x in trees[1].identity(["case"])]
