"""The summary a build prints when it ends, from its manifest alone."""

from __future__ import annotations

from pipeline.qa.audit import summary_lines


def summary_table(manifest: dict, seconds: float, fraction: float, limit: float) -> str:
    """The table printed after a build: counts per stage and split, tasks, what was reused,
    size and time, then the kind's and the audit's lines."""
    rows = ["", "stage      inputs  accepted  rejected  reasons"]
    for stage, c in manifest["counts"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in c["rejected_by_reason"].items()) or "-"
        rows.append(f"{stage:<10} {c['inputs']:>6}  {c['accepted']:>8}  {c['rejected']:>8}  {reasons}")
    meta = manifest["counts"].get("discover", {}).get("meta_split")
    if meta:
        rows.append(meta_split_line(meta))
    rows.append("")
    for split, s in manifest["splits"].items():
        rows.append(f"{split:<10} {s['cases']:>6} cases  {s['images']:>7} images  {s['qa']:>8} QA  "
                    f"{s['shards']} shard(s)")
    size = sum(f["bytes"] for f in manifest["files"].values())
    rows.append("")
    rows.append(f"tasks: {', '.join(f'{k}={v}' for k, v in manifest['tasks'].items()) or '-'}")
    b = manifest["build"]
    rows.append(f"reused: {len(b['units_skipped'])} unit(s) skipped, {len(b['units_kept_pixels'])} "
                f"kept their pixels, {b['cases_copied_from_stored_shards']} case(s) copied from "
                f"stored shards, {b['cases_extracted']} extracted")
    rows.append(f"{len(manifest['files'])} files, {size / 1e6:.1f} MB, {seconds:.1f} s; rejected "
                f"{fraction:.1%} of cases (limit {limit:.0%})")
    if manifest["labels_unknown_to_pools"]:
        rows.append("labels unknown to the pools (distractors drawn from their own label table): "
                    + ", ".join(manifest["labels_unknown_to_pools"][:20]))
    if "answers" in manifest:  # the volumes kind's (its module and its extraction's only
        from pipeline.kinds.volumes import answer_lines  # here: ~4 ms of every other start-up)

        rows += answer_lines(manifest["answers"])
    if "benchmark" in manifest:
        bench = manifest["benchmark"]
        rows.append(f"benchmark: {bench['images']} images, {bench['rows']} QA {bench['composition']}")
        for region, why in (bench.get("regions_left_out") or {}).items():
            rows.append(f"benchmark: region {region} left out: {why}")
    if "audit" in manifest:
        rows += [""] + summary_lines(manifest["audit"])
    return "\n".join(rows)


def meta_split_line(meta: dict) -> str:
    """What ``meta.csv``'s split column decided (manifest ``counts.discover.meta_split``)."""
    parts = [f"{meta.get('patients_from_table', 0)} patient(s) split by {meta['table']}"]
    if meta.get("patients_in_several_splits"):
        parts.append(f"{meta['patients_in_several_splits']} patient(s) whose cases it put in "
                     f"several splits placed by {meta['rule']} ({meta['cases_moved']} case(s) moved)")
    if meta.get("patients_split_by_hash"):
        parts.append(f"{meta['patients_split_by_hash']} patient(s) without a split there split "
                     "by hash")
    if meta.get("cases_with_a_split_the_recipe_lacks"):
        parts.append(f"{meta['cases_with_a_split_the_recipe_lacks']} case(s) with a split the "
                     "recipe lacks (ignored)")
    return "splits: " + "; ".join(parts)
