"""The ``radvqa`` command line: verbs, exit codes and error messages."""

from __future__ import annotations

import gc
import os
import shutil
import sys

import numpy as np
import pytest

from pipeline import cli
from pipeline.cli import main
from pipeline.engine.extract import SliceSettings, extract_case, load_case
from pipeline.inputs.discovery import discover_cases
from pipeline.inputs.phantoms import make_phantom
from pipeline.inputs.sample import write_case


def test_lint_builtin_recipes(capsys):
    for recipe in ("sample", "radvuqa"):
        assert main(["lint", "--recipe", recipe]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_lint_reports_a_broken_family(tmp_path, capsys):
    from pipeline.config.resources import resource_dir

    shutil.copytree(resource_dir("templates") / "radvuqa", tmp_path / "mine")
    recipe = (resource_dir("recipes") / "sample.yaml").read_text().replace(
        "templates: [radvuqa]", "templates: [mine]")
    (tmp_path / "r.yaml").write_text(recipe)
    family = tmp_path / "mine" / "grounding_open.yaml"
    family.write_text(family.read_text().replace("requires: [structure, plane, modality_name]",
                                                 "requires: [structure, plane, modality_name, organ]"))
    assert main(["lint", "--recipe", str(tmp_path / "r.yaml")]) == 1
    assert "requires: ['organ'] not provided by generator grounding" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "--recipe", "nope", "--output", "OUT"], "neither a file nor a built-in recipe"),
        (["build", "--input", "EMPTY", "--output", "OUT"], "found no case folders (empty input)"),
        (["build", "--input", "MISSING", "--output", "OUT"], "is not a directory"),
    ],
    ids=["unknown-recipe", "empty-input", "missing-input"],
)
def test_build_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("OUT", "EMPTY", "MISSING") else a for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_sample_verb(tmp_path, capsys):
    assert main(["sample", "--output", str(tmp_path / "s"), "--patients", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.txt", "meta.csv", "s0001", "s0002"]


def test_optional_resampling_keeps_geometry_consistent(tmp_path):
    p = make_phantom(1)
    write_case(p, tmp_path / "c", "totalseg")
    (case,), _ = discover_cases(str(tmp_path), pseudonym_key="k")
    volume, masks, _, _ = load_case(case, str(tmp_path), 10**9)
    settings = SliceSettings(planes=("coronal",), resample_mm=(None, None, 2.5), max_per_volume=2)
    images, structures = extract_case(case, "train", volume, masks, settings)
    nk = p.image.shape[2]
    assert images[0]["height"] == round(nk * 5.0 / 2.5)
    assert images[0]["spacing_mm"] == [pytest.approx(p.spacing[0], rel=1e-6), 2.5]
    liver = next(s for s in structures if s["label"] == "liver")
    truth = p.masks["liver"].sum() * np.prod(p.spacing) / 1000
    assert liver["volume_ml"] == pytest.approx(truth, rel=0.03)  # nearest-neighbour resampling


def test_lint_fails_when_a_builtin_layout_class_is_missing_from_the_pools(tmp_path, capsys):
    import yaml

    from pipeline.config.resources import resource_dir

    pool = yaml.safe_load((resource_dir("distractor_pools") / "totalsegmentator.yaml").read_text())
    region = next(r for r in pool["regions"].values() if "costal_cartilages" in r["structures"])
    del region["structures"]["costal_cartilages"]
    (tmp_path / "mypool.yaml").write_text(yaml.safe_dump(pool, sort_keys=False))
    recipe = (resource_dir("recipes") / "sample.yaml").read_text().replace(
        "pools: [totalsegmentator", "pools: [mypool.yaml")
    (tmp_path / "r.yaml").write_text(recipe)
    assert main(["lint", "--recipe", str(tmp_path / "r.yaml")]) == 1
    out = capsys.readouterr().out
    assert ("distractor_pools/totalsegmentator_classes.yaml (CT, the TotalSegmentator layouts): "
            "1 class name(s) the pools lack: costal_cartilages") in out
    assert "1 problem(s)" in out


def test_the_command_pauses_the_collector_for_its_imports_only(monkeypatch, capsys):
    """The radvqa command (no argv given) imports with the cyclic collector paused, then
    sets what the imports made aside and collects again, and asks for one BLAS thread (a
    user's setting kept); a caller in Python is left alone."""
    seen = []
    collect = cli._collect_from_here
    monkeypatch.setattr(cli, "_collect_from_here", lambda: (seen.append(gc.isenabled()), collect()))
    monkeypatch.setattr(sys, "argv", ["radvqa", "lint", "--recipe", "sample"])
    environ = {k: v for k, v in os.environ.items() if k != cli.BLAS_THREADS[0]}
    monkeypatch.setattr(os, "environ", environ)  # what the command sets, for its workers too
    try:
        assert main() == 0
        assert seen[0] is False and gc.isenabled() and gc.get_freeze_count() > 0
        assert environ[cli.BLAS_THREADS[0]] == "1"
    finally:
        gc.enable()
        gc.unfreeze()
    seen.clear()
    assert main(["lint", "--recipe", "sample"]) == 0
    assert seen and all(seen) and gc.isenabled()
