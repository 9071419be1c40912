"""Running a build's units in the launcher's process, without Beam (:func:`run_in_process`).

The launcher takes this way when Beam would only add its start-up: a regenerate after
editing templates, pools or splits (``pipeline.launch.build.in_process``).  The units run
one after another through :mod:`pipeline.engine.execute`'s functions, as Beam's
``BuildCorpus`` would run them — the same files.  Each unit's text shards, their
learned-baseline samples and its receipt are written by :class:`Behind`'s thread while
the next unit renders: Arrow encodes, compresses and writes a shard with the GIL released,
so the two overlap on two cores (a 10K-image tree's regenerate: three ``instruct`` shards,
0.08 s of CPU).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from pipeline.engine import qa_blocks
from pipeline.engine.execute import (
    extract_unit,
    process_unit,
    read_payload,
    render_unit,
    unit_candidates,
)
from pipeline.engine.units import BuildContext, UnitRef
from pipeline.qa.balance import rules_from

#: The records are kept between the in-process passes while their tables total at most
#: this: as dicts they take 7x (radvuqa's 60 patients: 11 MB of Arrow, 77 MB of dicts,
#: made again in 0.17 s; measured).
RECORDS_KEPT_BYTES = 16 * 2**20


def run_in_process(refs: Sequence[UnitRef], ctx: BuildContext, kind, reuse_blocks: bool = True,
                   plans: Mapping | None = None) -> list[dict]:
    """What ``pipeline.beam.transforms.BuildCorpus`` runs, in this process without Beam:
    every unit extracted (kept pixels verified), the corpus-wide balancing rules from all
    units' candidates, every unit rendered, then the kind's finishing step: the same files.
    The launcher uses it when Beam would only add its start-up (``pipeline.launch.build``),
    handing over the units' ``plans`` by unit id (no plan files).  Returns receipts."""
    plans = plans or {}  # (none: the plan files)
    if kind.balanced:
        extracted = []
        for ref in refs:
            ex = extract_unit(ref, ctx, kind, plans.get(ref.unit_id))
            ex.payload = None  # as the DoFn does: rendering reads the shards
            extracted.append((ref, ex))
        rules = None  # every unit unchanged (its receipt stands): nothing renders, no rules
        blocks = qa_blocks.for_run(extracted, ctx, kind) if reuse_blocks else None
        if any(ex.done is None for _, ex in extracted):
            # families whose finished rows are stored for every unit are left out of the
            # candidates and the rendering: their blocks are merged in (qa_blocks)
            cctx = blocks.context(ctx) if blocks is not None else ctx
            candidates, held = [], 0
            for ref, ex in extracted:
                # the tables without pixels, read once for both passes (what the rendering
                # DoFn reads from the shards; 0.05 s of a sample's regenerate, measured)
                ex.payload = read_payload(ctx.output, ex.report, kind)
                records = kind.records(ex.payload, ref.split, ctx)
                held += sum(t.nbytes for t in ex.payload.values())
                ex.records = records if held <= RECORDS_KEPT_BYTES else None
                candidates += unit_candidates(ref, ex.report, cctx, kind, records=records)
            rules = rules_from(candidates, ctx.pools)
    behind = Behind()
    try:
        if kind.balanced:
            try:
                receipts = [render_unit(ref, ex, ctx, kind, rules, blocks, behind)[0]
                            for ref, ex in extracted]
            except qa_blocks.Unreadable:  # a stored block went missing: every family again
                behind.join()
                return run_in_process(refs, ctx, kind, reuse_blocks=False, plans=plans)
        else:
            receipts = [process_unit(ref, ctx, kind, plans.get(ref.unit_id), behind)[0]
                        for ref in refs]
        if kind.finish is not None:  # beside the last unit's writing: what it reads of the
            kind.finish(ctx, receipts)  # receipts (their units and cases) is there already
    finally:
        behind.join()  # every unit's files written, and what failed raised
    return receipts


class Behind:
    """Units' writing done by one thread behind the caller's rendering (:func:`run_in_process`):
    Arrow writes and compresses a shard with the GIL released, so the next unit renders
    meanwhile (a 10K-image tree's regenerate: three ``instruct`` shards, 0.08 s of CPU).
    One unit's writing at a time: :meth:`run` waits for the one before, so at most one
    unit's tables wait to be written.  :meth:`join` waits for the last and raises what
    failed in it."""

    #: Writing of fewer bytes is done in the caller's thread, not behind it (:meth:`run`):
    #: the sample's units (~0.1 MB) gained nothing from a thread and cost 5-10 ms of CPU
    #: more in all (measured); the 10K-image tree's units hold 3-25 MB.
    MIN_BYTES = 1 << 20

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def run(self, fn, nbytes: int | None = None) -> None:
        """``fn()`` on the thread, once the one before has ended; here and now instead when
        ``nbytes`` (what it writes) is given and under :data:`MIN_BYTES`."""
        if nbytes is not None and nbytes < self.MIN_BYTES:
            fn()
            return
        self.join()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            fn()
        except BaseException as err:  # raised again in the caller's thread by join()
            self._error = err

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None:
            raise err
