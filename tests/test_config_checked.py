"""Configuration files validated once per content (pipeline/config/checked.py): an unchanged
file is not parsed again, an edited one is parsed and validated and fails as it always did."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.config import checked, yaml_files
from pipeline.config.resources import resource_dir
from pipeline.errors import ConfigError
from pipeline.qa.generators import GENERATORS
from pipeline.qa.templates import load_families, load_family_file


@pytest.fixture(autouse=True)
def _fresh_state():
    checked.use(None)
    yield
    checked.use(None)


def test_unchanged_files_come_from_the_cache_and_edited_ones_are_validated(tmp_path, monkeypatch):
    shutil.copytree(resource_dir("templates") / "radvuqa", tmp_path / "tpl")
    first = load_families(tmp_path / "tpl", generators=GENERATORS)
    state = json.loads(json.dumps(checked.cached()))  # as the launcher keeps it in .radvqa/
    assert len(state["files"]) == len(first)
    parsed = []
    real = yaml_files.parse_config
    monkeypatch.setattr(yaml_files, "parse_config", lambda raw, path: parsed.append(path) or real(raw, path))
    checked.use(state)
    assert load_families(tmp_path / "tpl", generators=GENERATORS) == first and not parsed
    path = tmp_path / "tpl" / "existence_closed.yaml"
    good = path.read_text()
    path.write_text(good.replace("Is the {{ structure }}", "Can you see the {{ structure }}"))
    edited = load_family_file(path)
    assert parsed == [path] and "Can you see the" in edited.variants[0].text + edited.variants[1].text
    path.write_text(good.replace("answer_format: yes_no", "answer_format: perhaps"))
    with pytest.raises(ConfigError, match=r"existence_closed\.yaml: answer_format: 'perhaps' is not one of"):
        load_family_file(path)
    path.write_text(good.replace("{{ structure }}", "{{ structure.__class__ }}", 1))
    with pytest.raises(ConfigError, match=r"existence_closed\.yaml: variants\[\d+\]"):
        load_family_file(path)  # the sandbox's check runs on every load, cached or not


def test_state_of_other_code_is_ignored_and_inexact_data_never_kept(tmp_path, monkeypatch):
    path = tmp_path / "pool.yaml"
    shutil.copy(resource_dir("distractor_pools") / "totalsegmentator.yaml", path)
    data = checked.load_checked(path, "distractor_pool")
    state = checked.cached()
    parsed = []
    real = yaml_files.parse_config
    monkeypatch.setattr(yaml_files, "parse_config", lambda raw, p: parsed.append(p) or real(raw, p))
    checked.use(state | {"code": "other"})  # other schemas or loading code: parsed again
    assert checked.load_checked(path, "distractor_pool") == data and parsed == [path]
    checked.use(state)
    assert checked.load_checked(path, "distractor_pool") == data and parsed == [path]
    assert not checked.json_exact({1: "liver"}) and not checked.json_exact({"d": __import__("datetime").date(2024, 1, 1)})
    assert checked.json_exact({"a": [1, 2.5, None, True, "x"]})


def test_the_same_bytes_checked_against_another_schema_are_validated_again(tmp_path):
    path = tmp_path / "pool.yaml"
    shutil.copy(resource_dir("distractor_pools") / "totalsegmentator.yaml", path)
    checked.load_checked(path, "distractor_pool")
    checked.use(json.loads(json.dumps(checked.cached())))
    with pytest.raises(ConfigError):  # a pool is not a recipe, cached or not
        checked.load_checked(path, "recipe")


def test_an_unchanged_label_pool_comes_from_the_cache(tmp_path, monkeypatch):
    """The tree kind's label pools (pipeline/qa/label_pools.py) are loaded through the same
    cache as templates and distractor pools: unchanged, not parsed again; edited, parsed,
    validated, and a bad edit fails naming the file and field."""
    from pipeline.qa.label_pools import load_label_pools

    path = tmp_path / "pool.yaml"
    shutil.copy(resource_dir("distractor_pools") / "radimagenet.yaml", path)
    first = load_label_pools([path])
    state = json.loads(json.dumps(checked.cached()))  # as the launcher keeps it in .radvqa/
    parsed = []
    real = yaml_files.parse_config
    monkeypatch.setattr(yaml_files, "parse_config", lambda raw, p: parsed.append(p) or real(raw, p))
    checked.use(state)
    assert load_label_pools([path]) == first and not parsed
    good = path.read_text()
    path.write_text(good.replace("normal_label: normal", "normal_label: [normal]", 1))
    with pytest.raises(ConfigError, match=r"pool\.yaml: normal_label: \['normal'\] is not of type 'string'"):
        load_label_pools([path])
    assert parsed == [path]
