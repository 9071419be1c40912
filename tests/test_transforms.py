"""Each Beam transform under TestPipeline (FnApiRunner), main and dead-letter outputs."""

from __future__ import annotations

import json
import shutil

import apache_beam as beam
import pytest
import SimpleITK as sitk
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.extract import SliceSettings
from pipeline.sources import discover_cases
from pipeline.transforms import DEAD, DEAD_LETTERS_FILE, ExtractUnitFn, write_dead_letters
from pipeline.units import BuildContext, plan_units

OPTIONS = PipelineOptions(["--runner=FnApiRunner"])


@pytest.fixture()
def two_cases(tmp_path, pyradiomics_data):
    """A real lung CT case and a case whose mask is on another grid."""
    root = tmp_path / "in"
    for name in ("good", "bad"):
        (root / name / "segmentations").mkdir(parents=True)
        shutil.copy(pyradiomics_data / "lung2_image.nrrd", root / name / "ct.nrrd")
    shutil.copy(pyradiomics_data / "lung2_label.nrrd", root / "good" / "segmentations" / "lung_nodules.nrrd")
    label = sitk.ReadImage(str(pyradiomics_data / "lung2_label.nrrd"))
    sitk.WriteImage(label[:, :, 1:], str(root / "bad" / "segmentations" / "lung_nodules.nrrd"))
    cases, rejected = discover_cases(str(root), pseudonym_key="k")
    assert not rejected
    ctx = BuildContext(
        output=str(tmp_path / "out"), input_root=str(root),
        settings=SliceSettings(planes=("axial",), ct_windows=("lung",), max_per_volume=3),
        families={}, pools=None, seed=1,
    )
    (unit,) = plan_units(cases, {"train": 1.0}, 1, 10)
    return unit, ctx, {c.source: c.key for c in cases}


def test_extract_unit_fn_emits_records_and_dead_letters(two_cases):
    unit, ctx, case_keys = two_cases
    with BeamTestPipeline(options=OPTIONS) as p:
        out = (
            p | beam.Create([unit])
            | beam.ParDo(ExtractUnitFn(ctx)).with_outputs(DEAD, main="units")
        )
        summary = out.units | beam.Map(
            lambda e: (e[0].unit_id, len(e[1]) > 0, e[2]["counts"]["read"]["rejected"],
                       e[2]["counts"]["read"]["rejected_by_reason"],
                       all("image" not in r for r in e[1]))
        )
        assert_that(summary, equal_to([(unit.unit_id, True, 1, {"mask.geometry_mismatch": 1}, True)]),
                    label="records")
        letters = out[DEAD] | beam.Map(lambda d: (d["case_key"], d["stage"], d["reason"], d["source"]))
        assert_that(
            letters,
            equal_to([(case_keys["bad"], "read", "mask.geometry_mismatch",
                       "bad/segmentations/lung_nodules.nrrd")]),
            label="dead_letters",
        )
    # The unit's shards were written under their final names, nothing temporary left.
    out_dir = ctx.output
    import os

    written = sorted(os.path.relpath(os.path.join(d, f), out_dir)
                     for d, _, fs in os.walk(out_dir) for f in fs)
    assert written == ["images/train-00000-of-00001.parquet", "structures/train-00000-of-00001.parquet"]


def test_dead_letters_are_written_sorted(tmp_path):
    letters = [
        {"case_key": "b", "source": "x", "stage": "read", "reason": "r", "error_type": "E", "message": "m"},
        {"case_key": "a", "source": "y", "stage": "read", "reason": "r", "error_type": "E", "message": "m"},
    ]
    assert write_dead_letters(letters, str(tmp_path)) == 2
    lines = (tmp_path / DEAD_LETTERS_FILE).read_text().splitlines()
    assert [json.loads(line)["case_key"] for line in lines] == ["a", "b"]
    assert write_dead_letters(list(reversed(letters)), str(tmp_path)) == 2
    assert (tmp_path / DEAD_LETTERS_FILE).read_text().splitlines() == lines
    assert [p.name for p in (tmp_path / "dead_letters").iterdir()] == ["dead_letters.jsonl"]
