"""The learned text-only baseline alone on a built corpus: CPU and wall seconds.

What the launcher's finalise runs for the audit's ``learned_text`` (``learned_from_shards``
over the audited configs' QA shards: key columns, sampling, featurising, fitting, scoring),
without the cache — every group fitted.  One process (``--workers 1``), or with a
``forkserver`` pool of ``--workers − 1`` processes fitting the largest groups while this one
fits the others, as ``radvqa build --workers N`` does on a large corpus (the pool is started
before timing, as the warm workers' server is; the pool's CPU is not this process's).

Usage: ``python bench/learned.py CORPUS_DIR [--workers N]``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.qa import learned  # noqa: E402 — after the path set-up above


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    manifest = json.loads((Path(args.corpus) / "manifest.json").read_text())
    audit = manifest["audit"]
    configs = {g["config"] for g in audit["groups"]}
    shards = [(rel.split("/", 1)[0], rel) for rel in manifest["files"]
              if rel.endswith(".parquet") and rel.count("/") == 1 and rel.split("/", 1)[0] in configs]
    learn_from = dict(audit.get("learn_from") or {})
    pool = None
    if args.workers > 1:
        pool = ProcessPoolExecutor(args.workers - 1, mp_context=multiprocessing.get_context("forkserver"))
        pool.submit(int, 0).result()
    cpu, wall = time.process_time(), time.perf_counter()
    result = learned.learned_from_shards(learned._read(args.corpus), shards, learn_from, pool=pool,
                                         pool_jobs=max(1, args.workers - 1))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if pool is not None:
        pool.shutdown()
    print(json.dumps({"corpus": args.corpus, "workers": args.workers, "groups": len(result),
                      "launcher_cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}))


if __name__ == "__main__":
    main()
