"""RadImageNet-VQA at scale: a synthetic tree of N images (default 750,000) built into
~10N QA rows, measured.  Never run as a test.

* The tree (``pipeline.inputs.sample_tree.write_tree``: the reference label frequencies,
  ``--size`` px PNGs, default 224 like RadImageNet's, textured grey images of ~47 KB each
  — the mean PNG size is measured and reported) is cached under
  ``.cache/bench/radimagenet-N-S``; writing it is timed once and is not part of the build.
* The build: ``pipeline.launch.build.build("radimagenet-vqa", …, workers=2)`` (FnApiRunner,
  two warm workers: ``radvqa build --workers 2``) from an empty output folder, called in a child process
  (so that its memory is its own, and so that it can be stopped): wall time of the call
  (launcher, pipeline, benchmark, finalisation, report), QA rows/s, output size, and the
  peak summed RSS of the child and its Beam workers, sampled every 50 ms, and the CPU
  seconds of the child and its reaped children (``getrusage``: the launcher's, since the
  warm workers are the forkserver's children) and of the whole process tree, workers
  included (``tree_cpu_s``, sampled from ``/proc``: comparable on a shared machine, where
  wall time is not).  The wall time
  is split into phases from the launcher's time-stamped log lines and the mtimes of the
  receipts it wrote.  With ``--deadline`` the build is stopped (its process tree killed)
  once that many seconds have passed, and the progress it had made is reported instead.
* The plain loop: one process calling :func:`pipeline.engine.execute.process_unit` — what the
  pipeline's ``ProcessUnitFn`` calls: read and check the PNGs, render ten questions per
  image, write the ``alignment`` and ``instruct`` shards — unit after unit, after the same
  launcher planning (:func:`bench.harness.launch`, timed apart).  With ``--loop-images``
  smaller than ``--images`` the loop runs on its own cached tree of that many images,
  written the same way (same label frequencies, same 10,000-image units): planning the
  big tree a second time would cost minutes of ``make bench`` for no information.  The
  benchmark config (1,000 images, written once at the end of a build) is not in the loop.

The ratio compared is QA rows/s of the whole build (2 workers, launcher included) to
QA rows/s of the loop's units (1 process, launcher excluded): conservative for the
pipeline.  Results are written to ``--json`` after each part.

With ``--scale-to M`` the build's measured rates are also stated scaled to M images
(``seconds * M / images``), for when the M-image tree does not fit the disk or the time;
with ``--loop-images N`` smaller than ``--images`` the N-image tree is built too, and each
phase is projected to M on the line through the two builds (:func:`line_projection`: fixed
parts such as Beam's start-up, the benchmark and the learned baseline's capped fits charged
once, not once per ``--images``).  Both projections are reported.

Usage: ``python bench/radimagenet_scale.py [--images 750000] [--size 224] [--loop-images N]
[--scale-to M] [--deadline SECONDS] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402 — after the path set-up above
    ROOT,
    RUNNERS,
    PeakRSS,
    cached_dir,
    children,
    launch,
    machine,
    setup_imports,
    source_digest,
    split_workers,
    worker_output_to,
)

RECIPE = "radimagenet-vqa"


def tree(n_images: int, size: int = 224) -> tuple[Path, float | None]:
    """The cached synthetic tree of ``n_images`` ``size`` px PNGs (plus the few US images
    it adds; textured above 16 px)."""
    from pipeline.config.resources import resource_dir
    from pipeline.core import keys
    from pipeline.core.imaging import encode_png
    from pipeline.inputs.sample_tree import label_frequencies, write_tree
    from pipeline.qa.label_pools import load_label_pools

    pool_file = resource_dir("distractor_pools") / "radimagenet.yaml"
    # str(): the stamp of the trees cached before keys.digest hashed bytes as bytes
    stamp = (f"tree:{n_images}:{size}:{keys.digest(str(pool_file.read_bytes()))}:"
             f"{source_digest(write_tree, label_frequencies, load_label_pools, encode_png)}")
    name = f"radimagenet-{n_images}" + ("" if size == 16 else f"-{size}")
    return cached_dir(name, stamp, lambda p: write_tree(
        p, n_images, load_label_pools([pool_file]), size=size, textured=size > 16))


def png_bytes(tree_dir: Path) -> dict:
    """Count and mean size of the tree's PNGs."""
    n = total = 0
    for dirpath, _, files in os.walk(tree_dir):
        for f in files:
            if f.endswith(".png"):
                n += 1
                total += os.stat(os.path.join(dirpath, f)).st_size
    return {"pngs": n, "png_bytes_total": total, "png_bytes_mean": round(total / max(1, n))}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class TimedLog:
    """The launcher's log lines, each written to ``path`` at once with the seconds since
    the build started (readable while the build runs, and after it is stopped)."""

    def __init__(self, path: Path):
        self.t0 = time.perf_counter()
        self.path = path

    def __call__(self, msg: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.perf_counter() - self.t0:.2f}\t{msg}\n")


def first_line(path: Path, prefix: str) -> float | None:
    """Seconds of the first line of a :class:`TimedLog` file starting with ``prefix``."""
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        t, _, msg = line.partition("\t")
        if msg.lstrip().startswith(prefix):
            return float(t)
    return None


def unit_receipts(output: Path) -> list[Path]:
    return [p for p in (output / ".radvqa" / "units").glob("*.json") if p.name != "benchmark.json"]


def phases(output: Path, started: float, planned: float | None) -> dict:
    """Where a finished build's wall time went: planning (until the launcher logs its
    units), units (until the last unit receipt), benchmark (its receipt), finalisation
    (dead letters, audit, card, report, manifest)."""
    units = max(p.stat().st_mtime for p in unit_receipts(output))
    bench = output / ".radvqa" / "units" / "benchmark.json"
    bench_t = bench.stat().st_mtime if bench.is_file() else units
    end = (output / "manifest.json").stat().st_mtime
    planned = planned or 0.0
    return {"planning_s": round(planned, 1), "units_s": round(units - started - planned, 1),
            "benchmark_s": round(bench_t - units, 1), "finalise_s": round(end - bench_t, 1)}


def build_child(tree_dir: str, output: str, work: str) -> None:
    """In the child process: the build through the API; writes ``work/build.json``."""
    setup_imports()
    from pipeline.launch.build import build

    work_dir, out = Path(work), Path(output)
    log = TimedLog(work_dir / "build.log")
    started = time.time()
    with worker_output_to(work_dir / "workers.log"):
        beam_args, workers = split_workers(RUNNERS["2 warm workers"])
        result = build(RECIPE, output, input_dir=tree_dir, log=log, beam_args=beam_args,
                       workers=workers)
    seconds = time.perf_counter() - log.t0
    cpu = cpu_seconds()
    m = result.manifest
    res = {
        "completed": True,
        "runner": "2 warm workers",
        "seconds": round(seconds, 1),
        "cpu_s": round(cpu, 1),
        "phases": phases(out, started, first_line(work_dir / "build.log", "units:")),
        "images": m["counts"]["read"]["accepted"],
        "qa_rows": sum(s["qa"] for s in m["splits"].values()),
        "benchmark": {k: m["benchmark"][k] for k in ("images", "rows")} if "benchmark" in m else None,
        "output_bytes": sum(f["bytes"] for f in m["files"].values()),
        "exit_code": result.exit_code,
    }
    (work_dir / "build.json").write_text(json.dumps(res, indent=2))


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (the build child and its Beam workers)."""
    import signal

    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children(p))
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def progress(output: Path, log_file: Path) -> dict:
    """How far a stopped build had come: planning time, units planned and done."""
    plans = [p for p in (output / ".radvqa" / "plan").glob("*.jsonl")]
    return {"planning_s": first_line(log_file, "units:"), "units_planned": len(plans),
            "units_done": len(unit_receipts(output))}


def measure_build(tree_dir: Path, work: Path, deadline: float | None) -> dict:
    """The pipeline build in a child process (see the module docstring)."""
    import multiprocessing

    from bench import radimagenet_scale as this  # importable by name in the child

    output = work / "corpus"
    shutil.rmtree(output, ignore_errors=True)
    # the log of an earlier build in ``work`` (the second point's build follows the first):
    # its lines would be taken for this build's (planning timed from its "units:" line)
    (work / "build.log").unlink(missing_ok=True)
    child = multiprocessing.get_context("spawn").Process(
        target=this.build_child, args=(str(tree_dir), str(output), str(work)))
    t0 = time.perf_counter()
    child.start()
    with PeakRSS(child.pid) as rss:
        child.join(deadline)
        stopped = child.is_alive()
        if stopped:
            got = progress(output, work / "build.log")
            kill_tree(child.pid)
            child.join()
    wall = time.perf_counter() - t0
    if stopped:
        return {"completed": False, "deadline_s": deadline, "progress": got,
                "peak_rss_bytes": rss.peak, "rss_samples": rss.samples,
                "tree_cpu_s": round(rss.cpu_seconds, 1),
                "process_wall_s": round(wall, 1)}
    if child.exitcode != 0:
        raise RuntimeError(f"the build child exited with {child.exitcode}; see {work}/build.log")
    res = json.loads((work / "build.json").read_text())
    return res | {"peak_rss_bytes": rss.peak, "rss_samples": rss.samples,
                  "tree_cpu_s": round(rss.cpu_seconds, 1), "process_wall_s": round(wall, 1)}


def measure_loop(tree_dir: Path, output: Path) -> dict:
    """The plain loop over every unit of ``tree_dir`` (see above)."""
    from pipeline.engine.execute import process_unit

    shutil.rmtree(output, ignore_errors=True)
    planned = launch(RECIPE, tree_dir, output)
    refs = planned.refs
    t0, c0 = time.perf_counter(), time.process_time()
    rows = images = 0
    # its own (single) process: the launcher's planning is timed apart in launch()
    for ref in refs:
        report, _ = process_unit(ref, planned.ctx, planned.kind)
        rows += report["rows"]["qa"]
        images += report["rows"]["images"]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tree": str(tree_dir.relative_to(ROOT)), "launcher_s": round(planned.seconds, 1),
            "units": len(refs), "images": images, "qa_rows": rows, "seconds": round(seconds, 1),
            "cpu_s": round(cpu, 1)}


def measure(n_images: int, loop_images: int | None, deadline: float | None, work: Path,
            save, log=print, size: int = 224, scale_to: int | None = None) -> dict:
    """Tree, build, loop; ``save(results)`` after each part."""
    tree_dir, gen_s = tree(n_images, size)
    log(f"  radimagenet: tree of {n_images} {size} px images "
        + ("reused from the cache" if gen_s is None else f"written in {gen_s:.0f} s"))
    res: dict = {"images_requested": n_images, "size_px": size,
                 "tree": str(tree_dir.relative_to(ROOT)),
                 "tree_generation_s": None if gen_s is None else round(gen_s, 1)}
    res["tree_pngs"] = png_bytes(tree_dir)
    log("  radimagenet: pipeline build, 2 warm workers"
        + (f" (stopped after {deadline:.0f} s)" if deadline else ""))
    built = res["build"] = measure_build(tree_dir, work, deadline)
    shutil.rmtree(work / "corpus", ignore_errors=True)
    save(res)
    loop_tree, loop_gen_s = tree(loop_images, size) if loop_images else (tree_dir, None)
    res["loop_tree_generation_s"] = None if loop_gen_s is None else round(loop_gen_s, 1)
    log(f"  radimagenet: plain loop over {loop_images or n_images} images"
        + ("" if loop_gen_s is None else f" (tree written in {loop_gen_s:.0f} s)"))
    loop = res["plain_loop"] = measure_loop(loop_tree, work / "loop")
    shutil.rmtree(work / "loop", ignore_errors=True)
    res["loop_qa_rows_per_s"] = round(loop["qa_rows"] / loop["seconds"])
    res["loop_images_per_s"] = round(loop["images"] / loop["seconds"])
    if built["completed"]:
        res["build_qa_rows_per_s"] = round(built["qa_rows"] / built["seconds"])
        res["build_images_per_s"] = round(built["images"] / built["seconds"])
        res["ratio_to_plain_loop"] = round(res["build_qa_rows_per_s"] / res["loop_qa_rows_per_s"], 3)
        if scale_to and scale_to != built["images"]:
            f = scale_to / built["images"]
            res["scaled"] = {"images": scale_to, "seconds": round(built["seconds"] * f),
                             "cpu_s": round(built["cpu_s"] * f),
                             "note": f"measured on {built['images']:,} images, scaled linearly"}
    save(res)
    if scale_to and built["completed"] and loop_images and loop_images < built["images"]:
        log(f"  radimagenet: pipeline build of the {loop_images:,}-image tree (second point)")
        small = res["build_small"] = measure_build(loop_tree, work, deadline)
        shutil.rmtree(work / "corpus", ignore_errors=True)
        if small["completed"]:
            res["scaled_line"] = line_projection(small, built, scale_to)
        save(res)
    return res


def line_projection(small: dict, big: dict, target: int) -> dict:
    """Each phase's seconds at ``target`` images on the line through two measured builds
    (``small`` and ``big``: ``images``, ``seconds``, ``phases``): a fixed part plus a part
    per image, fitted per phase (a phase measured shorter on the bigger build counts as fixed:
    its slope is taken as 0, never negative).  Proportional scaling of one build (``scaled``)
    charges its fixed parts — Beam's start-up, the 1,000-image benchmark, the learned
    baseline's capped fits — once per 100K images; this line charges them once."""
    n0, n1 = small["images"], big["images"]
    phases = {}
    for name, t1 in big["phases"].items():
        t0 = small["phases"].get(name, 0.0)
        slope = max(0.0, (t1 - t0) / (n1 - n0))
        phases[name] = round(t1 + slope * (target - n1), 1)
    rest0 = small["seconds"] - sum(small["phases"].values())
    rest1 = big["seconds"] - sum(big["phases"].values())
    rest = rest1 + max(0.0, (rest1 - rest0) / (n1 - n0)) * (target - n1)
    return {"images": target, "seconds": round(sum(phases.values()) + rest),
            "phases": phases, "other_s": round(rest, 1),
            "points": [[n0, small["seconds"]], [n1, big["seconds"]]],
            "note": f"line through the builds of {n0:,} and {n1:,} images, per phase"}


def summary(res: dict) -> str:
    b, lp = res["build"], res["plain_loop"]
    if b["completed"]:
        built = [f"RadImageNet-VQA scale: {b['images']:,} images -> {b['qa_rows']:,} QA rows "
                 f"(+ benchmark {b['benchmark']})",
                 f"  build, 2 warm workers:  {b['seconds']:.1f} s {b['phases']}, "
                 f"{res['build_images_per_s']:,} images/s, {res['build_qa_rows_per_s']:,} QA rows/s, "
                 f"CPU {b['cpu_s']:.0f} s launcher, {b.get('tree_cpu_s', 0):.0f} s with the workers, output {b['output_bytes'] / 1e9:.2f} GB",
                 f"  build / loop:      {res['ratio_to_plain_loop']:.2f}x"]
    else:
        built = [f"RadImageNet-VQA scale: {res['images_requested']:,} images",
                 f"  build, 2 warm workers:  stopped after {b['deadline_s']:.0f} s: {b['progress']}"]
    return "\n".join(built + [
        f"  peak RSS:          {b['peak_rss_bytes'] / 2**30:.2f} GiB (child + workers)",
        f"  plain loop:        {lp['images']:,} images in {lp['units']} units, "
        f"{lp['seconds']:.1f} s (CPU {lp['cpu_s']:.1f} s), {res['loop_images_per_s']:,} images/s, "
        f"{res['loop_qa_rows_per_s']:,} QA rows/s "
        f"(launcher {lp['launcher_s']} s, not counted)",
        f"  tree:              {res['size_px']} px, mean PNG {res['tree_pngs']['png_bytes_mean']:,} B; "
        f"generation {res['tree_generation_s'] or 'cached'} s",
    ] + ([f"  scaled to {res['scaled']['images']:,}: {res['scaled']['seconds']} s "
          f"({res['scaled']['note']})"] if "scaled" in res else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=750_000, help="tree size (default 750,000)")
    ap.add_argument("--size", type=int, default=224, help="PNG side in pixels (default 224)")
    ap.add_argument("--scale-to", type=int, default=0,
                    help="also state the build's time scaled to this many images")
    ap.add_argument("--loop-images", type=int, default=0,
                    help="images of the plain loop's own tree (default 0: the build's tree)")
    ap.add_argument("--deadline", type=float, default=0,
                    help="stop the build after this many seconds (default 0: never)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results_radimagenet.json"),
                    help="where to write the raw results")
    args = ap.parse_args(argv)
    setup_imports()
    out = Path(args.json)
    facts = machine()

    def save(res: dict) -> None:
        out.write_text(json.dumps(res | {"machine": facts}, indent=2) + "\n")

    work = Path(tempfile.mkdtemp(prefix="radvqa-bench-rin-"))
    try:
        res = measure(args.images, args.loop_images or None, args.deadline or None, work, save,
                      size=args.size, scale_to=args.scale_to or None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
