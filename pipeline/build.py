"""The launcher: plan, run the Beam pipeline, finalise manifest and card.

Everything configurable is read and validated here, before any worker
starts; workers receive a pickled :class:`~pipeline.units.BuildContext`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline import __version__, keys, shards
from pipeline.arrow import SCHEMA_VERSION
from pipeline.card import render_card
from pipeline.errors import ConfigError
from pipeline.extract import EXTRACT_VERSION, SliceSettings
from pipeline.recipes import Recipe, load_recipe, pool_paths, template_paths
from pipeline.sources import discover_cases
from pipeline.units import CONFIGS, STATE_DIR, UNITS_DIR, BuildContext, plan_units

MANIFEST = "manifest.json"
CARD = "README.md"
LAST_RUN = f"{STATE_DIR}/last_run.json"
DEFAULT_RUNNER = "FnApiRunner"


@dataclass
class BuildResult:
    output: str
    manifest: dict
    seconds: float
    reject_fraction: float
    exit_code: int
    notes: list[str] = field(default_factory=list)


def load_questions(recipe: Recipe):
    """Template families (filtered by the recipe) and pools, validated."""
    from pipeline.pools import load_pools
    from pipeline.templates import load_families

    families = {}
    for path in template_paths(recipe):
        families.update(load_families(path))
    wanted = recipe.section("questions").get("families")
    if wanted:
        missing = sorted(set(wanted) - set(families))
        if missing:
            raise ConfigError(
                f"{recipe.path}: questions.families: {missing} not found among {sorted(families)}"
            )
        families = {k: families[k] for k in wanted}
    pools = load_pools(pool_paths(recipe))
    return families, pools


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
    """Recipe, seed, template and pool contents and stage versions (not input data)."""
    return keys.digest(
        json.dumps(recipe.data, sort_keys=True),
        seed,
        _file_digest(template_paths(recipe)),
        _file_digest(pool_paths(recipe)),
        EXTRACT_VERSION,
        SCHEMA_VERSION,
        __version__,
    )


def beam_options(beam_args: Sequence[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args)


def sample_input(output: str, patients: int, log) -> str:
    """Write (or reuse) the built-in phantoms under ``OUTPUT/.radvqa/sample-input``."""
    from pipeline import sample

    if "://" in output:
        raise ConfigError("--input is required when --output is not a local folder")
    root = os.path.join(output, STATE_DIR, "sample-input")
    stamp = os.path.join(root, ".radvqa-sample")
    want = f"{sample.SAMPLE_VERSION}:{patients}"
    if os.path.isfile(stamp) and open(stamp).read() == want:
        return root
    log(f"writing the built-in sample ({patients} synthetic patients) to {root}")
    sample.write_sample(root, n_patients=patients)
    with open(stamp, "w") as f:
        f.write(want)
    return root


class Progress:
    """Polls unit receipts while ``FnApiRunner.run()`` blocks; prints done/total, rate, ETA."""

    def __init__(self, output: str, units: list[tuple[str, int]], log, every: float = 2.0):
        """``units``: ``(unit_id, number of cases)`` pairs."""
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
            self._log(
                f"  progress: {cases}/{total} cases in {units}/{len(self._paths)} units, "
                f"{rate:.2f} cases/s, ETA {eta}"
            )


def build(
    recipe_name: str,
    output: str,
    *,
    input_dir: str | None = None,
    seed: int | None = None,
    layout: str | None = None,
    beam_args: Sequence[str] = (),
    max_reject_fraction: float = 0.05,
    log=None,
) -> BuildResult:
    """Build a corpus; see the README's user guide."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    recipe = load_recipe(recipe_name)
    if recipe.section("source").get("kind") == "volume_qa":
        from pipeline.build_volumes import build_volume_qa

        return build_volume_qa(recipe, output, input_dir=input_dir, seed=seed, layout=layout,
                               beam_args=beam_args, max_reject_fraction=max_reject_fraction, log=log)
    if recipe.section("source").get("kind", "volumes") == "tree":
        from pipeline.build_tree import build_tree

        return build_tree(recipe, output, input_dir=input_dir, seed=seed, beam_args=beam_args,
                          max_reject_fraction=max_reject_fraction, log=log)
    seed = int(recipe.data["seed"] if seed is None else seed)
    if not recipe.section("slices"):
        raise ConfigError(f"{recipe.path}: slices: required for volume recipes")
    settings = SliceSettings.from_recipe(recipe.section("slices"))
    families, pools = load_questions(recipe)
    key, is_default = keys.resolve_pseudonym_key(recipe.section("privacy").get("pseudonym_key"))
    if is_default:
        log(f"warning: pseudonyms use the built-in default key; set ${keys.PSEUDONYM_KEY_ENV}")
    output = output.rstrip("/") or "/"
    if "://" not in output:
        output = os.path.abspath(output)
    if input_dir is None:
        input_dir = sample_input(output, recipe.section("source").get("sample_patients", 10), log)
    input_root = os.path.abspath(input_dir)
    cases, rejected = discover_cases(
        input_root, pseudonym_key=key, layout=layout or recipe.section("source").get("layout", "auto")
    )
    if not cases and not rejected:
        raise ConfigError(f"--input: {input_dir}: found no case folders (empty input)")
    fractions = recipe.section("splits")["fractions"]
    units = plan_units(cases, fractions, seed, recipe.section("shards")["cases_per_shard"])
    fp = fingerprint(recipe, seed)
    ctx = BuildContext(
        output=output,
        input_root=input_root,
        settings=settings,
        families=families,
        pools=pools,
        seed=seed,
        qa_settings=dict(recipe.section("questions").get("settings") or {}),
        fingerprint=fp,
    )
    planned_dead = [
        {"case_key": keys.pseudonym(key, "case", r.source), "source": r.source,
         "stage": "discover", "reason": r.reason, "error_type": "CaseError", "message": r.message}
        for r in rejected
    ]
    log(
        f"radvqa build: recipe {recipe.name}, {len(cases)} cases "
        f"({len(rejected)} rejected at discovery) in {len(units)} units -> {output}"
    )
    from apache_beam.io.filesystems import FileSystems

    for u in units:  # every planned unit runs now: stale receipts must not count as done
        path = shards.join(output, f"{UNITS_DIR}/{u.unit_id}.json")
        if FileSystems.exists(path):
            FileSystems.delete([path])
    run_pipeline(units, ctx, planned_dead, beam_args, log)
    manifest = finalise(output, recipe, fp, seed, units, rejected, is_default)
    seconds = time.monotonic() - started
    discover = manifest["counts"]["discover"]["inputs"]
    rejected_cases = sum(
        manifest["counts"][s]["rejected"] for s in ("discover", "read", "extract")
    )
    fraction = rejected_cases / discover if discover else 0.0
    exit_code = 0 if fraction <= max_reject_fraction else 3
    shards.write_json(output, LAST_RUN, {"seconds": round(seconds, 3), "units": len(units)})
    result = BuildResult(output, manifest, seconds, fraction, exit_code)
    log(summary_table(manifest, seconds, fraction, max_reject_fraction))
    return result


def run_pipeline(units, ctx, planned_dead, beam_args, log) -> None:
    import apache_beam as beam

    from pipeline.transforms import BuildCorpus

    options = beam_options(beam_args)
    with Progress(ctx.output, [(u.unit_id, len(u.cases)) for u in units], log):
        pipeline = beam.Pipeline(options=options)
        _ = pipeline | "BuildCorpus" >> BuildCorpus(units, ctx, planned_dead)
        pipeline.run().wait_until_finish()


def collect_reports(output: str, unit_ids) -> list[dict]:
    """Every planned unit's receipt; a missing one is a failed build."""
    reports = []
    for unit_id in unit_ids:
        rel = f"{UNITS_DIR}/{unit_id}.json"
        if not shards.exists(output, rel):
            raise RuntimeError(f"unit {unit_id} finished without its receipt {rel}")
        reports.append(json.loads(shards.read_bytes(output, rel)))
    return reports


def remove_stale(output: str, configs, planned) -> None:
    """Delete shards of an earlier build (other shard counts) that this build did not write."""
    from apache_beam.io.filesystems import FileSystems

    for config in configs:
        match = FileSystems.match([shards.join(output, f"{config}/*.parquet")])[0]
        stale = [m.path for m in match.metadata_list if _rel(output, m.path) not in planned]
        if stale:
            FileSystems.delete(stale)


def dead_letters_entry(output: str) -> dict:
    dead = shards.read_bytes(output, "dead_letters/dead_letters.jsonl")
    return {"sha256": hashlib.sha256(dead).hexdigest(), "bytes": len(dead), "rows": dead.count(b"\n")}


def finalise(output, recipe, fp, seed, units, rejected, default_key) -> dict:
    """Collect unit receipts; remove stale shards; write the card, then the manifest."""
    reports = collect_reports(output, [u.unit_id for u in units])
    files: dict[str, dict] = {}
    for r in reports:
        files.update(r["files"])
    remove_stale(output, CONFIGS, set(files))
    files["dead_letters/dead_letters.jsonl"] = dead_letters_entry(output)
    counts = aggregate_counts(reports, rejected)
    split_rows: dict[str, Counter] = {"images": Counter(), "structures": Counter(), "qa": Counter()}
    tasks: Counter = Counter()
    unknown: set[str] = set()
    inputs = {}
    split_cases: dict[str, Counter] = {}
    for r in reports:
        for config, n in (("images", r["rows"]["images"]), ("structures", r["rows"]["structures"]),
                          ("qa", r["rows"]["qa"])):
            split_rows[config][r["split"]] += n
        split_cases.setdefault(r["split"], Counter())["cases"] += r["rows"]["cases"]
        tasks.update(r["tasks"])
        unknown.update(r["labels_unknown_to_pools"])
        inputs.update(r["inputs"])
    card = render_card(
        recipe=recipe.data, fingerprint=fp, split_rows=split_rows, files=files,
        counts=counts, tasks=tasks, default_key=default_key,
    )
    receipt = shards.write_bytes(output, CARD, card.encode("utf-8"))
    files[CARD] = receipt.as_dict()
    manifest = {
        "radvqa_manifest": 1,
        "recipe": {"name": recipe.name, "content": recipe.data},
        "seed": seed,
        "fingerprint": fp,
        "versions": versions(),
        "inputs": {
            "cases": len(inputs),
            "fingerprint": keys.digest(*(f"{k}:{v}" for k, v in sorted(inputs.items()))),
        },
        "splits": {
            s: {"cases": split_cases.get(s, Counter())["cases"], "images": split_rows["images"][s],
                "qa": split_rows["qa"][s], "shards": sum(1 for u in units if u.split == s)}
            for s in recipe.section("splits")["fractions"]
        },
        "counts": counts,
        "tasks": dict(sorted(tasks.items())),
        "labels_unknown_to_pools": sorted(unknown),
        "files": dict(sorted(files.items())),
    }
    shards.write_json(output, MANIFEST, manifest)
    return manifest


def _rel(output: str, path: str) -> str:
    return path[len(output):].lstrip("/")


def aggregate_counts(reports: list[dict], rejected) -> dict:
    """Per stage ``{inputs, accepted, rejected, rejected_by_reason}``, summed over units."""
    discover_reasons = Counter(r.reason for r in rejected)
    n_cases = sum(r["counts"]["read"]["inputs"] for r in reports)
    counts = {
        "discover": {
            "inputs": n_cases + len(rejected),
            "accepted": n_cases,
            "rejected": len(rejected),
            "rejected_by_reason": dict(sorted(discover_reasons.items())),
        }
    }
    for stage in ("read", "extract", "qa"):
        total = {"inputs": 0, "accepted": 0, "rejected": 0}
        reasons: Counter = Counter()
        for r in reports:
            c = r["counts"][stage]
            for k in total:
                total[k] += c[k]
            reasons.update(c["rejected_by_reason"])
        counts[stage] = total | {"rejected_by_reason": dict(sorted(reasons.items()))}
    for stage, c in counts.items():
        if c["inputs"] != c["accepted"] + c["rejected"]:
            raise AssertionError(f"counts.{stage}: inputs != accepted + rejected: {c}")
    return counts


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"radvqa": __version__, "schema": SCHEMA_VERSION, "extract": EXTRACT_VERSION}
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
        rows.append(
            f"{split:<10} {s['cases']:>4} cases  {s['images']:>6} images  {s['qa']:>7} QA  "
            f"{s['shards']} shard(s)"
        )
    size = sum(f["bytes"] for f in manifest["files"].values())
    rows.append("")
    rows.append(
        f"tasks: {', '.join(f'{k}={v}' for k, v in manifest['tasks'].items()) or '-'}"
    )
    rows.append(
        f"{len(manifest['files'])} files, {size / 1e6:.1f} MB, {seconds:.1f} s; rejected "
        f"{fraction:.1%} of cases (limit {limit:.0%})"
    )
    if manifest["labels_unknown_to_pools"]:
        rows.append(
            "labels unknown to the pools (distractors drawn from their own label table): "
            + ", ".join(manifest["labels_unknown_to_pools"])
        )
    return "\n".join(rows)
