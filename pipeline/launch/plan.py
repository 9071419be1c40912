"""Planning a build: which units to run, in which mode, from what is stored.

:func:`plan_units` plans every unit's cases and proposes its mode (``build`` / ``keep`` /
``done``, :mod:`pipeline.engine.units`) from the receipts an earlier build left
(:mod:`pipeline.engine.state`); stored shards another unit would overwrite are moved aside
first.  The plans go to the workers as plan files (:func:`write_plans`), or stay in memory
when the units run in the launcher's process.  The launcher plans with the cyclic garbage collector paused
(:class:`PlanningCollector`).
"""

from __future__ import annotations

import dataclasses
import gc
from collections import Counter

from pipeline.engine import kept_text, ood, state
from pipeline.engine.units import PlannedCase, UnitRef, plan_digest, write_plan
from pipeline.io import shards
from pipeline.schema.layout import (
    DEAD_LETTERS_DIR,
    DEAD_UNITS_DIR,
    PLAN_DIR,
    REPORT_DIR,
    UNITS_DIR,
)


class PlanningCollector:
    """The cyclic garbage collector around the launcher's planning.

    Planning a large input creates long-lived objects by the million (a 750K-image tree:
    its images, fingerprints, plans); every full collection would walk them all again.
    The collector is paused while planning, and what planning left is then parked in the
    permanent generation (``gc.freeze``) for the run, so collections while the runner
    works skip it.  Everything is restored on exit (``gc.unfreeze``): nothing is kept
    alive that reference counting would free anyway.
    """

    def __enter__(self):
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def planned(self) -> None:
        """Before each pipeline attempt, once its unit plans are written."""
        if self._was_enabled:
            gc.enable()
        gc.freeze()

    def __exit__(self, *exc):
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()


def clean_temporaries(output: str, kind) -> None:
    """Remove temporary files a killed worker may have left (never under a final name)."""
    folders = [*kind.configs, UNITS_DIR, PLAN_DIR, DEAD_LETTERS_DIR, DEAD_UNITS_DIR, REPORT_DIR, ""]
    for folder in folders:
        pattern = f"{folder}/*{shards.TMP_MARK}*" if folder else f"*{shards.TMP_MARK}*"
        found = shards.match(output, pattern)
        if found:
            shards.delete(found)


def plan_units(output: str, kind, planned, fps, qa_fp: str, before_run, sizes=None, loose=None):
    """Refs (with proposed modes) and plans for every unit; sources that another unit
    would overwrite are moved aside first.  ``before_run(units)`` (the kind's launcher
    step) returns extras for the context, and per-case question choices under
    ``"case_extras"`` that go into the plan lines.  ``sizes``: input bytes per case key
    (each unit's ``input_bytes``, its weight when the units are dealt to workers).
    ``loose``: each case's fingerprint without its files' modification times (kinds with
    ``content_digest``): a case stored under another fingerprint but this loose one is
    planned with its stored rows and ``recheck`` (the worker keeps them only if the case's
    files still hold the content digest they were extracted from).
    Returns ``(refs, number of stored cases, extras, plans)``: ``plans`` maps each unit's
    id to its planned cases, which :func:`write_plans` writes for workers in other
    processes; a run in this process takes them as they are (the same values: the plan
    files' JSON gives back what went in, ``tests/test_incremental.py``)."""
    receipts = state.load_receipts(output)
    index = state.StoredIndex.load(output, receipts, kind.stored_configs)
    # per unit: its ref, cases, their keys and where an earlier build stored each case
    units = []
    for split, i, n, members in planned:
        case_keys = [kind.case_key(c) for c in members]
        ref = UnitRef(split, i, n, len(members),
                      input_bytes=sum(sizes.get(k, 0) for k in case_keys) if sizes else 0)
        found = [index.lookup(key, fps[key]) for key in case_keys] if len(index) else ()
        recheck = [False] * len(members)
        if loose and found:
            for j, key in enumerate(case_keys):
                if found[j] is None:
                    found[j] = index.lookup_loose(key, loose[key])
                    recheck[j] = found[j] is not None
        stored = [dict(s.locations) if s else None for s in found] or [None] * len(members)
        contents = [s.content if s else "" for s in found] or [""] * len(members)
        units.append((ref, members, case_keys, stored, (contents, recheck)))
    # Which files does this run write?  Stored rows read from one of them by another unit
    # must be moved aside before the run.
    writes = {ref.shard(c): ref.unit_id for ref, *_ in units
              for c in (*kind.pixel_configs, *kind.text_configs)}
    hazards = set()
    for ref, _, _, stored, _ in units:
        uid = ref.unit_id  # (a property: made once a unit, not twice a case)
        for where in stored:
            for path, _ in (where or {}).values():
                if writes.get(path, uid) != uid:
                    hazards.add(path)
    if hazards:
        entries = []
        for name, receipt in receipts.items():
            got = state.sources_of(receipt, kind.stored_configs) if name != "benchmark.json" else None
            if got:
                entries.append({"cases": got[0], "locations": got[1]})
        moved = state.move_aside(output, hazards, entries)
        for _, _, _, stored, _ in units:
            for n, where in enumerate(stored):
                if where and any(p in moved for p, _ in where.values()):
                    stored[n] = {c: (moved.get(p, p), sha) for c, (p, sha) in where.items()}
    extras = dict(before_run([(ref, members) for ref, members, *_ in units]))
    case_extras = extras.pop("case_extras", {})
    refs, plans = [], {}
    n_stored = sum(1 for *_, stored, _ in units for where in stored if where)
    for ref, members, case_keys, stored, (contents, recheck) in units:
        cases = [PlannedCase(c, fps[key], where, content, case_extras.get(key),
                             loose[key] if loose else "", again)
                 for c, key, where, content, again in zip(members, case_keys, stored, contents,
                                                          recheck)]
        mode = _propose(ref, cases, receipts, kind, qa_fp)
        ref = dataclasses.replace(ref, mode=mode)
        plans[ref.unit_id] = cases
        if mode != "done":
            for rel in (ref.receipt,):
                if shards.exists(output, rel):
                    shards.delete([shards.join(output, rel)])
        refs.append(ref)
    # ood shards a unit may keep as they are (the receipts deleted above named them)
    extras["ood_stored"] = ood.stored_shards(receipts, refs)
    extras["text_stored"] = kept_text.stored(receipts, refs, kind)  # shards kept as they are
    return refs, n_stored, extras, plans


def write_plans(output: str, refs, plans, kind) -> None:
    """Every unit's plan file (``.radvqa/plan/<unit>.jsonl``), read by the workers: only
    for a run outside this process (10K images: 0.08 s to write, 0.06 s to read back)."""
    for ref in refs:
        write_plan(output, ref, plans[ref.unit_id], kind)


def _propose(ref: UnitRef, cases, receipts, kind, qa_fp: str) -> str:
    """``done`` / ``keep`` / ``build`` from the unit's last receipts (workers verify)."""
    digest = plan_digest(cases, kind)
    full = receipts.get(f"{ref.unit_id}.json")
    if full and full.get("planned") == digest and full.get("qa_fp") == qa_fp:
        return "done"  # the worker verifies every file
    ext = receipts.get(f"{ref.unit_id}.extract.json")
    if kind.pixel_configs and ext and ext.get("planned") == digest:
        return "keep"
    return "build"


def log_plan(refs, n_stored: int, log, n_recheck: int = 0) -> None:
    """One line: how many units are built, keep their pixels, or are unchanged."""
    modes = Counter(r.mode for r in refs)
    recheck = (f" ({n_recheck} whose files' times changed: kept if their bytes did not)"
               if n_recheck else "")
    log(f"  units: {modes.get('build', 0)} to build, {modes.get('keep', 0)} with stored pixels, "
        f"{modes.get('done', 0)} unchanged; {n_stored} case(s) stored by an earlier build{recheck}")
