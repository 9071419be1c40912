"""Finalising a build: receipts collected, stale files removed, counts, audit, card, manifest.

After the pipeline has run, every planned unit has a receipt (``.radvqa/units/<unit>.json``)
listing the files it wrote.  :func:`finalise` checks they are all there, deletes shards
and state of an earlier build that this one no longer has, merges the dead letters, sums
the per-stage counts (and checks ``inputs == accepted + rejected``), runs the audit, and
writes the dataset card, the report and ``manifest.json`` — the manifest twice, since the
report reads the corpus and then takes its place in the manifest's file list.

:func:`fingerprint` is the build's published identity: the recipe (its pseudonym key
redacted, :func:`public_recipe`), the seed, the templates' and pools' contents and the
stage versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence

from pipeline import __version__
from pipeline.config.recipes import Recipe, pool_paths, template_paths
from pipeline.core import keys
from pipeline.engine import learned_samples, state
from pipeline.engine.dead_letters import merge_dead_letters
from pipeline.engine.in_process import Behind
from pipeline.engine.units import UnitRef
from pipeline.errors import BuildFailed
from pipeline.io import shards
from pipeline.io.corpus import Corpus
from pipeline.launch.card import render_card
from pipeline.qa.audit import DEFAULTS as AUDIT_DEFAULTS
from pipeline.qa.audit import SEP, audit, merge
from pipeline.qa.learned import learned_from_shards
from pipeline.report import prepare_report, write_report
from pipeline.schema.arrow import SCHEMA_VERSION
from pipeline.schema.layout import (
    BENCHMARK_RECEIPT,
    CARD,
    DEAD_UNITS_DIR,
    LEARNED_CACHE,
    MANIFEST,
    REPORT,
    ROWS_DIR,
    UNITS_DIR,
    parse_shard,
)

QA_VERSION = "3"  # issue 13: order-free options, visual prompts, new families

#: With ``--workers N`` (N > 1) and at least this many audited QA rows, the learned baseline's
#: groups are fitted by N processes side by side, this one and N - 1 from a pool
#: (radimagenet-vqa at 100K images: 7 groups, two of them about 10 s each); below it a
#: pool's start costs more than it saves.
POOL_MIN_ROWS = 50_000
#: Without a pool, with at least this many audited QA rows, the report's statistics are
#: scanned on a thread beside the learned baseline's fit (:func:`learned_audit`); below it
#: (the sample's ~5K rows) the thread cost more CPU than it saved time (measured).
BESIDE_MIN_ROWS = 20_000


# ------------------------------------------------------------------------ fingerprints


def _file_digest(paths) -> str:
    """One digest of every file under ``paths`` (dot files skipped): relative name and
    content, in sorted order."""
    parts = []
    for root in paths:
        root = str(root)
        items = [root] if os.path.isfile(root) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(".")
        )
        for p in items:
            with open(p, "rb") as f:
                # str(): the file's bytes as their repr, as before keys.digest hashed bytes as
                # bytes — the published fingerprint (and every stored unit's qa_fp) unchanged
                data = str(f.read())
                parts.append(os.path.relpath(p, os.path.dirname(root)) + ":" + keys.digest(data))
    return keys.digest(*parts)


def fingerprint(recipe: Recipe, seed: int) -> str:
    """Recipe (its pseudonym key left out: the fingerprint is published), seed, template
    and pool contents and stage versions (not input data)."""
    return keys.digest(
        json.dumps(public_recipe(recipe.data), sort_keys=True), seed, _file_digest(template_paths(recipe)),
        _file_digest(pool_paths(recipe)), SCHEMA_VERSION, QA_VERSION, __version__,
    )


def public_recipe(data: dict) -> dict:
    """The recipe as published in the manifest: a pseudonym key is a secret, never copied."""
    out = json.loads(json.dumps(data))
    if (out.get("privacy") or {}).get("pseudonym_key"):
        out["privacy"]["pseudonym_key"] = "<redacted>"
    return out


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
    for config in configs:
        stale = [p for p in shards.match(output, f"{config}/*.parquet")
                 if state.rel_path(output, p) not in keep]
        if stale:
            shards.delete(stale)


def _remove_stale_state(output: str, refs: Sequence[UnitRef]) -> None:
    """Delete receipts and dead-letter parts of units this build no longer has."""
    live = {r.unit_id for r in refs}
    for folder in (UNITS_DIR, DEAD_UNITS_DIR, ROWS_DIR):
        for path in shards.match(output, f"{folder}/*"):
            name = path.rsplit("/", 1)[1]
            unit = name.split(".", 1)[0]
            if unit not in live and unit != "benchmark":
                shards.delete([path])


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
    if stats.get("meta_split"):
        counts["discover"]["meta_split"] = stats["meta_split"]
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
             attempts, workers: int = 1) -> dict:
    """Collect receipts; merge dead letters; audit; write the card, report and manifest."""
    receipts = collect_receipts(output, refs)
    finish = None
    if kind.finish is not None and ctx.extras.get("benchmark"):
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
    merged = merge([r["audit"] for r in receipts] + ([finish["audit"]] if finish else []))
    settings = dict(kind.audit_defaults) | recipe.section("audit")
    extras = dict(ctx.extras) | {"finish": finish,
                                 "pools_added": list(getattr(prep["pools"], "added", ()) or ())}
    kind_fields, card_lines, _ = kind.manifest_extras(output, receipts, extras)
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
        "audit": None,  # below
        **kind_fields,
        "build": _build_section(receipts, attempts, ctx.extras.get("run_id")),
        "files": dict(sorted(files.items())),
    }
    # while the learned baseline is fitted (by a pool process, or by this thread) the
    # shards are scanned for the report (the manifest so far lists them) instead of after
    prepared = []
    audit_result = audit(merged, settings, learned_audit(
        output, files, merged, settings, workers,
        meanwhile=lambda: prepared.append(prepare_report(output, dict(manifest)))))
    card = render_card(
        recipe=public_recipe(recipe.data) | {"seed": seed}, fingerprint=fp, split_rows=split_rows, files=files, counts=counts,
        tasks=tasks, default_key=default_key, config_names=kind.configs, extra=card_lines,
        schemas=kind.schemas, kind=kind.name, audit=audit_result)
    files[CARD] = shards.write_bytes(output, CARD, card.encode("utf-8")).as_dict()
    manifest["audit"] = audit_result
    manifest["files"] = dict(sorted(files.items()))
    # The report reads the corpus (manifest included), then takes its place in the manifest.
    shards.write_json(output, MANIFEST, manifest)
    write_report(output, prepared=prepared[0] if prepared else None,
                 shards_verified=True)  # every shard just written or verified
    data = shards.read_bytes(output, REPORT)
    files[REPORT] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": None}
    manifest["files"] = dict(sorted(files.items()))
    shards.write_json(output, MANIFEST, manifest)
    return manifest


def learned_audit(output: str, files, merged, settings, workers: int = 1, meanwhile=None) -> dict:
    """The learned text-only baseline (:mod:`pipeline.qa.learned`) over the QA shards of the
    audited configs, read through :class:`~pipeline.io.corpus.Corpus` (text columns only);
    its groups fitted by ``workers`` processes when there are :data:`POOL_MIN_ROWS` rows.
    ``meanwhile()`` runs here once this process has fitted its groups, before it waits
    for the pool's (:class:`_Meanwhile`); without a pool and with :data:`BESIDE_MIN_ROWS`
    rows, on a thread beside the fit (:class:`~pipeline.engine.in_process.Behind`); else never."""
    configs = {key.split(SEP, 1)[0] for key in merged}
    shards_ = []
    for rel in files:
        shard = parse_shard(rel)
        if shard is not None and shard.ext == "parquet" and shard.config in configs:
            shards_.append((shard.config, rel))
    learn_from = (AUDIT_DEFAULTS | dict(settings))["learn_from"]
    # A regenerate re-fits only the groups whose rows changed (a template edit touches one
    # or two of them); the others' results come from the last build's, by digest.
    try:
        cache = json.loads(shards.read_bytes(output, LEARNED_CACHE))["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        cache = {}
    store: dict = {}
    rows = sum(files[rel].get("rows") or 0 for _, rel in shards_)
    sampled = learned_samples.reader(output, files, {rel for _, rel in shards_})  # workers'
    result = None
    pooled = workers > 1 and rows >= POOL_MIN_ROWS
    if pooled:
        # N - 1 processes fit the largest groups while this one fits the others; forkserver:
        # they start from the warm workers' server (its imports done), never from this
        # process's threads (gRPC's, after a Beam run).  The pool's modules are imported
        # here only: multiprocessing and concurrent.futures cost ~8 ms of a
        # regenerate's start-up, which never has a pool
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        context = multiprocessing.get_context("forkserver")
        try:
            with ProcessPoolExecutor(workers - 1, mp_context=context) as pool:
                result = learned_from_shards(Corpus(output).read_columns, shards_, learn_from,
                                             cache=cache, store=store,
                                             pool=_Meanwhile(pool, meanwhile),
                                             pool_jobs=workers - 1, sampled=sampled)
        except BrokenProcessPool:  # a pool process died (out of memory, killed): fit here
            store.clear()
    if result is None:
        # no pool: ``meanwhile()`` runs on a thread beside the fit (reading the shards, its
        # work mostly Arrow's, with the GIL released), never after it
        beside = None
        if meanwhile is not None and not pooled and rows >= BESIDE_MIN_ROWS:
            beside = Behind()
            beside.run(lambda: _quietly(meanwhile))
        try:
            result = learned_from_shards(Corpus(output).read_columns, shards_, learn_from,
                                         cache=cache, store=store, sampled=sampled)
        finally:
            if beside is not None:
                beside.join()
    shards.write_json(output, LEARNED_CACHE, {"groups": store})
    return result


def _quietly(work) -> None:
    """``work()``, a failure of it dropped: what it prepares is then done later, as before
    (the report scans again and says why)."""
    try:
        work()
    except Exception:  # noqa: BLE001 — see above
        pass


class _Meanwhile:
    """A process pool whose first wait for a result first runs ``work()`` in this process
    (once; a failure of it is dropped: what it prepares is then done later, as before)."""

    def __init__(self, pool, work):
        self.pool, self.work = pool, work

    def submit(self, fn, *args):
        future = self.pool.submit(fn, *args)
        owner = self

        class Waiting:
            def result(self):
                work, owner.work = owner.work, None
                if work is not None:
                    _quietly(work)
                return future.result()
        return Waiting()


def _build_section(receipts: list[dict], attempts: int, run_id: str | None) -> dict:
    """How this build ran: what it reused.  The one part of the manifest that differs
    between a fresh build and an incremental one (every other byte is the same)."""
    kept, text, done, stored, extracted = [], [], [], 0, 0
    for r in receipts:
        if r.get("run") != run_id:
            done.append(r["unit"])
            continue
        if r.get("kept"):
            kept.append(r["unit"])
        if r.get("kept_text"):
            text.append(r["unit"])
        stored += r["reuse"]["stored_cases"]
        extracted += r["reuse"]["extracted_cases"]
    return {"units_skipped": sorted(done), "units_kept_pixels": sorted(kept),
            "units_kept_text_shards": sorted(text),
            "cases_copied_from_stored_shards": stored, "cases_extracted": extracted,
            "attempts": attempts}


def versions() -> dict:
    """Versions of radvqa, its schema and QA stage, and the libraries that shape the bytes."""
    out = {"radvqa": __version__, "schema": SCHEMA_VERSION, "qa": QA_VERSION}
    for dist in ("apache-beam", "numpy", "pyarrow", "pydicom", "SimpleITK", "jinja2", "zlib-ng"):
        out[dist] = keys.installed_version(dist)
    return out
