"""Launcher for labelled 2D trees (recipe ``source.kind: tree``, e.g. radimagenet-vqa).

Plans on the launcher (walk the tree, keys, splits, units, the stratified
benchmark), writes one plan file per unit, runs :class:`BuildTreeCorpus`, then
finalises the card and the manifest like the volume build.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

from pipeline import keys, shards
from pipeline.build import (
    CARD,
    LAST_RUN,
    MANIFEST,
    BuildResult,
    Progress,
    beam_options,
    collect_reports,
    dead_letters_entry,
    fingerprint,
    remove_stale,
    summary_table,
    versions,
)
from pipeline.card import TREE_CONFIGS, render_card
from pipeline.errors import ConfigError
from pipeline.radimagenet import discover_tree, load_label_pools, select_benchmark, write_tree
from pipeline.recipes import Recipe, pool_paths, template_paths
from pipeline.tree_units import BENCHMARK_PLAN, TreeContext, plan_lines, plan_tree_units
from pipeline.units import STATE_DIR, UNITS_DIR


def load_tree_questions(recipe: Recipe):
    from pipeline.templates import load_families

    families = {}
    for path in template_paths(recipe):
        families.update(load_families(path))
    return families, load_label_pools(pool_paths(recipe))


def sample_tree(output: str, n: int, pools, log) -> str:
    if "://" in output:
        raise ConfigError("--input is required when --output is not a local folder")
    root = os.path.join(output, STATE_DIR, "sample-tree")
    stamp = os.path.join(root, ".radvqa-sample")
    if os.path.isfile(stamp) and open(stamp).read() == str(n):
        return root
    log(f"writing a synthetic RadImageNet-style tree of {n} images to {root}")
    write_tree(root, n, pools)
    with open(stamp, "w") as f:
        f.write(str(n))
    return root


def build_tree(recipe: Recipe, output: str, *, input_dir=None, seed=None, beam_args=(),
               max_reject_fraction=0.05, log=None) -> BuildResult:
    import apache_beam as beam

    from pipeline.transforms import BuildTreeCorpus

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    seed = int(recipe.data["seed"] if seed is None else seed)
    source = recipe.section("source")
    families, pools = load_tree_questions(recipe)
    key, is_default = keys.resolve_pseudonym_key(recipe.section("privacy").get("pseudonym_key"))
    if is_default:
        log(f"warning: pseudonyms use the built-in default key; set ${keys.PSEUDONYM_KEY_ENV}")
    output = output.rstrip("/") or "/"
    if "://" not in output:
        output = os.path.abspath(output)
    if input_dir is None:
        input_dir = sample_tree(output, int(source.get("sample_images", 2000)), pools, log)
    root = os.path.abspath(input_dir)
    fractions = recipe.section("splits")["fractions"]
    images, rejects, stats = discover_tree(
        root, modalities=source.get("modalities", ["CT", "MR"]), pools=pools,
        pseudonym_key=key, fractions=fractions, seed=seed)
    if not images and not rejects:
        raise ConfigError(f"--input: {input_dir}: found no images (empty input)")
    pools = pools.with_observed((i.modality, i.region, i.label) for i in images)
    units = plan_tree_units(images, fractions, int(recipe.section("shards")["images_per_shard"]))
    bench_n = int(recipe.section("benchmark").get("images", 1000))
    bench_plan = select_benchmark(images, bench_n, seed)
    fp = fingerprint(recipe, seed)
    log(f"radvqa build: recipe {recipe.name}, {len(images)} images ({len(rejects)} rejected at "
        f"discovery, {sum(v for k, v in stats.items() if k.startswith('excluded'))} excluded by "
        f"modality) in {len(units)} units -> {output}")
    from apache_beam.io.filesystems import FileSystems

    for unit, members in units.items():
        shards.write_bytes(output, unit.plan, plan_lines(members))
        receipt = shards.join(output, f"{UNITS_DIR}/{unit.unit_id}.json")
        if FileSystems.exists(receipt):
            FileSystems.delete([receipt])
    shards.write_json(output, BENCHMARK_PLAN, {"strata": [
        (s, q, [[i.key, i.source, i.modality, i.region, i.label, i.split] for i in cands[: q * 2 + 4]])
        for s, q, cands in bench_plan]})
    ctx = TreeContext(output=output, input_root=root, families=families, pools=pools, seed=seed,
                      qa_settings=dict(recipe.section("questions").get("settings") or {}),
                      fingerprint=fp, max_pixels=int(source.get("max_pixels", 50_000_000)))
    planned_dead = [{"case_key": keys.pseudonym(key, "image", r["source"]), "error_type": "CaseError",
                     **r} for r in rejects]
    with Progress(output, [(u.unit_id, u.n_images) for u in units], log):
        pipeline = beam.Pipeline(options=beam_options(beam_args))
        _ = pipeline | "BuildTreeCorpus" >> BuildTreeCorpus(list(units), ctx, planned_dead,
                                                            with_benchmark=bool(bench_plan))
        pipeline.run().wait_until_finish()
    manifest = finalise_tree(output, recipe, fp, seed, list(units), rejects, stats, pools,
                             is_default, bool(bench_plan))
    seconds = time.monotonic() - started
    n_in = manifest["counts"]["discover"]["inputs"]
    rejected = manifest["counts"]["discover"]["rejected"] + manifest["counts"]["read"]["rejected"]
    fraction = rejected / n_in if n_in else 0.0
    shards.write_json(output, LAST_RUN, {"seconds": round(seconds, 3), "units": len(units)})
    log(summary_table(manifest, seconds, fraction, max_reject_fraction))
    if "benchmark" in manifest:
        b = manifest["benchmark"]
        log(f"benchmark: {b['images']} images, {b['rows']} QA {b['composition']}")
    return BuildResult(output, manifest, seconds, fraction, 0 if fraction <= max_reject_fraction else 3)


def finalise_tree(output, recipe, fp, seed, units, rejects, stats, pools, default_key, bench):
    ids = [u.unit_id for u in units] + (["benchmark"] if bench else [])
    reports = collect_reports(output, ids)
    files: dict[str, dict] = {}
    for r in reports:
        files.update(r["files"])
    remove_stale(output, TREE_CONFIGS, set(files))
    files["dead_letters/dead_letters.jsonl"] = dead_letters_entry(output)
    unit_reports = [r for r in reports if r["unit"] != "benchmark"]
    bench_report = next((r for r in reports if r["unit"] == "benchmark"), None)
    reasons = Counter(r["reason"] for r in rejects)
    n_images = sum(r["counts"]["read"]["inputs"] for r in unit_reports)
    counts = {"discover": {"inputs": n_images + len(rejects), "accepted": n_images,
                           "rejected": len(rejects), "rejected_by_reason": dict(sorted(reasons.items())),
                           "excluded_by_recipe": {k: v for k, v in sorted(stats.items()) if k.startswith("excluded")}}}
    for stage in ("read", "qa"):
        total = Counter()
        why: Counter = Counter()
        for r in unit_reports:
            c = r["counts"][stage]
            total.update({k: c[k] for k in ("inputs", "accepted", "rejected")})
            why.update(c["rejected_by_reason"])
        counts[stage] = {k: total[k] for k in ("inputs", "accepted", "rejected")} | {
            "rejected_by_reason": dict(sorted(why.items()))}
    for stage, c in counts.items():
        if c["inputs"] != c["accepted"] + c["rejected"]:
            raise AssertionError(f"counts.{stage}: inputs != accepted + rejected: {c}")
    split_rows: dict[str, Counter] = {c: Counter() for c in TREE_CONFIGS}
    tasks: Counter = Counter()
    split_images: Counter = Counter()
    for r in unit_reports:
        split_rows["alignment"][r["split"]] += r["rows"]["alignment"]
        split_rows["instruct"][r["split"]] += r["rows"]["instruct"]
        split_images[r["split"]] += r["rows"]["cases"]
        tasks.update(r["tasks"])
    extra = []
    bench_info = None
    if bench_report:
        split_rows["benchmark"]["test"] = bench_report["rows"]["benchmark"]
        bench_info = {"images": bench_report["rows"]["benchmark_images"],
                      "rows": bench_report["rows"]["benchmark"],
                      "composition": bench_report["composition"], "strata": bench_report["strata"],
                      "strata_short": bench_report["strata_short"]}
        extra = ["", "## Benchmark", "",
                 f"{bench_info['images']} test images stratified by modality x region x pathology "
                 f"({bench_info['strata']} strata), 9 questions each: "
                 + ", ".join(f"{v} {k}" for k, v in bench_info["composition"].items())
                 + ". Benchmark images come from the test split only (disjoint from train)."]
    if pools.added:
        extra += ["", "Labels found in the tree but not in the pools (added to their region): "
                  + ", ".join("/".join(t) for t in pools.added[:50])]
    card = render_card(recipe=recipe.data, fingerprint=fp, split_rows=split_rows, files=files,
                       counts=counts, tasks=tasks, default_key=default_key,
                       config_names=TREE_CONFIGS, extra=extra)
    files[CARD] = shards.write_bytes(output, CARD, card.encode("utf-8")).as_dict()
    manifest = {
        "radvqa_manifest": 1,
        "recipe": {"name": recipe.name, "content": recipe.data},
        "seed": seed,
        "fingerprint": fp,
        "versions": versions(),
        "inputs": {"cases": n_images, "fingerprint": keys.digest(*(r.get("inputs_digest", "") for r in unit_reports))},
        "splits": {s: {"cases": split_images[s], "images": split_images[s],
                       "qa": split_rows["instruct"][s] + split_rows["alignment"][s],
                       "shards": sum(1 for u in units if u.split == s)}
                   for s in recipe.section("splits")["fractions"]},
        "counts": counts,
        "tasks": dict(sorted(tasks.items())),
        "labels_unknown_to_pools": ["/".join(t) for t in pools.added],
        "files": dict(sorted(files.items())),
    }
    if bench_info:
        manifest["benchmark"] = bench_info
    shards.write_json(output, MANIFEST, manifest)
    return manifest
