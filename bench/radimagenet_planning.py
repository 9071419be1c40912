"""The launcher's planning of a RadImageNet-style tree, alone: CPU seconds against image count.

Planning costs per image, not per pixel, so a cached 16 px tree
(:func:`bench.radimagenet_scale.tree`) stands for a 224 px one.  Times
:func:`bench.harness.launch` — discovery, splits, fingerprints, units, the balanced
question plans, the unit plan files — with ``time.process_time`` (this process only;
Apache Beam, which the run imports after planning, is imported before the clock starts),
and prints a digest of everything planned (plan files, the worker context's extras, the
question fingerprint, the unit refs): two commits that plan the same tree alike print the
same digest.  Never run as a test, not part of ``make bench``.

Usage: ``python bench/radimagenet_planning.py [--images 200000] [--profile]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import launch, setup_imports  # noqa: E402 — after the path set-up above
from bench.radimagenet_scale import RECIPE, tree  # noqa: E402


def plan_digest(out: Path, planned) -> str:
    """sha256 of the plan files, the benchmark plan, the extras, the QA fingerprint and refs."""
    h = hashlib.sha256()
    for p in sorted((out / ".radvqa").rglob("*")):
        if p.is_file() and p.name != "build.json":
            h.update(str(p.relative_to(out)).encode())
            h.update(p.read_bytes())
    extras = {k: v for k, v in planned.ctx.extras.items() if k != "run_id"}
    h.update(json.dumps(extras, sort_keys=True, default=str).encode())
    h.update(planned.ctx.qa_fp.encode())
    h.update(repr(planned.refs).encode())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200_000, help="tree size (default 200,000)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the planning")
    args = ap.parse_args(argv)
    setup_imports()
    import pipeline.launch.build  # noqa: F401 — imports are not planning
    import pipeline.launch.runner  # noqa: F401 — the run imports Apache Beam after planning

    t0 = time.perf_counter()
    tree_dir, written = tree(args.images, size=16)
    if written is not None:
        print(f"tree of {args.images:,} 16 px images written in {time.perf_counter() - t0:.0f} s")
    out = Path(tempfile.mkdtemp(prefix="radvqa-bench-plan-"))
    try:
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        c0, w0 = time.process_time(), time.perf_counter()
        planned = launch(RECIPE, tree_dir, out)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if profiler:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        print(f"planning {planned.n_cases:,} images in {len(planned.refs)} units: CPU {cpu:.2f} s, "
              f"wall {wall:.2f} s{' (under cProfile)' if profiler else ''}; "
              f"plan digest {plan_digest(out, planned)}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
