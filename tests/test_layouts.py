"""The case-layout registry: detection order, names shared with the CLI and the recipe
schema, and the message naming what each layout expects."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import _parser
from pipeline.config.resources import resource_dir
from pipeline.inputs.layouts import (
    LAYOUT_NAMES,
    LAYOUTS,
    detect_layout,
    expected_layouts,
    get_layout,
)


@pytest.mark.parametrize("names, expected", [
    ({"ct.nii.gz", "segmentations"}, "totalseg"),
    ({"MR.nrrd", "segmentations"}, "totalseg"),
    ({"image.nii.gz", "labels.nii.gz", "labels.json"}, "multilabel"),
    ({"image.nii.gz", "labels.mha", "ct.nii.gz"}, "multilabel"),  # image + labels win over ct
    ({"dicom", "segmentations"}, "dicom"),
    ({"dicom", "image.nii.gz", "labels.nii.gz", "ct.nii.gz"}, "dicom"),  # dicom/ wins over all
    ({"image.nii.gz"}, None),
    ({"notes.txt", "segmentations"}, None),
], ids=["ct", "mr-nrrd", "multilabel", "multilabel-over-ct", "dicom", "dicom-over-all",
        "image-alone", "no-image"])
def test_detect_layout_keeps_its_precedence(names, expected):
    found = detect_layout(names)
    assert (found.name if found else None) == expected


def test_layout_names_are_those_the_cli_and_the_recipe_schema_accept(capsys):
    schema = json.loads((resource_dir("schemas") / "recipe.schema.json").read_text())
    assert set(schema["properties"]["source"]["properties"]["layout"]["enum"]) == {"auto", *LAYOUT_NAMES}
    for name in ("auto", *LAYOUT_NAMES):
        assert _parser().parse_args(["build", "--output", "out", "--layout", name]).layout == name
    with pytest.raises(SystemExit):
        _parser().parse_args(["build", "--output", "out", "--layout", "nifti"])
    assert "invalid choice: 'nifti'" in capsys.readouterr().err
    assert sorted(layout.name for layout in LAYOUTS) == list(LAYOUT_NAMES)


def test_get_layout_names_the_known_layouts():
    assert get_layout("multilabel").name == "multilabel"
    with pytest.raises(ValueError, match=r"layout: found 'nifti', expected one of \('dicom', 'multilabel', 'totalseg'\)"):
        get_layout("nifti")


def test_the_unknown_layout_message_lists_every_layout():
    assert expected_layouts() == ("ct/mr volume + segmentations/, image + labels + labels.json, "
                                  "or dicom/ + segmentations/")
