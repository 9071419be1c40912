"""The thin Beam shell: DoFns and PTransforms around :mod:`pipeline.units`.

Shape of the build (element shape after each labelled step)::

    PlanUnits          Unit                          (small: case paths and keys)
    SpreadUnits        Unit                          (Reshuffle: units only, no pixels)
    ExtractSlices      (Unit, [record], report)      writes images/ and structures/ shards
                       + dead_letters: dict
    RenderQuestions    report                        writes qa/ shard and the unit's receipt
                       + dead_letters: dict
    CollectDeadLetters [dict]                         (small rows only)
    WriteDeadLetters   -                             dead_letters/dead_letters.jsonl

No pixel data crosses a shuffle: each unit's images are encoded, written and
dropped inside ``ExtractSlices``; ``RenderQuestions`` fuses with it.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline import shards
from pipeline.units import UNITS_DIR, BuildContext, Unit, extract_unit, render_unit

DEAD = "dead_letters"
DEAD_LETTERS_FILE = "dead_letters/dead_letters.jsonl"
NAMESPACE = "radvqa"


class ExtractUnitFn(beam.DoFn):
    """Unit -> (unit, records, report); dead letters on the ``dead_letters`` tag."""

    def __init__(self, ctx: BuildContext):
        self._ctx = ctx
        self._cases = Metrics.counter(NAMESPACE, "cases")
        self._rejected = Metrics.counter(NAMESPACE, "cases_rejected")
        self._images = Metrics.counter(NAMESPACE, "images")

    def process(self, unit: Unit):
        records, report, dead = extract_unit(unit, self._ctx)
        self._cases.inc(len(unit.cases))
        self._rejected.inc(len(dead))
        self._images.inc(len(records))
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        yield unit, records, report


class RenderQuestionsFn(beam.DoFn):
    """(unit, records, report) -> report; writes the qa shard and the unit receipt."""

    def __init__(self, ctx: BuildContext):
        self._ctx = ctx
        self._qa = Metrics.counter(NAMESPACE, "qa_rows")

    def process(self, element):
        unit, records, report = element
        report, dead = render_unit(unit, records, report, self._ctx)
        self._qa.inc(report["rows"]["qa"])
        shards.write_json(self._ctx.output, f"{UNITS_DIR}/{unit.unit_id}.json", report)
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        yield report


def write_dead_letters(letters: list[dict], output: str) -> int:
    """Write every dead letter, sorted, as JSON lines; returns how many."""
    import json

    ordered = sorted(letters, key=lambda d: (d["stage"], d["case_key"], d["source"], d["reason"]))
    text = "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n" for d in ordered)
    shards.write_bytes(output, DEAD_LETTERS_FILE, text.encode("utf-8"))
    return len(ordered)


class BuildCorpus(beam.PTransform):
    """Units -> shards on disk; returns ``{"reports": …, "dead_letters": …}``."""

    def __init__(self, units: list[Unit], ctx: BuildContext, planned_dead: list[dict] = ()):
        super().__init__()
        self._units = list(units)
        self._ctx = ctx
        self._planned_dead = list(planned_dead)

    def expand(self, pbegin):
        units = (
            pbegin
            | "PlanUnits" >> beam.Create(self._units)
            | "SpreadUnits" >> beam.Reshuffle()
        )
        extracted = units | "ExtractSlices" >> beam.ParDo(ExtractUnitFn(self._ctx)).with_outputs(
            DEAD, main="units"
        )
        rendered = extracted.units | "RenderQuestions" >> beam.ParDo(
            RenderQuestionsFn(self._ctx)
        ).with_outputs(DEAD, main="reports")
        planned = pbegin | "PlannedRejects" >> beam.Create(self._planned_dead)
        dead = (planned, extracted[DEAD], rendered[DEAD]) | "MergeDeadLetters" >> beam.Flatten()
        _ = (
            dead
            | "CollectDeadLetters" >> beam.combiners.ToList()
            | "WriteDeadLetters" >> beam.Map(write_dead_letters, self._ctx.output)
        )
        return {"reports": rendered.reports, "dead_letters": dead}


# ------------------------------------------------------------ labelled 2D trees


class TreeUnitFn(beam.DoFn):
    """TreeUnit -> report; writes alignment/instruct shards and the receipt."""

    def __init__(self, ctx):
        self._ctx = ctx
        self._images = Metrics.counter(NAMESPACE, "images")
        self._qa = Metrics.counter(NAMESPACE, "qa_rows")

    def process(self, unit):
        from pipeline.tree_units import run_tree_unit

        report, dead = run_tree_unit(unit, self._ctx)
        self._images.inc(report["rows"]["cases"])
        self._qa.inc(report["rows"]["instruct"] + report["rows"]["alignment"])
        shards.write_json(self._ctx.output, f"{UNITS_DIR}/{unit.unit_id}.json", report)
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        yield report


class BenchmarkFn(beam.DoFn):
    """Writes the stratified benchmark from the launcher's plan (small: ~1,000 images)."""

    def __init__(self, ctx):
        self._ctx = ctx

    def process(self, _):
        from pipeline.tree_units import run_benchmark_unit

        report = run_benchmark_unit(self._ctx)
        shards.write_json(self._ctx.output, f"{UNITS_DIR}/benchmark.json", report)
        yield report


class BuildTreeCorpus(beam.PTransform):
    """TreeUnits -> alignment, instruct and benchmark shards; dead letters written."""

    def __init__(self, units, ctx, planned_dead=(), with_benchmark=True):
        super().__init__()
        self._units = list(units)
        self._ctx = ctx
        self._planned_dead = list(planned_dead)
        self._with_benchmark = with_benchmark

    def expand(self, pbegin):
        units = pbegin | "PlanTreeUnits" >> beam.Create(self._units) | "SpreadTreeUnits" >> beam.Reshuffle()
        rendered = units | "RenderTreeUnits" >> beam.ParDo(TreeUnitFn(self._ctx)).with_outputs(
            DEAD, main="reports")
        if self._with_benchmark:
            _ = pbegin | "BenchmarkSeed" >> beam.Create([None]) | "WriteBenchmark" >> beam.ParDo(
                BenchmarkFn(self._ctx))
        planned = pbegin | "PlannedTreeRejects" >> beam.Create(self._planned_dead)
        dead = (planned, rendered[DEAD]) | "MergeTreeDeadLetters" >> beam.Flatten()
        _ = (
            dead
            | "CollectTreeDeadLetters" >> beam.combiners.ToList()
            | "WriteTreeDeadLetters" >> beam.Map(write_dead_letters, self._ctx.output)
        )
        return {"reports": rendered.reports, "dead_letters": dead}


# ------------------------------------------------------- volume-level (3D-RAD)


class ExtractVolumesFn(beam.DoFn):
    """VolumeUnit -> (unit, facts, report); writes the unit's volumes shard."""

    def __init__(self, ctx):
        self._ctx = ctx

    def process(self, unit):
        from pipeline.volume_units import extract_volume_unit

        records, report, dead = extract_volume_unit(unit, self._ctx)
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        yield unit, records, report


class RenderVolumeQAFn(beam.DoFn):
    """(unit, facts, report) + balancing thresholds -> report; writes qa shard and receipt."""

    def __init__(self, ctx):
        self._ctx = ctx

    def process(self, element, thresholds):
        from pipeline.volume_units import render_volume_unit

        unit, records, report = element
        report = render_volume_unit(unit, records, report, self._ctx, dict(thresholds))
        shards.write_json(self._ctx.output, f"{UNITS_DIR}/{unit.unit_id}.json", report)
        yield report


def _thresholds(candidate_lists):
    from pipeline.volume_qa import balance_thresholds

    flat = [tuple(c) for lst in candidate_lists for c in lst]
    return list(balance_thresholds(flat).items())


class BuildVolumeCorpus(beam.PTransform):
    """Patient units -> volumes and qa shards, existence balanced over the whole corpus.

    The balancing thresholds are a side input computed from every unit's small
    existence candidates (split, finding, answer, keyed u): exact 50/50 per
    finding and split, independent of shards, bundles and workers.
    """

    def __init__(self, units, ctx, planned_dead=()):
        super().__init__()
        self._units = list(units)
        self._ctx = ctx
        self._planned_dead = list(planned_dead)

    def expand(self, pbegin):
        from pipeline.volume_units import existence_candidates

        ctx = self._ctx
        units = pbegin | "PlanVolumeUnits" >> beam.Create(self._units) | "SpreadVolumeUnits" >> beam.Reshuffle()
        extracted = units | "ExtractVolumes" >> beam.ParDo(ExtractVolumesFn(ctx)).with_outputs(
            DEAD, main="units")
        thresholds = (
            extracted.units
            | "ExistenceCandidates" >> beam.Map(
                lambda e: existence_candidates(e[1], ctx.families, ctx.pools, ctx.seed, ctx.qa_settings))
            | "CollectCandidates" >> beam.combiners.ToList()
            | "BalanceThresholds" >> beam.Map(_thresholds)
        )
        reports = extracted.units | "RenderVolumeQuestions" >> beam.ParDo(
            RenderVolumeQAFn(ctx), thresholds=beam.pvalue.AsSingleton(thresholds))
        planned = pbegin | "PlannedVolumeRejects" >> beam.Create(self._planned_dead)
        dead = (planned, extracted[DEAD]) | "MergeVolumeDeadLetters" >> beam.Flatten()
        _ = (dead | "CollectVolumeDeadLetters" >> beam.combiners.ToList()
             | "WriteVolumeDeadLetters" >> beam.Map(write_dead_letters, ctx.output))
        return {"reports": reports, "dead_letters": dead}
