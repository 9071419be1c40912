"""Each Beam transform under TestPipeline (FnApiRunner), main and dead-letter outputs."""

from __future__ import annotations

import os
import shutil

import apache_beam as beam
import pytest
import SimpleITK as sitk
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.beam.transforms import DEAD, ExtractUnitFn, RenderQuestionsFn
from pipeline.engine.extract import SliceSettings
from pipeline.engine.units import BuildContext, PlannedCase, UnitRef, write_plan
from pipeline.inputs.discovery import discover_cases
from pipeline.kinds.base import Kind
from pipeline.kinds.registry import KINDS, get_kind

OPTIONS = PipelineOptions(["--runner=FnApiRunner"])


@pytest.fixture()
def two_cases(tmp_path, pyradiomics_data):
    """A real lung CT case and a case whose mask is on another grid, planned as one unit."""
    root = tmp_path / "in"
    for name in ("good", "bad"):
        (root / name / "segmentations").mkdir(parents=True)
        shutil.copy(pyradiomics_data / "lung2_image.nrrd", root / name / "ct.nrrd")
    shutil.copy(pyradiomics_data / "lung2_label.nrrd", root / "good" / "segmentations" / "lung_nodules.nrrd")
    label = sitk.ReadImage(str(pyradiomics_data / "lung2_label.nrrd"))
    sitk.WriteImage(label[:, :, 1:], str(root / "bad" / "segmentations" / "lung_nodules.nrrd"))
    cases, rejected = discover_cases(str(root), pseudonym_key="k")
    assert not rejected
    from pipeline.config.recipes import load_recipe
    from pipeline.kinds.base import load_questions

    families, pools = load_questions(load_recipe("sample"))
    ctx = BuildContext(
        kind="slices", output=str(tmp_path / "out"), input_root=str(root),
        settings=SliceSettings(planes=("axial",), ct_windows=("lung",), max_per_volume=3),
        families=families, pools=pools, seed=1,
    )
    ref = UnitRef("train", 0, 1, len(cases))
    write_plan(ctx.output, ref, [PlannedCase(c, "fp") for c in cases], get_kind("slices"))
    return ref, ctx, {c.source: c.key for c in cases}


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_extract_and_render_fns_emit_receipts_and_dead_letters(two_cases):
    ref, ctx, case_keys = two_cases
    with BeamTestPipeline(options=OPTIONS) as p:
        out = (p | beam.Create([ref])
               | "Extract" >> beam.ParDo(ExtractUnitFn(ctx)).with_outputs(DEAD, main="units"))
        summary = out.units | beam.Map(
            lambda e: (e[0].unit_id, e[1].report["counts"]["read"]["rejected_by_reason"],
                       e[1].payload is None, sorted(e[1].report["cases"])))
        assert_that(summary, equal_to([(ref.unit_id, {"mask.geometry_mismatch": 1}, True,
                                        [case_keys["good"]])]), label="extracted")
        letters = out[DEAD] | beam.Map(lambda d: (d["case_key"], d["stage"], d["reason"], d["source"]))
        assert_that(letters, equal_to([(case_keys["bad"], "read", "mask.geometry_mismatch",
                                        "bad/segmentations/lung_nodules.nrrd")]), label="dead_letters")
        rendered = out.units | "Render" >> beam.ParDo(RenderQuestionsFn(ctx)).with_outputs(
            DEAD, main="receipts")
        assert_that(rendered.receipts | beam.Map(lambda r: (r["unit"], r["rows"]["qa"] > 0)),
                    equal_to([(ref.unit_id, True)]), label="receipts")
        assert_that(rendered[DEAD], equal_to([]), label="no_qa_dead_letters")
    # The unit's shards, receipts and dead-letter parts under their final names, nothing temporary
    # (the progress markers are build state the launcher removes when the build ends).
    assert [f for f in _files(ctx.output) if not f.startswith(".radvqa/progress/")] == [
        ".radvqa/learned-keys/qa/train-00000-of-00001.npz",  # the learned audit's sample of qa
        ".radvqa/plan/train-00000-of-00001.jsonl",
        ".radvqa/units/train-00000-of-00001.extract.json",
        ".radvqa/units/train-00000-of-00001.json",
        "dead_letters/units/train-00000-of-00001.extract.jsonl",
        "dead_letters/units/train-00000-of-00001.qa.jsonl",
        "images/train-00000-of-00001.parquet",
        "qa/train-00000-of-00001.parquet",
        "structures/train-00000-of-00001.parquet",
    ]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_registered_kind_has_every_member_of_the_kind_protocol(name):
    kind = get_kind(name)
    assert isinstance(kind, Kind), sorted(m for m in dir(Kind) if not hasattr(kind, m))
    assert kind.name == name and kind.configs and set(kind.schemas) <= set(kind.configs)
    assert kind.finish is None or callable(kind.finish)
