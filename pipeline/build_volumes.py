"""Launcher for volume-level recipes (``source.kind: volume_qa``, e.g. 3d-rad).

Plans patient units (all studies of a patient together), runs
:class:`BuildVolumeCorpus`, then writes card and manifest, including the
per-task answer distribution, which it also prints.
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
    load_questions,
    remove_stale,
    summary_table,
    versions,
)
from pipeline.card import render_card
from pipeline.errors import ConfigError
from pipeline.recipes import Recipe
from pipeline.sources import discover_cases
from pipeline.units import STATE_DIR, UNITS_DIR
from pipeline.volume_units import QA3D_SCHEMA, VOLUMES_SCHEMA, VolumeContext, plan_patient_units

VOLUME_CONFIGS = ("qa", "volumes")


def sample_longitudinal(output: str, patients: int, log) -> str:
    from pipeline import sample

    if "://" in output:
        raise ConfigError("--input is required when --output is not a local folder")
    root = os.path.join(output, STATE_DIR, "sample-longitudinal")
    stamp = os.path.join(root, ".radvqa-sample")
    want = f"{sample.SAMPLE_VERSION}:{patients}"
    if os.path.isfile(stamp) and open(stamp).read() == want:
        return root
    log(f"writing the longitudinal sample ({patients} patients x 3 studies) to {root}")
    sample.write_longitudinal_sample(root, n_patients=patients)
    with open(stamp, "w") as f:
        f.write(want)
    return root


def build_volume_qa(recipe: Recipe, output: str, *, input_dir=None, seed=None, layout=None,
                    beam_args=(), max_reject_fraction=0.05, log=None) -> BuildResult:
    import apache_beam as beam

    from pipeline.transforms import BuildVolumeCorpus

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    seed = int(recipe.data["seed"] if seed is None else seed)
    source, vol = recipe.section("source"), recipe.section("volumes")
    families, pools = load_questions(recipe)
    key, is_default = keys.resolve_pseudonym_key(recipe.section("privacy").get("pseudonym_key"))
    if is_default:
        log(f"warning: pseudonyms use the built-in default key; set ${keys.PSEUDONYM_KEY_ENV}")
    output = output.rstrip("/") or "/"
    if "://" not in output:
        output = os.path.abspath(output)
    if input_dir is None:
        input_dir = sample_longitudinal(output, int(source.get("sample_patients", 4)), log)
    root = os.path.abspath(input_dir)
    cases, rejected = discover_cases(root, pseudonym_key=key,
                                     layout=layout or source.get("layout", "auto"))
    if not cases and not rejected:
        raise ConfigError(f"--input: {input_dir}: found no case folders (empty input)")
    fractions = recipe.section("splits")["fractions"]
    units = plan_patient_units(cases, fractions, seed, int(recipe.section("shards")["patients_per_shard"]))
    fp = fingerprint(recipe, seed)
    findings = tuple(recipe.section("questions").get("settings", {}).get("findings", ()))
    ctx = VolumeContext(
        output=output, input_root=root, families=families, pools=pools, seed=seed, findings=findings,
        target_shape=tuple(int(x) for x in vol.get("target_shape", (32, 128, 128))),
        window=vol.get("window", "soft_tissue"), dtype=vol.get("dtype", "float16"),
        qa_settings=dict(recipe.section("questions").get("settings") or {}), fingerprint=fp,
        max_voxels=int(source.get("max_voxels", 64_000_000)))
    planned_dead = [
        {"case_key": keys.pseudonym(key, "case", r.source), "source": r.source, "stage": "discover",
         "reason": r.reason, "error_type": "CaseError", "message": r.message} for r in rejected]
    log(f"radvqa build: recipe {recipe.name}, {len(cases)} volumes of "
        f"{len({c.patient_key for c in cases})} patients in {len(units)} units -> {output}")
    from apache_beam.io.filesystems import FileSystems

    for u in units:
        path = shards.join(output, f"{UNITS_DIR}/{u.unit_id}.json")
        if FileSystems.exists(path):
            FileSystems.delete([path])
    with Progress(output, [(u.unit_id, len(u.cases)) for u in units], log):
        pipeline = beam.Pipeline(options=beam_options(beam_args))
        _ = pipeline | "BuildVolumeCorpus" >> BuildVolumeCorpus(units, ctx, planned_dead)
        pipeline.run().wait_until_finish()
    manifest = finalise_volumes(output, recipe, fp, seed, units, rejected, is_default)
    seconds = time.monotonic() - started
    n = manifest["counts"]["discover"]["inputs"]
    bad = manifest["counts"]["discover"]["rejected"] + manifest["counts"]["read"]["rejected"]
    fraction = bad / n if n else 0.0
    shards.write_json(output, LAST_RUN, {"seconds": round(seconds, 3), "units": len(units)})
    log(summary_table(manifest, seconds, fraction, max_reject_fraction))
    log(answer_table(manifest["answers"]))
    return BuildResult(output, manifest, seconds, fraction, 0 if fraction <= max_reject_fraction else 3)


def answer_table(answers: dict) -> str:
    lines = ["", "answer distribution per task:"]
    for task, dist in answers.items():
        total = sum(dist.values())
        top = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
        lines.append(f"  {task:<24} {total:>6}  " + ", ".join(f"{a}: {c / total:.0%}" for a, c in top))
    return "\n".join(lines)


def finalise_volumes(output, recipe, fp, seed, units, rejected, default_key) -> dict:
    reports = collect_reports(output, [u.unit_id for u in units])
    files: dict[str, dict] = {}
    for r in reports:
        files.update(r["files"])
    remove_stale(output, VOLUME_CONFIGS, set(files))
    files["dead_letters/dead_letters.jsonl"] = dead_letters_entry(output)
    n_cases = sum(r["counts"]["read"]["inputs"] for r in reports)
    reasons = Counter(r.reason for r in rejected)
    counts = {"discover": {"inputs": n_cases + len(rejected), "accepted": n_cases, "rejected": len(rejected),
                           "rejected_by_reason": dict(sorted(reasons.items()))}}
    total, why = Counter(), Counter()
    for r in reports:
        c = r["counts"]["read"]
        total.update({k: c[k] for k in ("inputs", "accepted", "rejected")})
        why.update(c["rejected_by_reason"])
    counts["read"] = {k: total[k] for k in ("inputs", "accepted", "rejected")} | {
        "rejected_by_reason": dict(sorted(why.items()))}
    split_rows = {"qa": Counter(), "volumes": Counter()}
    tasks, inputs = Counter(), {}
    answers: dict[str, Counter] = {}
    for r in reports:
        split_rows["qa"][r["split"]] += r["rows"]["qa"]
        split_rows["volumes"][r["split"]] += r["rows"]["volumes"]
        tasks.update(r["tasks"])
        inputs.update(r["inputs"])
        for task, dist in r["answers"].items():
            answers.setdefault(task, Counter()).update(dist)
    answers_out = {t: dict(sorted(c.items())) for t, c in sorted(answers.items())}
    extra = ["", "## Answer distribution per task", "", "| task | answers |", "|---|---|"]
    extra += [f"| {t} | " + ", ".join(f"{a}: {n}" for a, n in d.items()) + " |" for t, d in answers_out.items()]
    extra += ["", "`volumes` rows hold `.npy` bytes (`numpy.load(io.BytesIO(row['npy']))`), shape "
              "`[k, j, i]` (axial slices inferior to superior, each in display orientation), "
              "windowed to [0, 1]; `boxes3d` are `[k0, j0, i0, k1, j1, i1]` on that grid, maxima "
              "exclusive. Numeric answers carry `answer_value`, `answer_unit` and "
              "`answer_tolerance` for grading."]
    card = render_card(recipe=recipe.data, fingerprint=fp, split_rows=split_rows, files=files,
                       counts=counts, tasks=tasks, default_key=default_key,
                       config_names=VOLUME_CONFIGS, extra=extra,
                       schemas={"qa": QA3D_SCHEMA, "volumes": VOLUMES_SCHEMA})
    files[CARD] = shards.write_bytes(output, CARD, card.encode("utf-8")).as_dict()
    manifest = {
        "radvqa_manifest": 1,
        "recipe": {"name": recipe.name, "content": recipe.data},
        "seed": seed, "fingerprint": fp, "versions": versions(),
        "inputs": {"cases": len(inputs),
                   "fingerprint": keys.digest(*(f"{k}:{v}" for k, v in sorted(inputs.items())))},
        "splits": {s: {"cases": split_rows["volumes"][s], "images": split_rows["volumes"][s],
                       "qa": split_rows["qa"][s], "shards": sum(1 for u in units if u.split == s)}
                   for s in recipe.section("splits")["fractions"]},
        "counts": counts, "tasks": dict(sorted(tasks.items())), "answers": answers_out,
        "labels_unknown_to_pools": [], "files": dict(sorted(files.items())),
    }
    shards.write_json(output, MANIFEST, manifest)
    return manifest
