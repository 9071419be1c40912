"""The thin Beam shell: DoFns and one PTransform around :mod:`pipeline.engine.execute`.

Shape of a build (element shape after each labelled step)::

    PlanUnits          UnitRef                      (small: identity, size, proposed mode;
                                                    local workers: PlanSlots, one slot each)
    SpreadUnits        UnitRef                      (descriptors only, no pixels: local workers
                                                    claim them one by one; else Reshuffle)
    ExtractUnits       (UnitRef, report)            writes pixel shards; dead letters tagged
    BalanceCandidates  [(split, group, answer, u)]  (small tuples, one list per unit)
    CollectCandidates  [[…]]                        (ToList: small)
    BalanceThresholds  rules                        (side input of RenderQuestions)
    RenderQuestions    receipt                      writes text shards and the unit receipt

Kinds without corpus-wide balancing (the labelled 2D tree) extract and render a unit in
one step, ``ProcessUnits``; kinds with a finishing step (the tree's benchmark) run
``Finish`` once every unit's receipt is in.  No pixel data crosses a shuffle: each unit's
images are encoded, written and dropped inside the worker that read them.  On Beam's local
runner with N workers, ``SpreadUnits`` gives each worker one slot from which it claims the
next unit whenever it is free (work balancing the runner does not do; see the class).
"""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from pipeline.beam.sampling import shorten_state_sampling
from pipeline.engine import execute
from pipeline.engine import units as U
from pipeline.kinds.registry import get_kind
from pipeline.qa.balance import rules_from

DEAD = "dead_letters"
NAMESPACE = "radvqa"

# A bundle's end joins Beam's state-sampler thread, which sleeps up to 200 ms by default:
# the end of every stage (pipeline.beam.sampling).
shorten_state_sampling()


class ExtractUnitFn(beam.DoFn):
    """UnitRef -> (UnitRef, Extracted); dead letters on the ``dead_letters`` tag."""

    def __init__(self, ctx: U.BuildContext):
        self._ctx = ctx
        self._cases = Metrics.counter(NAMESPACE, "cases")
        self._rejected = Metrics.counter(NAMESPACE, "cases_rejected")

    def process(self, ref: U.UnitRef):
        extracted = execute.extract_unit(ref, self._ctx, get_kind(self._ctx.kind))
        self._cases.inc(ref.n_cases)
        self._rejected.inc(len(extracted.dead))
        for letter in extracted.dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        extracted.payload = None  # pixels stay on this worker; rendering reads the shards
        yield ref, extracted


class RenderQuestionsFn(beam.DoFn):
    """(UnitRef, Extracted) + balancing rules -> receipt; writes text shards and receipt."""

    def __init__(self, ctx: U.BuildContext):
        self._ctx = ctx
        self._qa = Metrics.counter(NAMESPACE, "qa_rows")

    def process(self, element, rules=None):
        ref, extracted = element
        receipt, dead = execute.render_unit(ref, extracted, self._ctx, get_kind(self._ctx.kind), rules)
        self._qa.inc(receipt["rows"].get("qa", 0))
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        yield receipt


class ProcessUnitFn(beam.DoFn):
    """UnitRef -> receipt: extract and render in one call (no corpus-wide balancing)."""

    def __init__(self, ctx: U.BuildContext):
        self._ctx = ctx
        self._qa = Metrics.counter(NAMESPACE, "qa_rows")

    def process(self, ref: U.UnitRef):
        receipt, dead = execute.process_unit(ref, self._ctx, get_kind(self._ctx.kind))
        self._qa.inc(receipt["rows"].get("qa", 0))
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD, letter)
        yield receipt


class FinishFn(beam.DoFn):
    """Runs the kind's finishing step once, after every unit (e.g. the tree's benchmark)."""

    def __init__(self, ctx: U.BuildContext):
        self._ctx = ctx

    def process(self, _, receipts):
        report = get_kind(self._ctx.kind).finish(self._ctx, list(receipts))
        if report is not None:
            yield report


def _candidates(element, ctx):
    ref, extracted = element
    return execute.unit_candidates(ref, extracted.report, ctx, get_kind(ctx.kind))


def _rules(candidate_lists, pools):
    return rules_from((c for lst in candidate_lists for c in lst), pools)


def local_workers(options) -> int:
    """Worker processes of Beam's local runner (FnApiRunner / DirectRunner) under
    ``options``; 0 for any other runner (it balances work itself)."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    if name.rsplit(".", 1)[-1] not in ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner"):
        return 0
    n = options.view_as(DirectOptions).direct_num_workers
    return (os.cpu_count() or 1) if n == 0 else max(1, n)


def _claim(_slot, order, folder):
    return U.claim(order, folder)


class SpreadUnits(beam.PTransform):
    """Unit refs -> a PCollection of them spread over the workers.

    FnApiRunner hands each of its N local workers a fixed 1/N of a stage's input as one
    bundle (no work stealing: ``ParallelBundleManager`` partitions the input once), so any
    fixed deal leaves one worker idle at the end whenever the units' real cost differs
    from the estimate or the machine slows one process for a while.  On the local runner,
    therefore, the stage's input is N *slots* (grouped under N keys: one per worker) and
    each slot claims units lazily from one shared list, largest first
    (:func:`pipeline.engine.units.work_order`, :func:`pipeline.engine.units.claim`): the
    claiming generator is fused with the consumer ``ParDo`` in the same stage, so a worker
    claims its next unit only after processing the last, and whichever worker is free takes
    it — a worker that starts late simply claims less.  Claims are files in ``claims``
    (:func:`pipeline.engine.units.claim_folder`), which the caller makes for this run and
    removes after it: a new
    run (the launcher's retry) claims afresh.  On any other runner, ``Reshuffle`` (it
    balances work itself).  Outputs do not depend on which worker runs which unit.
    """

    def __init__(self, refs: list[U.UnitRef], claims: str | None = None):
        super().__init__()
        self._refs = list(refs)
        self._claims = claims

    def expand(self, pbegin):
        workers = local_workers(pbegin.pipeline.options)
        if workers <= 1:
            return pbegin | "PlanUnits" >> beam.Create(self._refs) | "Spread" >> beam.Reshuffle()
        if self._claims is None:
            raise ValueError(f"SpreadUnits on {workers} local workers needs a claims folder "
                             "(engine.units.claim_folder())")
        # Create's own Reshuffle (its default for more than one element) would be a second
        # shuffle stage before the GroupByKey that spreads the slots: one more round of
        # bundles on the critical path (a no-op pipeline on 2 warm workers: 0.30 -> 0.22 s
        # to its end, medians of 10 alternating runs, contended)
        return (pbegin | "PlanSlots" >> beam.Create([(slot, slot) for slot in range(workers)],
                                                    reshuffle=False)
                | "Spread" >> beam.GroupByKey()
                | "Claim" >> beam.FlatMap(_claim, U.work_order(self._refs), self._claims))


class BuildCorpus(beam.PTransform):
    """Unit descriptors -> shards and receipts on disk (``claims``: see :class:`SpreadUnits`).

    Returns ``{"receipts": PCollection[dict], "dead_letters": PCollection[dict]}``; the
    launcher reads the receipts back from the output (they are also written there).
    """

    def __init__(self, refs: list[U.UnitRef], ctx: U.BuildContext, claims: str | None = None):
        super().__init__()
        self._refs = list(refs)
        self._ctx = ctx
        self._claims = claims

    def expand(self, pbegin):
        ctx = self._ctx
        kind = get_kind(ctx.kind)
        refs = pbegin | "SpreadUnits" >> SpreadUnits(self._refs, self._claims)
        if kind.balanced:
            extracted = refs | "ExtractUnits" >> beam.ParDo(ExtractUnitFn(ctx)).with_outputs(
                DEAD, main="units")
            rules = (
                extracted.units
                | "BalanceCandidates" >> beam.Map(_candidates, ctx)
                | "CollectCandidates" >> beam.combiners.ToList()
                | "BalanceThresholds" >> beam.Map(_rules, ctx.pools)
            )
            rendered = extracted.units | "RenderQuestions" >> beam.ParDo(
                RenderQuestionsFn(ctx), rules=beam.pvalue.AsSingleton(rules)).with_outputs(
                DEAD, main="receipts")
            dead = (extracted[DEAD], rendered[DEAD]) | "MergeDeadLetters" >> beam.Flatten()
        else:
            rendered = refs | "ProcessUnits" >> beam.ParDo(ProcessUnitFn(ctx)).with_outputs(
                DEAD, main="receipts")
            dead = rendered[DEAD]
        if kind.finish is not None:
            inputs = rendered.receipts if kind.finish_input is None else (
                rendered.receipts | "FinishInputs" >> beam.Map(kind.finish_input))
            _ = (pbegin | "FinishSeed" >> beam.Create([None])
                 | "Finish" >> beam.ParDo(FinishFn(ctx), beam.pvalue.AsList(inputs)))
        return {"receipts": rendered.receipts, "dead_letters": dead}
