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

The steps live beside this module: :mod:`~pipeline.launch.plan` (units and their modes),
:mod:`~pipeline.launch.runner` (one Beam pipeline run), :mod:`~pipeline.launch.finalise`
(receipts, dead letters, audit, card, manifest) and :mod:`~pipeline.launch.summary`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Sequence

from pipeline.config import checked
from pipeline.config.recipes import Recipe, load_recipe
from pipeline.core import keys
from pipeline.engine import state
from pipeline.engine.in_process import run_in_process
from pipeline.engine.ood import settings as ood_settings
from pipeline.engine.units import BuildContext, case_fingerprints
from pipeline.errors import BuildFailed, ConfigError
from pipeline.inputs.tree import InputTree
from pipeline.io import shards
from pipeline.kinds.registry import get_kind, kind_name
from pipeline.launch.finalise import QA_VERSION, finalise, fingerprint
from pipeline.launch.plan import (
    PlanningCollector,
    clean_temporaries,
    log_plan,
    plan_units,
    write_plans,
)
from pipeline.launch.summary import summary_table
from pipeline.qa.stored_rows import family_digests
from pipeline.schema.layout import CONFIG_CACHE, LAST_RUN, PLAN_DIR, PROGRESS_DIR
from pipeline.schema.records import BuildResult


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
    workers: int = 1,
    verify_shards: bool = False,
    log=None,
) -> BuildResult:
    """Build (or incrementally rebuild) a corpus; see the README's user guide.

    ``workers`` > 1 runs the units on that many warm local worker processes
    (:mod:`pipeline.beam.warm`), whose imports start now, beside discovery and planning.
    ``verify_shards``: every file kept from an earlier build is hashed, not trusted by its
    unchanged stat receipt (:mod:`pipeline.io.kept_files`)."""
    check_workers(workers, beam_args)
    if workers > 1:
        # the forkserver's modules (multiprocessing's) are imported only for workers: a
        # one-worker run (every regenerate in this process) never starts one
        from pipeline.beam.preload import start_forkserver

        start_forkserver()
    with PlanningCollector() as collector:
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        started = time.monotonic()
        recipe = load_recipe(recipe_name)
        kind = get_kind(_kind(recipe))
        seed = int(recipe.data["seed"] if seed is None else seed)
        output = output.rstrip("/") or "/"
        if "://" not in output:
            output = os.path.abspath(output)
        # template and pool files unchanged since the last build into this output are not
        # parsed and validated again (pipeline.config.checked); edited ones are
        checked.use(_state_json(output, CONFIG_CACHE))
        prep = kind.prepare(recipe) | {"workers": workers}  # (the tree kind plans on two)
        pkey, is_default = keys.resolve_pseudonym_key(recipe.section("privacy").get("pseudonym_key"))
        if is_default:
            log(f"warning: pseudonyms use the built-in default key; set ${keys.PSEUDONYM_KEY_ENV}")
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
        # The shard writer's options are part of every case's fingerprint: other options
        # rebuild the shards (pixels and text) instead of keeping old-format files.
        sdigest = keys.digest(kind.settings_digest(prep["settings"]), shards.writer_digest())
        sizes: dict[str, int] = {}  # input bytes per case: the units' work estimate
        # a kind that can digest a case from its bytes alone also fingerprints it without
        # modification times: a case whose files' times alone changed (an input copied
        # with `cp -r`) keeps its rows when its bytes are those they were extracted from
        loose_ids: list | None = [] if kind.content_digest is not None else None
        fps = dict(zip(map(kind.case_key, cases), [fp[:32] for fp in case_fingerprints(
            kind.name, kind.version, sdigest, map(kind.case_json, cases),
            _sized(cases, kind, tree, sizes, loose_ids))]))
        loose = None if loose_ids is None else dict(zip(map(kind.case_key, cases), [
            fp[:32] for fp in case_fingerprints(kind.name, kind.version, sdigest + ":loose",
                                                map(kind.case_json, cases), loose_ids)]))
        fp = fingerprint(recipe, seed)
        qa_settings = dict(recipe.section("questions").get("settings") or {})
        qa_fp = keys.digest(fp, kind.name, json.dumps(sorted(fps.items())),
                            json.dumps([(s, i, n, [kind.case_key(c) for c in m]) for s, i, n, m in planned]))
        shards.write_json(output, state.BUILD_FILE, {
            "recipe": recipe_name if not os.path.exists(recipe_name) else os.path.abspath(recipe_name),
            "input": InputTree(given_input).root if given_input else None,
            "seed": seed, "layout": layout})
        shards.write_json(output, CONFIG_CACHE, checked.cached())
        log(f"radvqa build: recipe {recipe.name} ({kind.name}), {len(cases)} cases "
            f"({len(rejects)} rejected at discovery) in {len(planned)} units -> {output}")
        ctx = None
        attempts = 0
        run_id = uuid.uuid4().hex
        for attempt in range(retries + 1):
            attempts = attempt + 1
            # before each attempt: a worker of the one before, killed mid-write, leaves its
            # temporary file (never a final name) — it must not reach the corpus
            clean_temporaries(output, kind)
            refs, n_stored, extras, plans = plan_units(
                output, kind, planned, fps, qa_fp,
                lambda units: kind.before_run(output, recipe, seed, units, cases, prep), sizes,
                loose)
            extras = extras | {"run_id": run_id, "ood": ood_settings(recipe.section("ood")),
                               "verify_shards": verify_shards,
                               # cases whose files' times alone changed are hashed on as many
                               # threads (engine/execute.rechecked): in this process too
                               "recheck_threads": workers,
                               "qa_families": family_digests(prep["families"], prep["pools"], seed,
                                                             qa_settings, QA_VERSION)}
            ctx = BuildContext(kind=kind.name, output=output, input_root=root,
                               settings=prep["settings"], families=prep["families"],
                               pools=prep["pools"], seed=seed, qa_settings=qa_settings,
                               qa_fp=qa_fp, extras=extras)
            n_recheck = sum(pc.recheck for plan in plans.values() for pc in plan) if loose else 0
            log_plan(refs, n_stored, log, n_recheck)
            collector.planned()  # after the unit plans (the tree's balancing): the run's turn
            try:
                if in_process(refs, output, beam_args, stored_all=n_stored == len(cases)):
                    run_in_process(refs, ctx, kind, plans=plans)  # the plans handed over as they are
                else:
                    write_plans(output, refs, plans, kind)  # for the workers
                    # Apache Beam is imported here only: 1.0 s of CPU (measured), half a
                    # text-only regenerate of the sample; in_process() runs without it.
                    from pipeline.launch.runner import run_pipeline
                    run_pipeline(refs, ctx, beam_args, log, workers=workers)
                break
            except BuildFailed as err:
                if attempt >= retries:
                    raise BuildFailed(
                        f"{err}; the pipeline failed {attempts} time(s). Rerun the same command to "
                        "resume: finished units are kept.") from err
                log(f"attempt {attempts} failed ({err}); retrying — finished units are kept")
        manifest = finalise(output, recipe, kind, fp, seed, refs, rejects, stats, prep, ctx,
                            is_default, attempts, workers)
        state.delete_tree(output, PLAN_DIR)
        state.delete_tree(output, PROGRESS_DIR)
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
               beam_args: Sequence[str] = (), max_reject_fraction: float = 0.05,
               workers: int = 1, verify_shards: bool = False, log=None) -> BuildResult:
    """Rebuild the corpus in ``output`` with its last build's arguments (after editing
    templates, pools or split settings): stored pixels are reused, questions re-rendered."""
    args = state.read_build_args(output)
    return build(recipe or args["recipe"], output, input_dir=input_dir or args["input"],
                 seed=args.get("seed"), layout=args.get("layout"), beam_args=beam_args,
                 max_reject_fraction=max_reject_fraction, workers=workers,
                 verify_shards=verify_shards, log=log)


#: Beam options that choose the local runner's workers, which ``--workers`` sets itself.
_WORKER_OPTIONS = ("--direct_running_mode", "--direct_num_workers", "--environment_type",
                   "--environment_config")


def check_workers(workers: int, beam_args: Sequence[str]) -> None:
    """``--workers N`` (N > 1) runs Beam's FnApiRunner with warm local workers: it cannot be
    combined with another runner or with Beam's own worker options."""
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    if workers == 1:
        return
    for arg in beam_args:
        name, _, value = arg.partition("=")
        if name == "--runner" and value not in ("FnApiRunner", ""):
            raise ConfigError(f"--workers {workers} runs the local FnApiRunner; it cannot be "
                              f"combined with {arg} (use that runner's own worker options)")
        if name in _WORKER_OPTIONS:
            raise ConfigError(f"--workers {workers} sets the local workers itself; drop {arg}")


def in_process(refs, output: str, beam_args: Sequence[str], stored_all: bool = False) -> bool:
    """Run the units in this process, without Beam: no Beam option was given, the output
    is local, and no unit extracts pixels (every unit is ``keep`` or ``done``, or every
    case is copied from stored shards: a regenerate after editing templates, pools or
    splits).  Beam's default runner would run the same functions in one process; here its
    import and set-up (about 1.5 s) are skipped.  The files are the same bytes either way
    (``tests/test_incremental.py``)."""
    return not beam_args and "://" not in output and (
        stored_all or all(r.mode != "build" for r in refs))


def _state_json(output: str, rel: str):
    """A JSON file of the output's build state, or ``None`` (missing or unreadable)."""
    try:
        return json.loads(shards.read_bytes(output, rel))
    except (OSError, ValueError):
        return None


def _kind(recipe: Recipe) -> str:
    try:
        return kind_name(recipe.section("source").get("kind"))
    except ValueError as err:
        raise ConfigError(f"{recipe.path}: {err}") from err


def _sized(cases, kind, tree: InputTree, sizes: dict[str, int], loose: list | None = None):
    """Every case's stat identity (for its fingerprint), recording on the way the summed
    size of its files in ``sizes`` under the case's key, and, into ``loose`` (unless
    ``None``), the identity without modification times (the loose fingerprint's)."""
    for case in cases:
        identity = tree.identity(kind.case_paths(case))
        sizes[kind.case_key(case)] = sum(max(0, size) for _, size, _ in identity)
        if loose is not None:
            loose.append([(rel, size) for rel, size, _ in identity])
        yield identity
