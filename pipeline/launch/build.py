"""The launcher: plan, run the Beam pipeline, finalise dead letters, audit, card, manifest.

Everything configurable is read and validated here, before any worker starts; workers
receive a pickled :class:`~pipeline.engine.units.BuildContext` and small unit descriptors.

A build reuses whatever an earlier build into the same output left that is still valid
(:mod:`pipeline.engine.state`): cases whose fingerprint is unchanged are copied from their
stored shards instead of being read and decoded again, units whose plan is unchanged keep
their pixel shards, and units whose questions are unchanged too are skipped.  So an
interrupted build rerun with the same arguments resumes, and ``radvqa regenerate`` after
editing a template or a pool re-renders only the questions — each giving the same bytes
as a fresh build.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline import __version__
from pipeline.config.recipes import Recipe, load_recipe, pool_paths, template_paths
from pipeline.core import keys
from pipeline.engine import state
from pipeline.engine.ood import settings as ood_settings
from pipeline.engine.units import (
    DEAD_LETTERS_FILE,
    DEAD_UNITS_DIR,
    PLAN_DIR,
    STATE_DIR,
    UNITS_DIR,
    BuildContext,
    PlannedCase,
    UnitRef,
    case_fingerprint,
    jsonl,
    sort_dead,
    write_plan,
)
from pipeline.errors import BuildFailed, ConfigError
from pipeline.inputs.tree import InputTree
from pipeline.io import shards
from pipeline.kinds.registry import get_kind, kind_name
from pipeline.launch.card import render_card
from pipeline.schema.arrow import SCHEMA_VERSION

MANIFEST = "manifest.json"
CARD = "README.md"
LAST_RUN = f"{STATE_DIR}/last_run.json"
DEFAULT_RUNNER = "FnApiRunner"
QA_VERSION = "2"


@dataclass
class BuildResult:
    output: str
    manifest: dict
    seconds: float
    reject_fraction: float
    exit_code: int
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ fingerprints


def _file_digest(paths) -> str:
    parts = []
    for root in paths:
        root = str(root)
        items = [root] if os.path.isfile(root) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(".")
        )
        for p in items:
            with open(p, "rb") as f:
                parts.append(os.path.relpath(p, os.path.dirname(root)) + ":" + keys.digest(f.read()))
    return keys.digest(*parts)


def fingerprint(recipe: Recipe, seed: int) -> str:
    """Recipe (its pseudonym key left out: the fingerprint is published), seed, template
    and pool contents and stage versions (not input data)."""
    return keys.digest(
        json.dumps(public_recipe(recipe.data), sort_keys=True), seed, _file_digest(template_paths(recipe)),
        _file_digest(pool_paths(recipe)), SCHEMA_VERSION, QA_VERSION, __version__,
    )


def beam_options(beam_args: Sequence[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args)


# ---------------------------------------------------------------------------- progress


class Progress:
    """Polls unit receipts while the runner blocks (``FnApiRunner.run()`` exposes no
    metrics mid-run); prints cases done / total, rate and ETA."""

    def __init__(self, output: str, units: list[tuple[str, int]], log, every: float = 2.0):
        self._paths = [f"{UNITS_DIR}/{unit_id}.json" for unit_id, _ in units]
        self._cases = [n for _, n in units]
        self._output, self._log, self._every = output, log, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def done(self) -> tuple[int, int]:
        units = cases = 0
        for path, n in zip(self._paths, self._cases):
            if shards.exists(self._output, path):
                units += 1
                cases += n
        return units, cases

    def _run(self):
        total = sum(self._cases)
        last = None
        while not self._stop.wait(self._every):
            units, cases = self.done()
            if (units, cases) == last:
                continue
            last = (units, cases)
            elapsed = time.monotonic() - self._start
            rate = cases / elapsed if elapsed > 0 else 0.0
            eta = f"{(total - cases) / rate:.0f} s" if rate > 0 else "-"
            self._log(f"  progress: {cases}/{total} cases in {units}/{len(self._paths)} units, "
                      f"{rate:.2f} cases/s, ETA {eta}")


# ------------------------------------------------------------------------------ running


class _Watchdog:
    """Turns a dead worker into an error instead of a hang.

    When a ``multi_processing`` worker dies, Beam's worker handler thread raises, but the
    runner's main loop keeps waiting for it forever.  The watchdog sees that thread's
    exception (``threading.excepthook``) and interrupts the main thread — again every
    two seconds until the launcher acknowledges, since an interrupt can land in code that
    swallows it — so the launcher can clean up and retry.
    """

    def __init__(self, every: float = 2.0):
        self.errors: list[str] = []
        self.acknowledged = threading.Event()
        self._lock = threading.Lock()
        self._every = every
        self._previous = None
        self._nagger: threading.Thread | None = None

    def __enter__(self):
        self._previous = threading.excepthook

        def hook(args):
            self.errors.append(f"{args.exc_type.__name__}: {args.exc_value}")
            if threading.current_thread() is not threading.main_thread() and self._nagger is None:
                self._nagger = threading.Thread(target=self._nag, daemon=True)
                self._nagger.start()

        threading.excepthook = hook
        return self

    def _nag(self) -> None:
        while True:
            with self._lock:
                if self.acknowledged.is_set():
                    return
                os.kill(os.getpid(), signal.SIGINT)
            self.acknowledged.wait(self._every)

    def acknowledge(self) -> None:
        """Stop interrupting; drop an interrupt already on its way (main thread only)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            with self._lock:
                self.acknowledged.set()
            if self._nagger is not None:
                self._nagger.join()
        finally:
            signal.signal(signal.SIGINT, previous)

    def __exit__(self, *exc):
        with self._lock:
            self.acknowledged.set()
        threading.excepthook = self._previous


def _kill_workers() -> int:
    """SIGKILL this process's remaining Beam SDK worker subprocesses (Linux /proc)."""
    me, killed = os.getpid(), 0
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if b"sdk_worker" in cmd:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        except (OSError, ValueError, IndexError):
            continue
    return killed


def run_pipeline(refs: list[UnitRef], ctx: BuildContext, beam_args, log) -> None:
    """Run the Beam pipeline once; raises :class:`BuildFailed` when it fails."""
    import apache_beam as beam

    from pipeline.beam.transforms import BuildCorpus

    options = beam_options(beam_args)
    todo = [(r.unit_id, r.n_cases) for r in refs if r.mode != "done"]
    with Progress(ctx.output, todo, log), _Watchdog() as watchdog:
        try:
            pipeline = beam.Pipeline(options=options)
            _ = pipeline | "BuildCorpus" >> BuildCorpus(refs, ctx)
            pipeline.run().wait_until_finish()
        except KeyboardInterrupt:
            if not watchdog.errors:
                raise
            watchdog.acknowledge()
            _kill_workers()
            raise BuildFailed("a worker died: " + "; ".join(watchdog.errors[:3])) from None
        except Exception as err:  # noqa: BLE001 — the runner wraps any worker error
            _kill_workers()
            text = str(err).strip().splitlines()
            raise BuildFailed(f"{type(err).__name__}: {text[-1] if text else ''}") from err


# ------------------------------------------------------------------------------- build


class _PlanningCollector:
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


def build(
    recipe_name: str,
    output: str,
    *,
    input_dir: str | None = None,
    seed: int | None = None,
    layout: str | None = None,
    beam_args: Sequence[str] = (),
    max_reject_fraction: float = 0.05,
    retries: int = 1,
    log=None,
) -> BuildResult:
    """Build (or incrementally rebuild) a corpus; see the README's user guide."""
    with _PlanningCollector() as collector:
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        started = time.monotonic()
        recipe = load_recipe(recipe_name)
        kind = get_kind(_kind(recipe))
        seed = int(recipe.data["seed"] if seed is None else seed)
        prep = kind.prepare(recipe)
        pkey, is_default = keys.resolve_pseudonym_key(recipe.section("privacy").get("pseudonym_key"))
        if is_default:
            log(f"warning: pseudonyms use the built-in default key; set ${keys.PSEUDONYM_KEY_ENV}")
        output = output.rstrip("/") or "/"
        if "://" not in output:
            output = os.path.abspath(output)
        given_input = input_dir
        if input_dir is None:
            input_dir = kind.sample_input(output, recipe, log)
        tree = InputTree(input_dir)
        root = tree.root
        if not tree.exists():
            raise FileNotFoundError(f"--input: {input_dir} is not a directory")
        cases, rejects, stats = kind.discover(
            tree, recipe, pkey, seed, layout or recipe.section("source").get("layout", "auto"), prep)
        if not cases and not rejects:
            raise ConfigError(f"--input: {input_dir}: found no {kind.case_noun} (empty input)")
        planned = kind.plan(cases, recipe, seed, prep)
        sdigest = kind.settings_digest(prep["settings"])
        fps = {kind.case_key(c): case_fingerprint(
            kind.name, kind.version, sdigest, kind.case_json(c),
            tree.identity(kind.case_paths(c)))[:32] for c in cases}
        fp = fingerprint(recipe, seed)
        qa_settings = dict(recipe.section("questions").get("settings") or {})
        qa_fp = keys.digest(fp, kind.name, json.dumps(sorted(fps.items())),
                            json.dumps([(s, i, n, [kind.case_key(c) for c in m]) for s, i, n, m in planned]))
        shards.write_json(output, state.BUILD_FILE, {
            "recipe": recipe_name if not os.path.exists(recipe_name) else os.path.abspath(recipe_name),
            "input": InputTree(given_input).root if given_input else None,
            "seed": seed, "layout": layout})
        _clean_temporaries(output, kind)
        log(f"radvqa build: recipe {recipe.name} ({kind.name}), {len(cases)} cases "
            f"({len(rejects)} rejected at discovery) in {len(planned)} units -> {output}")
        ctx = None
        attempts = 0
        run_id = uuid.uuid4().hex
        for attempt in range(retries + 1):
            attempts = attempt + 1
            refs, n_stored, extras = _plan_units(
                output, kind, planned, fps, qa_fp,
                lambda units: kind.before_run(output, recipe, seed, units, cases, prep))
            extras = extras | {"run_id": run_id, "ood": ood_settings(recipe.section("ood"))}
            ctx = BuildContext(kind=kind.name, output=output, input_root=root,
                               settings=prep["settings"], families=prep["families"],
                               pools=prep["pools"], seed=seed, qa_settings=qa_settings,
                               qa_fp=qa_fp, extras=extras)
            _log_plan(refs, n_stored, log)
            collector.planned()  # after the unit plans (the tree's balancing): the run's turn
            try:
                run_pipeline(refs, ctx, beam_args, log)
                break
            except BuildFailed as err:
                if attempt >= retries:
                    raise BuildFailed(
                        f"{err}; the pipeline failed {attempts} time(s). Rerun the same command to "
                        "resume: finished units are kept.") from err
                log(f"attempt {attempts} failed ({err}); retrying — finished units are kept")
        manifest = finalise(output, recipe, kind, fp, seed, refs, rejects, stats, prep, ctx,
                            is_default, attempts)
        state.delete_tree(output, PLAN_DIR)
        state.delete_tree(output, state.PREVIOUS_DIR)
        seconds = time.monotonic() - started
        discover = manifest["counts"]["discover"]["inputs"]
        rejected_cases = sum(manifest["counts"][s]["rejected"] for s in ("discover", "read", "extract")
                             if s in manifest["counts"])
        fraction = rejected_cases / discover if discover else 0.0
        exit_code = 0 if fraction <= max_reject_fraction else 3
        audit_result = manifest.get("audit", {})
        if audit_result.get("on") == "fail" and audit_result.get("verdict") == "fail":
            exit_code = exit_code or 4
        shards.write_json(output, LAST_RUN, {"seconds": round(seconds, 3), "units": len(refs),
                                             "attempts": attempts})
        log(summary_table(manifest, seconds, fraction, max_reject_fraction))
        return BuildResult(output, manifest, seconds, fraction, exit_code)


def regenerate(output: str, *, recipe: str | None = None, input_dir: str | None = None,
               beam_args: Sequence[str] = (), max_reject_fraction: float = 0.05, log=None
               ) -> BuildResult:
    """Rebuild the corpus in ``output`` with its last build's arguments (after editing
    templates, pools or split settings): stored pixels are reused, questions re-rendered."""
    args = state.read_build_args(output)
    return build(recipe or args["recipe"], output, input_dir=input_dir or args["input"],
                 seed=args.get("seed"), layout=args.get("layout"), beam_args=beam_args,
                 max_reject_fraction=max_reject_fraction, log=log)


def _kind(recipe: Recipe) -> str:
    try:
        return kind_name(recipe.section("source").get("kind"))
    except ValueError as err:
        raise ConfigError(f"{recipe.path}: {err}") from err


def _clean_temporaries(output: str, kind) -> None:
    """Remove temporary files a killed worker may have left (never under a final name)."""
    from apache_beam.io.filesystems import FileSystems

    folders = [*kind.configs, UNITS_DIR, PLAN_DIR, "dead_letters", DEAD_UNITS_DIR, "report", ""]
    for folder in folders:
        pattern = f"{folder}/*{shards.TMP_MARK}*" if folder else f"*{shards.TMP_MARK}*"
        found = FileSystems.match([shards.join(output, pattern)])[0].metadata_list
        if found:
            FileSystems.delete([m.path for m in found])


def _plan_units(output: str, kind, planned, fps, qa_fp: str, before_run):
    """Refs (with proposed modes) and plan files for every unit; sources that another unit
    would overwrite are moved aside first.  ``before_run(units)`` (the kind's launcher
    step) returns extras for the context, and per-case question choices under
    ``"case_extras"`` that go into the plan lines.  Returns ``(refs, number of stored
    cases, extras)``."""
    receipts = state.load_receipts(output)
    index = state.StoredIndex.load(output, receipts, kind.stored_configs)
    units = []
    for split, i, n, members in planned:
        ref = UnitRef(split, i, n, len(members))
        cases = []
        for c in members:
            key = kind.case_key(c)
            s = index.lookup(key, fps[key])
            cases.append(PlannedCase(c, fps[key], dict(s.locations) if s else None,
                                     s.content if s else ""))
        units.append([ref, cases])
    # Which files does this run write?  Stored rows read from one of them by another unit
    # must be moved aside before the run.
    writes = {ref.shard(c): ref.unit_id for ref, _ in units
              for c in (*kind.pixel_configs, *kind.text_configs)}
    hazards = set()
    for ref, cases in units:
        for pc in cases:
            for path, _ in (pc.stored or {}).values():
                if writes.get(path, ref.unit_id) != ref.unit_id:
                    hazards.add(path)
    if hazards:
        entries = []
        for name, receipt in receipts.items():
            got = state.sources_of(receipt, kind.stored_configs) if name != "benchmark.json" else None
            if got:
                entries.append({"cases": got[0], "locations": got[1]})
        moved = state.move_aside(output, hazards, entries)
        for _, cases in units:
            for n, pc in enumerate(cases):
                if pc.stored and any(p in moved for p, _ in pc.stored.values()):
                    cases[n] = PlannedCase(pc.case, pc.fp, {
                        c: (moved.get(p, p), sha) for c, (p, sha) in pc.stored.items()}, pc.content)
    extras = dict(before_run([(ref, [pc.case for pc in cases]) for ref, cases in units]))
    case_extras = extras.pop("case_extras", {})
    refs = []
    n_stored = sum(1 for _, cases in units for pc in cases if pc.stored)
    for ref, cases in units:
        if case_extras:
            cases = [PlannedCase(pc.case, pc.fp, pc.stored, pc.content,
                                 case_extras.get(kind.case_key(pc.case))) for pc in cases]
        mode = _propose(ref, cases, receipts, kind, qa_fp)
        ref = UnitRef(ref.split, ref.index, ref.count, ref.n_cases, mode)
        write_plan(output, ref, cases, kind)
        if mode != "done":
            for rel in (ref.receipt,):
                if shards.exists(output, rel):
                    from apache_beam.io.filesystems import FileSystems

                    FileSystems.delete([shards.join(output, rel)])
        refs.append(ref)
    return refs, n_stored, extras


def _propose(ref: UnitRef, cases, receipts, kind, qa_fp: str) -> str:
    """``done`` / ``keep`` / ``build`` from the unit's last receipts (workers verify)."""
    from pipeline.engine.units import plan_digest

    digest = plan_digest(cases, kind)
    full = receipts.get(f"{ref.unit_id}.json")
    if full and full.get("planned") == digest and full.get("qa_fp") == qa_fp:
        return "done"  # the worker verifies every file
    ext = receipts.get(f"{ref.unit_id}.extract.json")
    if kind.pixel_configs and ext and ext.get("planned") == digest:
        return "keep"
    return "build"


def _log_plan(refs, n_stored: int, log) -> None:
    modes = Counter(r.mode for r in refs)
    log(f"  units: {modes.get('build', 0)} to build, {modes.get('keep', 0)} with stored pixels, "
        f"{modes.get('done', 0)} unchanged; {n_stored} case(s) stored by an earlier build")


# ---------------------------------------------------------------------------- finalise


def collect_receipts(output: str, refs: Sequence[UnitRef]) -> list[dict]:
    """Every planned unit's receipt; a missing one is a failed build."""
    out = []
    for ref in refs:
        if not shards.exists(output, ref.receipt):
            raise BuildFailed(f"unit {ref.unit_id} finished without its receipt {ref.receipt}")
        out.append(json.loads(shards.read_bytes(output, ref.receipt)))
    return out


def _remove_stale(output: str, configs, keep: set[str]) -> None:
    """Delete shards of an earlier build (other splits or shard counts) not in this one."""
    from apache_beam.io.filesystems import FileSystems

    for config in configs:
        match = FileSystems.match([shards.join(output, f"{config}/*.parquet")])[0]
        stale = [m.path for m in match.metadata_list if state.rel_path(output, m.path) not in keep]
        if stale:
            FileSystems.delete(stale)


def _remove_stale_state(output: str, refs: Sequence[UnitRef]) -> None:
    from apache_beam.io.filesystems import FileSystems

    live = {r.unit_id for r in refs}
    for folder in (UNITS_DIR, DEAD_UNITS_DIR):
        for m in FileSystems.match([shards.join(output, f"{folder}/*")])[0].metadata_list:
            name = m.path.rsplit("/", 1)[1]
            unit = name.split(".", 1)[0]
            if unit not in live and unit != "benchmark":
                FileSystems.delete([m.path])


def merge_dead_letters(output: str, refs: Sequence[UnitRef], rejects: list[dict]) -> dict:
    """``dead_letters/dead_letters.jsonl`` from discovery rejects and every unit's parts;
    returns the file entries of the merged file and of the parts (all operator-only)."""
    letters = list(rejects)
    files = {}
    for ref in refs:
        for stage in ("extract", "qa"):
            rel = ref.dead_part(stage)
            if shards.exists(output, rel):
                data = shards.read_bytes(output, rel)
                part = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
                letters += part
                files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                              "rows": len(part)}
    receipt = shards.write_bytes(output, DEAD_LETTERS_FILE, jsonl(sort_dead(letters)))
    files[DEAD_LETTERS_FILE] = receipt.as_dict() | {"rows": len(letters)}
    return files


def aggregate_counts(receipts: list[dict], rejects: list[dict], stats: dict) -> dict:
    """Per stage ``{inputs, accepted, rejected, rejected_by_reason}``; checks the balance."""
    n_cases = sum(r["counts"]["read"]["inputs"] for r in receipts)
    counts = {"discover": {
        "inputs": n_cases + len(rejects), "accepted": n_cases, "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
    }}
    excluded = {k: v for k, v in sorted(stats.items()) if k.startswith("excluded")}
    if excluded:
        counts["discover"]["excluded_by_recipe"] = excluded
    for stage in ("read", "extract", "qa"):
        total = {"inputs": 0, "accepted": 0, "rejected": 0}
        reasons: Counter = Counter()
        for r in receipts:
            c = r["counts"][stage]
            for k in total:
                total[k] += c[k]
            reasons.update(c["rejected_by_reason"])
        counts[stage] = total | {"rejected_by_reason": dict(sorted(reasons.items()))}
    for stage, c in counts.items():
        if c["inputs"] != c["accepted"] + c["rejected"]:
            raise AssertionError(f"counts.{stage}: inputs != accepted + rejected: {c}")
    return counts


def finalise(output, recipe, kind, fp, seed, refs, rejects, stats, prep, ctx, default_key,
             attempts) -> dict:
    """Collect receipts; merge dead letters; audit; write the card, report and manifest."""
    from pipeline.qa.audit import audit, merge

    receipts = collect_receipts(output, refs)
    finish = None
    if kind.finish is not None and ctx.extras.get("benchmark"):
        from pipeline.kinds.tree import BENCHMARK_RECEIPT

        finish = json.loads(shards.read_bytes(output, BENCHMARK_RECEIPT))
    files: dict[str, dict] = {}
    for r in receipts:
        files.update(r["files"])
    if finish:
        files.update(finish["files"])
    _remove_stale(output, kind.configs, set(files))
    _remove_stale_state(output, refs)
    files.update(merge_dead_letters(output, refs, rejects))
    counts = aggregate_counts(receipts, rejects, stats)
    split_rows: dict[str, Counter] = {c: Counter() for c in kind.configs}
    split_cases: dict[str, Counter] = {}
    tasks: Counter = Counter()
    unknown: set[str] = set()
    for r in receipts:
        for rel, info in r["files"].items():
            split_rows[rel.split("/", 1)[0]][r["split"]] += info["rows"] or 0
        c = split_cases.setdefault(r["split"], Counter())
        c["cases"] += r["rows"]["cases"]
        c["images"] += r["rows"].get("images", 0)
        c["qa"] += r["rows"].get("qa", 0)
        tasks.update(r["tasks"])
        unknown.update(r.get("labels_unknown_to_pools", []))
    if finish:
        split_rows["benchmark"]["test"] = finish["rows"]["benchmark"]
    audit_result = audit(merge([r["audit"] for r in receipts] + ([finish["audit"]] if finish else [])),
                         dict(kind.audit_defaults) | recipe.section("audit"))
    extras = dict(ctx.extras) | {"finish": finish,
                                 "pools_added": list(getattr(prep["pools"], "added", ()) or ())}
    kind_fields, card_lines, _ = kind.manifest_extras(output, receipts, extras)
    card = render_card(
        recipe=public_recipe(recipe.data) | {"seed": seed}, fingerprint=fp, split_rows=split_rows, files=files, counts=counts,
        tasks=tasks, default_key=default_key, config_names=kind.configs, extra=card_lines,
        schemas=kind.schemas, kind=kind.name, audit=audit_result)
    files[CARD] = shards.write_bytes(output, CARD, card.encode("utf-8")).as_dict()
    inputs = {k: v[1] for r in receipts for k, v in r["cases"].items()}
    manifest = {
        "radvqa_manifest": 2,
        "kind": kind.name,
        "recipe": {"name": recipe.name, "content": public_recipe(recipe.data)},
        "seed": seed,
        "fingerprint": fp,
        "versions": versions(),
        "inputs": {"cases": len(inputs),
                   "fingerprint": keys.digest(*(f"{k}:{v}" for k, v in sorted(inputs.items())))},
        "splits": {
            s: {"cases": split_cases.get(s, Counter())["cases"],
                "images": split_cases.get(s, Counter())["images"],
                "qa": split_cases.get(s, Counter())["qa"],
                "shards": sum(1 for r in refs if r.split == s)}
            for s in recipe.section("splits")["fractions"]
        },
        "counts": counts,
        "tasks": dict(sorted(tasks.items())),
        "labels_unknown_to_pools": sorted(unknown) + sorted(
            "/".join(t) for t in extras["pools_added"]),
        "audit": audit_result,
        **kind_fields,
        "build": _build_section(receipts, attempts, ctx.extras.get("run_id")),
        "files": dict(sorted(files.items())),
    }
    # The report reads the corpus (manifest included), then takes its place in the manifest.
    shards.write_json(output, MANIFEST, manifest)
    from pipeline.report import REPORT, write_report

    write_report(output)
    data = shards.read_bytes(output, REPORT)
    files[REPORT] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": None}
    manifest["files"] = dict(sorted(files.items()))
    shards.write_json(output, MANIFEST, manifest)
    return manifest


def public_recipe(data: dict) -> dict:
    """The recipe as published in the manifest: a pseudonym key is a secret, never copied."""
    out = json.loads(json.dumps(data))
    if (out.get("privacy") or {}).get("pseudonym_key"):
        out["privacy"]["pseudonym_key"] = "<redacted>"
    return out


def _build_section(receipts: list[dict], attempts: int, run_id: str | None) -> dict:
    """How this build ran: what it reused.  The one part of the manifest that differs
    between a fresh build and an incremental one (every other byte is the same)."""
    kept, done, stored, extracted = [], [], 0, 0
    for r in receipts:
        if r.get("run") != run_id:
            done.append(r["unit"])
            continue
        if r.get("kept"):
            kept.append(r["unit"])
        stored += r["reuse"]["stored_cases"]
        extracted += r["reuse"]["extracted_cases"]
    return {"units_skipped": sorted(done), "units_kept_pixels": sorted(kept),
            "cases_copied_from_stored_shards": stored, "cases_extracted": extracted,
            "attempts": attempts}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"radvqa": __version__, "schema": SCHEMA_VERSION, "qa": QA_VERSION}
    for dist in ("apache-beam", "numpy", "pyarrow", "pydicom", "SimpleITK", "jinja2"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def summary_table(manifest: dict, seconds: float, fraction: float, limit: float) -> str:
    rows = ["", "stage      inputs  accepted  rejected  reasons"]
    for stage, c in manifest["counts"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in c["rejected_by_reason"].items()) or "-"
        rows.append(f"{stage:<10} {c['inputs']:>6}  {c['accepted']:>8}  {c['rejected']:>8}  {reasons}")
    rows.append("")
    for split, s in manifest["splits"].items():
        rows.append(f"{split:<10} {s['cases']:>6} cases  {s['images']:>7} images  {s['qa']:>8} QA  "
                    f"{s['shards']} shard(s)")
    size = sum(f["bytes"] for f in manifest["files"].values())
    rows.append("")
    rows.append(f"tasks: {', '.join(f'{k}={v}' for k, v in manifest['tasks'].items()) or '-'}")
    b = manifest["build"]
    rows.append(f"reused: {len(b['units_skipped'])} unit(s) skipped, {len(b['units_kept_pixels'])} "
                f"kept their pixels, {b['cases_copied_from_stored_shards']} case(s) copied from "
                f"stored shards, {b['cases_extracted']} extracted")
    rows.append(f"{len(manifest['files'])} files, {size / 1e6:.1f} MB, {seconds:.1f} s; rejected "
                f"{fraction:.1%} of cases (limit {limit:.0%})")
    if manifest["labels_unknown_to_pools"]:
        rows.append("labels unknown to the pools (distractors drawn from their own label table): "
                    + ", ".join(manifest["labels_unknown_to_pools"][:20]))
    if "answers" in manifest:
        from pipeline.kinds.volumes import answer_lines

        rows += answer_lines(manifest["answers"])
    if "benchmark" in manifest:
        bench = manifest["benchmark"]
        rows.append(f"benchmark: {bench['images']} images, {bench['rows']} QA {bench['composition']}")
    if "audit" in manifest:
        from pipeline.qa.audit import summary_lines

        rows += [""] + summary_lines(manifest["audit"])
    return "\n".join(rows)
