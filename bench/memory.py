"""Peak memory of a build of N and of 10N phantom cases (target: ratio at most 1.3).

Each build is ``radvqa build --recipe sample`` in a child process with 2 workers
(FnApiRunner ``multi_processing``); the peak is the largest sum of the resident set
sizes of the launcher and all its descendants (Beam's worker processes), sampled every
50 ms from ``/proc`` (:class:`bench.harness.PeakRSS`).  The builds' wall times and
counts are kept too: the 10N build is also the end-to-end measure of the pipeline at
2 workers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.harness import RUNNERS, run_cli


def build_rss(input_dir: Path, output: Path, log_file: Path) -> dict:
    """One sample build of ``input_dir`` at 2 workers: seconds, peak RSS, counts."""
    shutil.rmtree(output, ignore_errors=True)
    args = ["build", "--recipe", "sample", "--input", str(input_dir), "--output", str(output),
            *RUNNERS["2 workers"]]
    seconds, peak, code = run_cli(args, log_file)
    manifest = json.loads((output / "manifest.json").read_text())
    splits = manifest["splits"].values()
    return {"seconds": round(seconds, 3), "peak_rss_bytes": peak, "exit_code": code,
            "cases": manifest["counts"]["extract"]["accepted"],
            "images": sum(s["images"] for s in splits), "qa": sum(s["qa"] for s in splits)}
