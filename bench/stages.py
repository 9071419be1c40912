"""Per-stage throughput of the ``slices`` kind: pipeline vs a plain single-process loop.

Stages, each timed over the same units (the recipe's shards) of the same phantom cases:

``volumes``
    read + canonicalise + masks: :func:`pipeline.engine.extract.load_case` for every case of
    every unit (the unit's plan read first, as the pipeline does).
``slices``
    select, window, encode PNG, boxes, and write the unit's ``images`` and ``structures``
    shards and extract receipt: :func:`pipeline.engine.execute.extract_unit` with the kind's
    per-case step replaced by :func:`pipeline.engine.extract.extract_case` on the case as
    ``load_case`` returned it, from a cache written before timing (so the volumes stage
    is not counted twice): its arrays memory-mapped from ``.npy`` files, the rest
    unpickled (:func:`read_loaded`).  Until ``read_loaded``, the whole case was unpickled:
    a fresh 43 MB copy a 1.5 mm case, 10.5K page faults a unit that a real unit's
    ``load_case`` does not make once its worker is warm (~350, measured), with the
    kernel's page zeroing on both workers' critical paths.
``QA``
    render questions and write the ``qa`` shards: the real ``BuildCorpus`` transform of
    :mod:`pipeline.beam.transforms` over units whose pixel shards are stored (``keep``), so
    extraction only verifies the stored shards' sha256 — exactly what ``radvqa
    regenerate`` runs after a template edit: candidates, corpus-wide balancing rules,
    :func:`pipeline.engine.execute.render_unit`.

Each stage runs four ways, all calling the same functions in the same order:

* ``plain loop``: one process, a ``for`` loop over the units (the practical limit);
* ``two plain loops`` (``volumes`` and ``slices``): two such loops at once, forked from the
  warmed-up bench process, each over its share of the units (largest first on the less
  loaded): what two workers could get from this very work on this machine without Beam —
  memory bandwidth and shared caches included, which the sha256 ceiling does not see;
* ``1 worker``: a Beam pipeline, FnApiRunner ``in_memory``;
* ``2 workers``: FnApiRunner ``multi_processing``, ``--direct_num_workers=2`` (Beam starts
  two new interpreters when the pipeline starts);
* ``2 warm workers``: ``radvqa build --workers 2`` (:mod:`pipeline.beam.warm`): FnApiRunner
  with two workers forked from a forkserver that preloaded them.  A build starts that
  forkserver before discovery, so its imports overlap the launcher's planning; here it is
  started before the first stage, and ``warm_preload_s`` (its start to its first fork) is
  reported beside the launcher's own time for these cases (``launcher_s``).

The ``volumes`` and ``slices`` pipelines have the shape of ``BuildCorpus``' extraction
(``SpreadUnits`` — each worker claims the next unit, largest first, when it is free —
→ one ``ParDo`` per unit); the ``QA`` pipeline is
``BuildCorpus`` itself.  Times are wall times of the whole run, Beam's start-up included;
Beam's fixed cost is measured separately with a no-op DoFn of the same shape.  One warm-up
unit runs in the loop first (imports, caches), untimed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import statistics
import time
from pathlib import Path

import apache_beam as beam

from bench.harness import (
    ROOT,
    RUNNERS,
    Launch,
    cached_dir,
    run_beam,
    source_digest,
    split_workers,
    startup_seconds,
    warm_preload_seconds,
)
from pipeline.beam.transforms import SpreadUnits
from pipeline.engine.units import claim_folder

STAGES = ("volumes", "slices", "QA")


# ------------------------------------------------------------------------ stage work


#: Arrays of at least this many bytes are kept beside a loaded case's pickle as ``.npy``
#: files and memory-mapped when it is read (:func:`write_loaded`, :func:`read_loaded`).
MAPPED_BYTES = 1 << 16
#: The loaded-case cache's layout (in its stamp: a change writes the cache again).
LOADED_LAYOUT = "pickle + memory-mapped npy arrays, 1"


def write_loaded(loaded, folder: Path, key: str) -> None:
    """``loaded`` (what ``load_case`` returns) as ``folder/<key>.pkl``, its arrays of
    :data:`MAPPED_BYTES` or more as ``folder/<key>.<n>.npy`` beside it (``np.save`` keeps
    a Fortran-ordered array Fortran-ordered, as pickle does)."""
    import numpy as np

    names: list[str] = []

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if type(obj) is np.ndarray and obj.nbytes >= MAPPED_BYTES:
                name = f"{key}.{len(names)}.npy"
                np.save(folder / name, obj, allow_pickle=False)
                names.append(name)
                return name
            return None

    with open(folder / f"{key}.pkl", "wb") as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(loaded)


def read_loaded(folder: str, key: str):
    """What :func:`write_loaded` wrote, its large arrays memory-mapped copy-on-write (as
    writable as ``load_case``'s own, the file never changed): reading a case costs its
    pages as the stage touches them, from the page cache, not a fresh copy of each array
    that the kernel must fault in and zero — which a warm worker's real ``load_case``
    does not pay either (its heap is reused: ~350 page faults a 1.5 mm case against the
    10.5K of unpickling its 43 MB, measured)."""
    import numpy as np

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, name):
            return np.load(os.path.join(folder, name), mmap_mode="c").view(np.ndarray)

    with open(os.path.join(folder, f"{key}.pkl"), "rb") as f:
        return _Unpickler(f).load()


def loaded_cases(launch: Launch, input_dir: Path) -> tuple[Path, float | None]:
    """Every case as ``load_case`` returns it, stored once under ``.cache/bench``
    (:func:`write_loaded`): the input of the isolated ``slices`` stage.  Written again when
    the input, any ``pipeline`` module or :data:`LOADED_LAYOUT` changes."""
    from pipeline.engine.extract import load_case
    from pipeline.engine.units import read_plan

    ctx, kind = launch.ctx, launch.kind

    def write(folder: Path) -> None:
        for ref in launch.refs:
            for pc in read_plan(ctx.output, ref, kind):
                write_loaded(load_case(pc.case, ctx.input_root, ctx.settings.max_voxels),
                             folder, pc.case.key)

    stamp = (input_dir / ".bench-stamp").read_text() + ":" + LOADED_LAYOUT + ":" + source_digest(
        *sorted(p.relative_to(ROOT) for p in (ROOT / "pipeline").glob("*.py")))
    return cached_dir(f"loaded-{input_dir.name}", stamp, write)


class LoadedSlicesKind:
    """The ``slices`` kind whose per-case step starts from a loaded case (see module doc)."""

    def __init__(self, cache: str):
        from pipeline.kinds.slices import KIND

        self._kind = KIND
        self._cache = cache

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._kind, name)

    def extract_case(self, case, split: str, ctx):
        from pipeline.engine.extract import extract_case
        from pipeline.schema.records import CaseResult

        volume, masks, digest, notes = read_loaded(self._cache, case.key)
        images, structures = extract_case(case, split, volume, masks, ctx.settings)
        return CaseResult({"images": images, "structures": structures}, digest, notes)


def load_volumes(ref, ctx) -> dict:
    """The ``volumes`` stage of one unit: its plan, then ``load_case`` for each case."""
    from pipeline.engine.extract import load_case
    from pipeline.engine.units import read_plan
    from pipeline.errors import CaseError
    from pipeline.kinds.registry import get_kind

    done = rejected = voxels = 0
    for pc in read_plan(ctx.output, ref, get_kind(ctx.kind)):
        try:
            volume, masks, _, _ = load_case(pc.case, ctx.input_root, ctx.settings.max_voxels)
        except CaseError:
            rejected += 1
            continue
        done += 1
        voxels += volume.array.size
    return {"volumes": done, "rejected": rejected, "voxels": voxels}


def extract_slices(ref, ctx, cache: str) -> dict:
    """The ``slices`` stage of one unit (writes its pixel shards and extract receipt)."""
    from pipeline.engine.execute import extract_unit

    report = extract_unit(ref, ctx, LoadedSlicesKind(cache)).report
    return {"slices": sum(f["rows"] for p, f in report["pixel_files"].items()
                          if p.startswith("images/"))}


class StageFn(beam.DoFn):
    """UnitRef -> a small dict of counts: one stage's work on one unit."""

    def __init__(self, work, *args):
        self._work = work
        self._args = args

    def process(self, ref):
        yield self._work(ref, *self._args)


# ------------------------------------------------------------------------- the runs


def _run_stage(refs, beam_args, work, *args) -> float:
    """Wall seconds of one stage pipeline (``SpreadUnits`` → ``work`` per unit), with its
    own claims folder, as :func:`pipeline.launch.runner.run_pipeline` makes one per run."""
    def build(pipeline):
        _ = (pipeline | "SpreadUnits" >> SpreadUnits(refs, claims)
             | "Stage" >> beam.ParDo(StageFn(work, *args)))

    with claim_folder() as claims:
        return run_beam(build, beam_args)


def _loop(refs, work, *args) -> tuple[float, float, dict, list[float]]:
    """``(wall s, CPU s, summed counts, CPU s of each unit)`` of ``work(ref, *args)`` for
    every unit in turn; CPU time well below wall time means the machine was busy."""
    t0, c0 = time.perf_counter(), time.process_time()
    totals: dict = {}
    per_unit = []
    for ref in refs:
        u0 = time.process_time()
        for k, v in work(ref, *args).items():
            totals[k] = totals.get(k, 0) + v
        per_unit.append(round(time.process_time() - u0, 3))
    return time.perf_counter() - t0, time.process_time() - c0, totals, per_unit


def _shares(refs, unit_seconds: list[float]) -> tuple[list[list], list[float]]:
    """``refs`` in two shares, largest first on the less loaded one (by the loop's CPU
    seconds of each unit), and each share's seconds: what the workers' claims make of them
    (``SpreadUnits``: a free worker claims the next unit, largest first)."""
    shares, loads = [[], []], [0.0, 0.0]
    for t, ref in sorted(zip(unit_seconds, refs), key=lambda p: -p[0]):
        i = loads.index(min(loads))
        shares[i].append(ref)
        loads[i] += t
    return shares, loads


def two_loops(refs, unit_seconds: list[float], work, *args) -> float:
    """Wall seconds of two plain loops at once, each over its share of ``refs``
    (:func:`_shares`), forked from this warmed-up process — no Beam at all.  Against one
    loop over every unit it is the most two workers can get from this very work on this
    machine (memory bandwidth and shared caches included, which the sha256 ceiling of
    ``run.parallel_ceiling`` does not see)."""
    t0 = time.perf_counter()
    pids = []
    for share in _shares(refs, unit_seconds)[0]:
        pid = os.fork()
        if pid == 0:  # the child: its share, then out without the parent's teardown
            code = 0
            try:
                _loop(share, work, *args)
            except BaseException:  # noqa: BLE001 — reported by the exit status
                code = 1
            os._exit(code)
        pids.append(pid)
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    if failed:
        raise RuntimeError(f"two plain loops: {len(failed)} of them failed")
    return time.perf_counter() - t0


def two_worker_bound(unit_seconds: list[float]) -> float:
    """The best 2-worker speedup the units' sizes allow (no start-up cost): total work
    over the longer of two workers' shares, units placed largest first on the less loaded
    worker (:func:`_shares`) — what the workers' claims do when each unit costs what it did
    in the loop.  Uneven units cap the scaling below 2x."""
    loads = _shares(unit_seconds, unit_seconds)[1]
    return sum(loads) / max(loads) if max(loads) else 0.0


def qa_loop(refs, ctx, kind) -> tuple[float, float]:
    """The QA stage in one process: what ``BuildCorpus`` runs, unit after unit;
    ``(wall s, CPU s)``."""
    from pipeline.beam.transforms import _rules
    from pipeline.engine import execute

    t0, c0 = time.perf_counter(), time.process_time()
    extracted = [execute.extract_unit(ref, ctx, kind) for ref in refs]
    candidates = [execute.unit_candidates(ref, e.report, ctx, kind) for ref, e in zip(refs, extracted)]
    rules = _rules(candidates, ctx.pools)  # BuildCorpus' BalanceThresholds step
    for ref, e in zip(refs, extracted):
        e.payload = None  # as ExtractUnitFn does: rendering reads the stored shards
        execute.render_unit(ref, e, ctx, kind, rules)
    return time.perf_counter() - t0, time.process_time() - c0


def _receipt_rows(ctx, refs, receipt: str, count) -> int:
    import json

    from pipeline.io import shards

    return sum(count(json.loads(shards.read_bytes(ctx.output, getattr(r, receipt))))
               for r in refs)


def slice_rows(ctx, refs) -> int:
    """Image rows the units' extract receipts record (what the slices stage wrote)."""
    return _receipt_rows(ctx, refs, "extract_receipt", lambda r: sum(
        f["rows"] for p, f in r["pixel_files"].items() if p.startswith("images/")))


def qa_rows(ctx, refs) -> int:
    """QA rows the units' receipts record (what the QA stage wrote)."""
    return _receipt_rows(ctx, refs, "receipt", lambda r: r["rows"]["qa"])


def _same(what: str, found: int, loop: int) -> None:
    """The pipeline did the loop's work: same row count, or the numbers mean nothing."""
    if found != loop:
        raise AssertionError(f"{what}: wrote {found} rows, the plain loop {loop}")


def measure(launch: Launch, input_dir: Path, log, runners: dict | None = None,
            qa: bool = True, rounds: int = 1) -> dict:
    """Every stage (``QA`` only when ``qa``), as a plain loop and on every runner of
    ``runners`` (default :data:`bench.harness.RUNNERS`); returns raw seconds and counts per
    stage and runner.  The ``slices`` stage's runners run ``rounds`` times, one after the
    other in turn (1 worker, 2 warm workers, 1 worker, …): its ``seconds`` are each
    runner's median, ``rounds`` each round's seconds, so a ratio of two runners can be
    taken within each round, where the machine's state is the most alike."""
    from pipeline.launch.runner import run_pipeline

    runners = RUNNERS if runners is None else runners

    ctx, kind, refs = launch.ctx, launch.kind, launch.refs
    if any(r.mode != "build" for r in refs):
        raise AssertionError(f"{ctx.output}: not an empty output folder (units to reuse)")
    # A --workers build starts its forkserver before discovery: here, before everything.
    preload_s = warm_preload_seconds()
    cache, cache_s = loaded_cases(launch, input_dir)
    out: dict = {"units": len(refs), "cases": launch.n_cases,
                 "launcher_s": round(launch.seconds, 3), "warm_preload_s": round(preload_s, 3),
                 "loaded_case_cache_written_s": None if cache_s is None else round(cache_s, 1),
                 "beam_startup_s": {name: round(startup_seconds(len(refs), args), 3)
                                    for name, args in runners.items()}}
    quiet = lambda msg: None  # noqa: E731 — run_pipeline's progress lines

    # volumes
    load_volumes(refs[0], ctx)  # warm-up
    log("  stage volumes: plain loop")
    seconds, cpu, counts, per_unit = _loop(refs, load_volumes, ctx)
    runs = {"plain loop": seconds}
    log("  stage volumes: two plain loops at once")
    runs["two plain loops"] = two_loops(refs, per_unit, load_volumes, ctx)
    for name, args in runners.items():
        log(f"  stage volumes: {name}")
        runs[name] = _run_stage(refs, args, load_volumes, ctx)
    out["volumes"] = {"items": counts["volumes"], "unit": "volumes", "seconds": runs,
                      "plain_loop_cpu_s": round(cpu, 3), "unit_cpu_s": per_unit,
                      "two_worker_bound": round(two_worker_bound(per_unit), 3),
                      "voxels": counts["voxels"]}

    # slices
    extract_slices(refs[0], ctx, str(cache))  # warm-up
    log("  stage slices: plain loop")
    seconds, cpu, counts, per_unit = _loop(refs, extract_slices, ctx, str(cache))
    runs = {"plain loop": seconds}
    log("  stage slices: two plain loops at once")
    runs["two plain loops"] = two_loops(refs, per_unit, extract_slices, ctx, str(cache))
    per_round = []
    for n in range(rounds):
        this = {}
        for name, args in runners.items():
            log(f"  stage slices: {name}" + (f" (round {n + 1} of {rounds})" if rounds > 1 else ""))
            this[name] = _run_stage(refs, args, extract_slices, ctx, str(cache))
            _same(f"slices stage, {name}", slice_rows(ctx, refs), counts["slices"])
        per_round.append(this)
    runs |= {name: statistics.median(r[name] for r in per_round) for name in runners}
    out["slices"] = {"items": counts["slices"], "unit": "slices", "seconds": runs,
                     "plain_loop_cpu_s": round(cpu, 3), "unit_cpu_s": per_unit,
                     "two_worker_bound": round(two_worker_bound(per_unit), 3),
                     "rounds": [{k: round(v, 3) for k, v in r.items()} for r in per_round]}

    if not qa:
        return _rounded(out, STAGES[:2])
    # QA, on the pixel shards the slices stage just wrote
    keep = [dataclasses.replace(r, mode="keep") for r in refs]
    qa_loop(keep[:1], ctx, kind)  # warm-up
    log("  stage QA: plain loop")
    seconds, cpu = qa_loop(keep, ctx, kind)
    runs = {"plain loop": seconds}
    rows = qa_rows(ctx, keep)
    for name, args in runners.items():
        log(f"  stage QA: {name}")
        beam_args, workers = split_workers(args)
        t0 = time.perf_counter()
        run_pipeline(keep, ctx, beam_args, quiet, workers=workers)
        runs[name] = time.perf_counter() - t0
        _same(f"QA stage, {name}", qa_rows(ctx, keep), rows)
    out["QA"] = {"items": rows, "unit": "QA rows", "seconds": runs,
                 "plain_loop_cpu_s": round(cpu, 3)}
    return _rounded(out, STAGES)


def _rounded(out: dict, stages: tuple[str, ...]) -> dict:
    for stage in stages:
        out[stage]["seconds"] = {k: round(v, 3) for k, v in out[stage]["seconds"].items()}
    return out
