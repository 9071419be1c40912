"""The case-layout registry: detection order, names shared with the CLI and the recipes
(a layout added to the registry is known to both), and the message naming what each layout
expects."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

import pipeline.inputs.layouts as layouts
from pipeline.cli import _parser
from pipeline.config.recipes import load_recipe
from pipeline.config.resources import resource_dir
from pipeline.errors import ConfigError
from pipeline.inputs.discovery import CaseSource
from pipeline.inputs.layouts import (
    LAYOUTS,
    detect_layout,
    expected_layouts,
    get_layout,
    layout_names,
)


@pytest.mark.parametrize("names, expected", [
    ({"ct.nii.gz", "segmentations"}, "totalseg"),
    ({"MR.nrrd", "segmentations"}, "totalseg"),
    ({"mri.nii.gz", "segmentations"}, "totalseg"),
    ({"ct.nii.gz", "segmentations.nii.gz"}, "totalseg_ml"),
    ({"mri.nii.gz", "seg.nii.gz", "segmentations"}, "totalseg_ml"),
    ({"dicom", "seg.dcm"}, "dicom_seg"),
    ({"dicom", "seg.dcm", "segmentations"}, "dicom"),
    ({"image.nii.gz", "labels.nii.gz", "labels.json"}, "multilabel"),
    ({"image.nii.gz", "labels.mha", "ct.nii.gz"}, "multilabel"),  # image + labels win over ct
    ({"dicom", "segmentations"}, "dicom"),
    ({"dicom", "image.nii.gz", "labels.nii.gz", "ct.nii.gz"}, "dicom"),  # dicom/ wins over all
    ({"image.nii.gz"}, None),
    ({"notes.txt", "segmentations"}, None),
], ids=["ct", "mr-nrrd", "mri", "ml", "ml-over-folder", "dicom-seg", "dicom-nifti-masks-over-seg",
        "multilabel", "multilabel-over-ct", "dicom", "dicom-over-all",
        "image-alone", "no-image"])
def test_detect_layout_keeps_its_precedence(names, expected):
    found = detect_layout(names)
    assert (found.name if found else None) == expected


def test_layout_names_are_those_the_cli_accepts(capsys):
    for name in ("auto", *layout_names()):
        assert _parser().parse_args(["build", "--output", "out", "--layout", name]).layout == name
    with pytest.raises(SystemExit):
        _parser().parse_args(["build", "--output", "out", "--layout", "nifti"])
    assert "invalid choice: 'nifti'" in capsys.readouterr().err
    assert sorted(layout.name for layout in LAYOUTS) == list(layout_names())


def test_the_recipe_schema_lists_no_layout_names():
    schema = json.loads((resource_dir("schemas") / "recipe.schema.json").read_text())
    assert schema["properties"]["source"]["properties"]["layout"]["type"] == "string"
    assert "enum" not in schema["properties"]["source"]["properties"]["layout"]


def _recipe_with_layout(tmp_path, layout: str) -> str:
    data = yaml.safe_load((resource_dir("recipes") / "sample.yaml").read_text())
    data["source"]["layout"] = layout
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_an_unknown_layout_in_a_recipe_names_the_file_the_field_and_the_layouts(tmp_path):
    path = _recipe_with_layout(tmp_path, "nifti")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}: source.layout: found 'nifti', expected one of "
                              "auto, ct-rate, dicom, dicom_seg, multilabel, totalseg, totalseg_ml")
    for name in ("auto", *layout_names()):
        assert load_recipe(_recipe_with_layout(tmp_path, name)).section("source")["layout"] == name


@dataclasses.dataclass(frozen=True)
class _FakeLayout:
    """A fourth layout, known only through its one registry entry."""

    name: str = "fake"
    expected: str = "fake.bin"

    def detect(self, names):
        return "fake.bin" in names


def test_a_layout_added_to_the_registry_is_known_to_the_cli_recipes_and_discovery(
        tmp_path, monkeypatch):
    monkeypatch.setattr(layouts, "LAYOUTS", (*LAYOUTS, _FakeLayout()))
    assert layout_names() == ("ct-rate", "dicom", "dicom_seg", "fake", "multilabel", "totalseg",
                              "totalseg_ml")
    assert _parser().parse_args(["build", "--output", "out", "--layout", "fake"]).layout == "fake"
    assert load_recipe(_recipe_with_layout(tmp_path, "fake")).section("source")["layout"] == "fake"
    assert get_layout("fake").name == "fake"
    assert detect_layout({"fake.bin"}).name == "fake"
    assert expected_layouts().startswith("fake.bin, ")
    assert CaseSource("k", "p", "case", "fake", "", (("image", "case/fake.bin"),)).layout == "fake"
    with pytest.raises(ConfigError, match="expected one of auto, ct-rate, dicom, dicom_seg, fake, multilabel, totalseg, totalseg_ml"):
        load_recipe(_recipe_with_layout(tmp_path, "nifti"))


def test_get_layout_names_the_known_layouts():
    assert get_layout("multilabel").name == "multilabel"
    with pytest.raises(ValueError, match=r"layout: found 'nifti', expected one of \('ct-rate', 'dicom', 'dicom_seg', 'multilabel', "
                       r"'totalseg', 'totalseg_ml'\)"):
        get_layout("nifti")


def test_the_unknown_layout_message_lists_every_layout():
    assert expected_layouts() == (
        "CT-RATE volumes (<split>_<patient>_<scan>_<reconstruction>.nii.gz) + label table, "
        "ct/mri/mr volume + segmentations/, ct/mri/mr volume + segmentations.nii.gz (--ml), "
        "image + labels + labels.json, dicom/ + segmentations/, or dicom/ + a DICOM SEG *.dcm")


def test_content_digests_are_the_digests_load_reads(tmp_path):
    """A layout's ``content_digests`` (the files hashed, nothing decoded) equal the digests
    its ``load`` returns — what a case whose files' times alone changed is checked against
    (``pipeline.engine.execute.rechecked``) — also with a stray file beside a DICOM series
    and a hidden file among the masks.  Only layouts whose digests cover every byte ``load``
    reads have them (``multilabel``'s ``labels.json`` and ``modality.txt`` and CT-RATE's
    label table are outside theirs)."""
    from pipeline.inputs.discovery import discover_cases
    from pipeline.inputs.sample import write_sample
    from pipeline.inputs.tree import InputTree

    write_sample(tmp_path, n_patients=6)
    (tmp_path / "s0001" / "dicom" / "notes.txt").write_text("not a DICOM file")
    (tmp_path / "s0002" / "segmentations" / ".hidden.nii.gz").write_bytes(b"not read")
    cases, _ = discover_cases(InputTree(str(tmp_path)), pseudonym_key="k")
    checked = set()
    for case in cases:
        layout = get_layout(case.layout)
        if hasattr(layout, "content_digests"):
            loaded = layout.load(case, str(tmp_path), 10**9)
            assert layout.content_digests(case, str(tmp_path)) == loaded.digests, case.key
            checked.add(case.layout)
    assert checked == {"totalseg", "dicom"}  # (the release layouts: tests/test_ts_layouts.py)
    assert {layout.name for layout in LAYOUTS if hasattr(layout, "content_digests")} == {
        "totalseg", "dicom", "totalseg_ml", "dicom_seg"}
