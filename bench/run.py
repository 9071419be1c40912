"""Benchmarks (``make bench``): measured numbers, printed as a table and written to
``bench/results.json``.  Never run as tests.

* ``sample build``: the full ``radvqa build`` of the built-in sample (N phantom
  patients) with FnApiRunner, in memory (1 worker) and multi_processing
  (2 workers): wall time, cases/s, images/s, QA rows/s.
* ``plain loop``: the same extraction, question rendering and Parquet writing
  in a single-process Python loop over the same cases (the practical limit);
  the pipeline's ratio to it is reported.

Usage: ``python bench/run.py [--patients N] [--out bench/results.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_once(recipe: str, input_dir: str, out: str, beam_args: list[str]) -> tuple[float, dict]:
    from pipeline.build import build

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = build(recipe, out, input_dir=input_dir, beam_args=beam_args, log=lambda m: None)
    return time.perf_counter() - t0, result.manifest


def plain_loop(recipe_name: str, input_dir: str, out: str) -> tuple[float, dict]:
    """Single-process loop doing the same work as the pipeline, without Beam."""
    from pipeline import keys
    from pipeline.build import load_questions
    from pipeline.extract import SliceSettings
    from pipeline.recipes import load_recipe
    from pipeline.sources import discover_cases
    from pipeline.units import BuildContext, extract_unit, plan_units, render_unit

    recipe = load_recipe(recipe_name)
    families, pools = load_questions(recipe)
    key, _ = keys.resolve_pseudonym_key(None)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cases, _ = discover_cases(input_dir, pseudonym_key=key)
    units = plan_units(cases, recipe.section("splits")["fractions"], recipe.data["seed"],
                       recipe.section("shards")["cases_per_shard"])
    ctx = BuildContext(out, input_dir, SliceSettings.from_recipe(recipe.section("slices")),
                       families, pools, recipe.data["seed"],
                       recipe.section("questions").get("settings") or {})
    images = qa = 0
    for unit in units:
        records, report, _ = extract_unit(unit, ctx)
        report, _ = render_unit(unit, records, report, ctx)
        images += report["rows"]["images"]
        qa += report["rows"]["qa"]
    return time.perf_counter() - t0, {"cases": len(cases), "images": images, "qa": qa}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--recipe", default="sample")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = ap.parse_args(argv)

    import logging

    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from pipeline.sample import write_sample

    work = tempfile.mkdtemp(prefix="radvqa-bench-")
    try:
        inp = os.path.join(work, "input")
        write_sample(inp, n_patients=args.patients)
        rows = []
        loop_s, loop_counts = plain_loop(args.recipe, inp, os.path.join(work, "loop"))
        rows.append(("plain loop (1 process)", loop_s, loop_counts))
        for label, beam_args in (
            ("pipeline, in_memory, 1 worker", ["--direct_running_mode=in_memory"]),
            ("pipeline, multi_processing, 2 workers",
             ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
        ):
            seconds, manifest = build_once(args.recipe, inp, os.path.join(work, "out"), beam_args)
            counts = {
                "cases": manifest["counts"]["extract"]["accepted"],
                "images": sum(s["images"] for s in manifest["splits"].values()),
                "qa": sum(s["qa"] for s in manifest["splits"].values()),
            }
            rows.append((label, seconds, counts))
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "patients": args.patients,
            "recipe": args.recipe,
            "runs": [
                {"run": label, "seconds": round(s, 3), **c,
                 "cases_per_s": round(c["cases"] / s, 3), "images_per_s": round(c["images"] / s, 2),
                 "qa_per_s": round(c["qa"] / s, 2), "ratio_to_plain_loop": round(loop_s / s, 3)}
                for label, s, c in rows
            ],
            "peak_rss_mb_launcher": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nradvqa bench: recipe {args.recipe}, {args.patients} phantom patients, "
          f"{os.cpu_count()} CPUs")
    print(f"{'run':<42} {'s':>7} {'cases/s':>8} {'images/s':>9} {'QA/s':>8} {'vs loop':>8}")
    for r in results["runs"]:
        print(f"{r['run']:<42} {r['seconds']:>7.2f} {r['cases_per_s']:>8.2f} "
              f"{r['images_per_s']:>9.1f} {r['qa_per_s']:>8.1f} {r['ratio_to_plain_loop']:>8.2f}")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
