"""RadImageNet-VQA at scale: a synthetic tree of N images (default 750,000) built into
~10N QA rows, measured.  Never run as a test.

Reports, into ``bench/results_radimagenet.json`` and a printed table:

* tree generation time (not part of the build);
* the pipeline build (FnApiRunner, ``multi_processing``, 2 workers): wall time,
  QA rows/s, peak RSS of the launcher plus its worker processes (sampled);
* a plain single-process loop doing the same reading, checking, rendering and
  Parquet writing with the same functions (``tree_units.run_tree_unit``), on a
  ``--loop-images`` subset (default: all), and the pipeline's speed ratio to it.

Usage: ``python bench/radimagenet_scale.py [--images 750000] [--loop-images N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class PeakRSS:
    """Peak summed RSS of this process and all its descendants, sampled every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _tree(self, pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                with open(f"/proc/{p}/task/{p}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        return out

    def _rss(self) -> int:
        total = 0
        for p in self._tree(os.getpid()):
            try:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                pass
        return total

    def _run(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def plain_loop(tree: str, out: str, n_images: int | None) -> tuple[float, int]:
    """Single process: discover, plan, then run every unit in turn (no Beam)."""
    from pipeline import keys, shards
    from pipeline.build_tree import load_tree_questions
    from pipeline.radimagenet import discover_tree
    from pipeline.recipes import load_recipe
    from pipeline.tree_units import TreeContext, plan_lines, plan_tree_units, run_tree_unit

    recipe = load_recipe("radimagenet-vqa")
    families, pools = load_tree_questions(recipe)
    fr = recipe.section("splits")["fractions"]
    t0 = time.perf_counter()
    images, _, _ = discover_tree(tree, modalities=["CT", "MR"], pools=pools,
                                 pseudonym_key=keys.DEFAULT_PSEUDONYM_KEY, fractions=fr,
                                 seed=recipe.data["seed"])
    if n_images:
        images = images[:n_images]
    pools = pools.with_observed((i.modality, i.region, i.label) for i in images)
    units = plan_tree_units(images, fr, recipe.section("shards")["images_per_shard"])
    ctx = TreeContext(out, tree, families, pools, recipe.data["seed"],
                      recipe.section("questions").get("settings") or {})
    rows = 0
    for unit, members in units.items():
        shards.write_bytes(out, unit.plan, plan_lines(members))
        report, _ = run_tree_unit(unit, ctx)
        rows += report["rows"]["instruct"] + report["rows"]["alignment"]
    return time.perf_counter() - t0, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=750_000)
    ap.add_argument("--loop-images", type=int, default=0, help="subset for the plain loop (0 = all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_radimagenet.json"))
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # Beam's worker start-up chatter

    from pipeline.build import build
    from pipeline.radimagenet import load_label_pools, write_tree
    from pipeline.resources import resource_dir

    work = args.work or tempfile.mkdtemp(prefix="radvqa-rin-")
    tree = os.path.join(work, "tree")
    try:
        t0 = time.perf_counter()
        if not os.path.isdir(tree):
            write_tree(tree, args.images, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
        gen_s = time.perf_counter() - t0
        out = os.path.join(work, "corpus")
        shutil.rmtree(out, ignore_errors=True)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            result = build("radimagenet-vqa", out, input_dir=tree, log=lambda m: None,
                           beam_args=["--direct_running_mode=multi_processing",
                                      f"--direct_num_workers={args.workers}"])
            build_s = time.perf_counter() - t0
        m = result.manifest
        qa = sum(s["qa"] for s in m["splits"].values())
        images = m["counts"]["read"]["accepted"]
        size = sum(f["bytes"] for f in m["files"].values())
        loop_s, loop_rows = plain_loop(tree, os.path.join(work, "loop"), args.loop_images or None)
        loop_rate = loop_rows / loop_s
        res = {
            "images_requested": args.images, "images_built": images, "qa_rows": qa,
            "benchmark": m.get("benchmark"), "tree_generation_s": round(gen_s, 1),
            "build_s": round(build_s, 1), "qa_rows_per_s": round(qa / build_s),
            "peak_rss_gib": round(rss.peak / 2**30, 2), "output_gb": round(size / 1e9, 2),
            "workers": args.workers, "plain_loop_images": args.loop_images or images,
            "plain_loop_s": round(loop_s, 1), "plain_loop_qa_rows_per_s": round(loop_rate),
            "ratio_to_plain_loop": round((qa / build_s) / loop_rate, 2),
            "cpus": os.cpu_count(),
        }
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nRadImageNet-VQA scale: {res['images_built']} images -> {res['qa_rows']} QA rows "
          f"({res['workers']} workers, {res['cpus']} CPUs)")
    for k in ("tree_generation_s", "build_s", "qa_rows_per_s", "peak_rss_gib", "output_gb",
              "plain_loop_s", "plain_loop_qa_rows_per_s", "ratio_to_plain_loop"):
        print(f"  {k:<26} {res[k]}")
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
