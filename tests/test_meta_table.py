"""``meta.csv`` as TotalSegmentator v2 releases it: its ``split`` honoured (``val`` →
``validation``), patients never straddling splits (the stated majority rule, reported), every
other column kept out of the corpus; and a build's progress moving case by case."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.config.resources import resource_dir
from pipeline.engine import state
from pipeline.inputs.meta_table import STRADDLE_RULE, parse_meta_table, resolve_splits
from pipeline.inputs.sample import write_sample
from pipeline.launch import runner
from pipeline.launch.build import build

V2_HEADER = ("image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp;"
             "pathology;pathology_location")
SPLITS = ["train", "validation", "test"]


def test_the_v2_table_is_read_for_its_split_only():
    table = parse_meta_table(V2_HEADER + "\ns0001;64;m;A;ct abdomen;train;SIEMENS;x;120;none;none\n"
                             "s0002;50;f;B;ct thorax;val;GE;y;100;tumor;lung\ns0003;;;;;test;;;;;\n")
    assert {k: (r.patient, r.order, r.split) for k, r in table.items()} == {
        "s0001": ("s0001", 0, "train"), "s0002": ("s0002", 0, "validation"),
        "s0003": ("s0003", 0, "test")}
    assert set(vars(table["s0002"])) == {"patient", "order", "split"}


def _cases(*rows):
    return [SimpleNamespace(patient_key=p, split=s) for p, s in rows]


def _hash(patient):
    return "test"


def test_a_patient_goes_to_the_split_most_of_its_cases_name_ties_to_the_first():
    cases = _cases(("a", "train"), ("a", "test"), ("a", "test"),  # majority: test
                   ("b", "validation"), ("b", "train"),            # tie: train comes first
                   ("c", "validation"),
                   ("d", ""),                                      # no split: hash
                   ("e", "holdout"))                               # not a recipe split: hash
    chosen, note = resolve_splits(cases, SPLITS, _hash)
    assert chosen == {"a": "test", "b": "train", "c": "validation", "d": "test", "e": "test"}
    assert note == {"table": "meta.csv", "rule": STRADDLE_RULE, "cases_moved": 2,
                    "cases_with_a_split_the_recipe_lacks": 1, "patients_from_table": 3,
                    "patients_in_several_splits": 2, "patients_split_by_hash": 2}


def test_the_switch_off_or_no_split_column_means_the_hash_split():
    cases = _cases(("a", "train"), ("b", "validation"))
    assert resolve_splits(cases, SPLITS, _hash, use_meta=False) == ({"a": "test", "b": "test"}, {})
    assert resolve_splits(_cases(("a", ""), ("b", "")), SPLITS, _hash) == (
        {"a": "test", "b": "test"}, {})


@pytest.fixture(scope="module")
def v2_build(tmp_path_factory):
    """A build of 5 phantom cases under a v2 meta.csv (plus patient_id: s0002 and s0003 are
    one patient the table puts in two splits) with a canary in every other column, one unit
    per split, progress polled fast."""
    root = tmp_path_factory.mktemp("v2-input")
    names = write_sample(root, n_patients=5)
    splits = {names[0]: "train", names[1]: "train", names[2]: "val", names[3]: "train",
              names[4]: "test"}
    rows = [V2_HEADER.replace("image_id;", "image_id;patient_id;")]
    for name in names:
        patient = "p23" if name in names[2:4] else name
        other = [f"CANARY{col}{name}Z" for col in V2_HEADER.split(";")[1:]]
        other[4] = splits[name]  # the split column
        rows.append(";".join([name, patient, *other]))
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    recipe = yaml.safe_load((resource_dir("recipes") / "sample.yaml").read_text())
    recipe["shards"]["cases_per_shard"] = 10
    recipe_path = tmp_path_factory.mktemp("recipe") / "v2.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path_factory.mktemp("v2-corpus")
    lines: list[str] = []
    patch = pytest.MonkeyPatch()
    patch.setattr(runner, "PROGRESS_EVERY_S", 0.05)
    patch.setattr(state, "PROGRESS_EVERY_S", 0.0)
    try:
        result = build(str(recipe_path), str(out), input_dir=str(root),
                       beam_args=["--direct_running_mode=in_memory"], log=lines.append)
    finally:
        patch.undo()
    return out, result, lines, names


def test_the_table_split_is_honoured_and_a_straddling_patient_follows_the_rule(v2_build):
    out, result, lines, names = v2_build
    manifest = result.manifest
    # p23: one train and one val case -> a tie, train comes first; so train holds 4 cases
    assert {s: v["cases"] for s, v in manifest["splits"].items()} == {
        "train": 4, "validation": 0, "test": 1}
    assert manifest["counts"]["discover"]["meta_split"] == {
        "table": "meta.csv", "rule": STRADDLE_RULE, "cases_moved": 1, "patients_from_table": 4,
        "patients_in_several_splits": 1}
    summary = "\n".join(lines)
    assert ("splits: 4 patient(s) split by meta.csv; 1 patient(s) whose cases it put in several "
            "splits placed by " + STRADDLE_RULE + " (1 case(s) moved)") in summary


def test_no_other_column_of_the_table_reaches_any_output_file(v2_build):
    out, _, _, _ = v2_build
    found = []
    for folder, _, files in os.walk(out):
        for name in files:
            if b"CANARY" in (Path(folder) / name).read_bytes():
                found.append(os.path.relpath(Path(folder) / name, out))
    assert found == []


def test_progress_moves_case_by_case_before_a_unit_is_done(v2_build):
    out, _, lines, _ = v2_build
    counts = [tuple(map(int, m.groups())) for line in lines
              if (m := re.search(r"progress: (\d+)/(\d+) cases in (\d+)/", line))]
    done = [(cases, units) for cases, _, units in counts]
    # a count of cases beyond what finished units hold: the train unit (4 cases) reported
    # cases before its receipt was written
    assert any(0 < cases < 4 and units == 0 for cases, units in done), lines
    assert not (out / ".radvqa" / "progress").exists()  # build state, cleaned up
    assert "progress" not in json.dumps(sorted(json.loads((out / "manifest.json").read_text())["files"]))
