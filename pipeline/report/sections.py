"""The report's sections about the corpus itself: header, build accounting, counts (rows,
questions, regions) and distributions (answers, box sizes, image sizes).

Every listing is sorted, ties broken by name, so the same corpus gives the same bytes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

from pipeline.io.corpus import Corpus, shard_split, split_key
from pipeline.report.chart_cache import Plots
from pipeline.report.charts import (
    answers_chart,
    barh_chart,
    clip_text,
    hist_chart,
    scatter_chart,
    shares_chart,
    stacked_chart,
)
from pipeline.report.contents import KINDS, QTYPE_ORDER, STAGE_ORDER
from pipeline.report.dead_letters import safe_reason
from pipeline.report.html import esc, fmt_count, fmt_share, img_tag, table
from pipeline.report.stats import AREA_FRAC_EDGES, AREA_PX_EDGES, SIZE_SAMPLE, Stats, top_items
from pipeline.schema.layout import REPORT

TOP_TABLE = 40


def header_section(manifest: Mapping, kind: str) -> str:
    recipe = manifest.get("recipe", {})
    content = recipe.get("content", {}) if isinstance(recipe, Mapping) else {}
    name = recipe.get("name", "?") if isinstance(recipe, Mapping) else str(recipe)
    # the report itself is left out, so a report written during the build (before the
    # manifest lists it) and one rebuilt later with `radvqa report` are the same bytes
    files = {p: f for p, f in manifest.get("files", {}).items() if p != REPORT}
    size = sum(int(f.get("bytes") or 0) for f in files.values())
    versions = manifest.get("versions", {})
    meta = [
        ("recipe", f"{name} (version {content.get('version', '?')}, seed {manifest.get('seed', '?')})"),
        ("fingerprint", manifest.get("fingerprint", "?")),
        ("kind", KINDS[kind]),
        ("input cases", fmt_count(manifest.get("inputs", {}).get("cases", 0))),
        ("input fingerprint", manifest.get("inputs", {}).get("fingerprint", "?")),
        ("files", f"{len(files):,} files besides this report, {size / 1e6:,.2f} MB "
                  "(manifest.json lists each with sha256)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))),
    ]
    desc = (content.get("description") or "").strip()
    out = [f"<h1>radvqa corpus report — recipe <code>{esc(name)}</code></h1>"]
    if desc:
        out.append(f'<p class="note">{esc(desc)}</p>')
    out.append('<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in meta)
               + "</dl>")
    return "\n".join(out)


def build_section(manifest: Mapping) -> str:
    counts = manifest.get("counts", {})
    rows = []
    for stage in sorted(counts, key=lambda s: (STAGE_ORDER.get(s, 9), s)):
        c = counts[stage]
        reasons = ", ".join(f"{safe_reason(k)}: {v:,}" for k, v in sorted(c.get("rejected_by_reason", {}).items()))
        excluded = ", ".join(f"{safe_reason(k)}: {v:,}" for k, v in sorted(c.get("excluded_by_recipe", {}).items()))
        rows.append([stage, fmt_count(c.get("inputs", 0)), fmt_count(c.get("accepted", 0)), fmt_count(c.get("rejected", 0)),
                     reasons or "—", excluded or "—"])
    out = ['<section id="build"><h2>Build accounting</h2>',
           '<p class="note">Per stage: <code>inputs = accepted + rejected</code>. Stages count their own '
           "units: cases for discover/read/extract, images or volumes for qa.</p>",
           table(["stage", "inputs", "accepted", "rejected", "rejected by reason", "excluded by recipe"],
                 rows, numeric=(1, 2, 3))]
    unknown = manifest.get("labels_unknown_to_pools") or []
    if unknown:
        out.append(f'<p class="note">Labels unknown to the distractor pools (distractors drawn from '
                   f"their own label table): {esc(', '.join(unknown))}</p>")
    out.append("</section>")
    return "\n".join(out)


def counts_section(corpus: Corpus, stats: Stats, kind: str, plots: Plots, qa_configs: list[str]) -> str:
    manifest = corpus.manifest
    out = ['<section id="counts"><h2>Counts</h2>', "<h3>Rows per config and split</h3>"]
    per: Counter = Counter()
    shards_n: Counter = Counter()
    configs, splits = set(), set()
    for config, rels in corpus.configs.items():
        for rel in rels:
            split = shard_split(rel)
            per[(config, split)] += int(corpus.rows(rel) or 0)
            shards_n[(config, split)] += 1
            configs.add(config)
            splits.add(split)
    splits_sorted = sorted(splits, key=split_key)
    rows = []
    for config in sorted(configs):
        rows.append([config] + [f"{per[(config, s)]:,} ({shards_n[(config, s)]})" if shards_n[(config, s)]
                                else "—" for s in splits_sorted]
                    + [fmt_count(sum(per[(config, s)] for s in splits_sorted))])
    out.append(table(["config"] + [f"{s} (shards)" for s in splits_sorted] + ["total rows"], rows,
                     numeric=range(1, len(splits_sorted) + 2)))
    bars = [(f"{c} / {s}", per[(c, s)]) for c in sorted(configs) for s in splits_sorted if shards_n[(c, s)]]
    if bars:
        out.append(img_tag(plots.render(barh_chart(bars, "Rows per config and split", "rows")),
                           "bar chart: rows per config and split"))
    msplits = manifest.get("splits") or {}
    if msplits:
        out.append("<h3>Cases per split</h3>")
        srows = [[s, fmt_count(v.get("cases", 0)), fmt_count(v.get("images", 0)), fmt_count(v.get("qa", 0)), fmt_count(v.get("shards", 0))]
                 for s, v in sorted(msplits.items(), key=lambda kv: split_key(kv[0]))]
        out.append(table(["split", "cases", "images / volumes", "questions", "shards"], srows, numeric=(1, 2, 3, 4)))
    bench = manifest.get("benchmark")
    if isinstance(bench, Mapping):
        comp = bench.get("composition") or {}
        out.append(f'<p class="note">Benchmark: {fmt_count(bench.get("images", 0))} test images, '
                   f'{fmt_count(bench.get("rows", 0))} questions ('
                   + esc(", ".join(f"{k}: {v:,}" for k, v in sorted(comp.items())))
                   + f'), {fmt_count(bench.get("strata", 0))} strata.</p>')
        for region, why in (bench.get("regions_left_out") or {}).items():
            out.append(f'<p class="note">Benchmark: region {esc(region)} left out: {esc(why)}.</p>')

    for config in qa_configs:
        groups = stats.qa_groups.get(config)
        if not groups:
            continue
        out.append(f"<h3>Questions per task and question type — <code>{esc(config)}</code></h3>")
        by_tq: Counter = Counter()
        by_split: dict = defaultdict(Counter)
        for (split, task, qtype, _), n in groups.items():
            by_tq[(task, qtype)] += n
            by_split[(task, qtype)][split] += n
        qtypes = sorted({q for _, q in by_tq}, key=lambda q: (QTYPE_ORDER.get(q, 9), str(q)))
        tasks = sorted({t for t, _ in by_tq}, key=str)
        split_names = sorted({s for (s, *_rest) in groups}, key=split_key)
        rows = []
        for task, qtype in sorted(by_tq, key=lambda k: (str(k[0]), QTYPE_ORDER.get(k[1], 9), str(k[1]))):
            rows.append([task, qtype] + [fmt_count(by_split[(task, qtype)][s]) for s in split_names]
                        + [fmt_count(by_tq[(task, qtype)])])
        out.append(table(["task", "question type"] + split_names + ["total"], rows,
                         numeric=range(2, len(split_names) + 3)))
        series = [(q, [by_tq[(t, q)] for t in tasks]) for q in qtypes]
        out.append(img_tag(plots.render(stacked_chart(tasks, series, f"{config}: questions per task",
                                                       "questions")),
                           f"stacked bar chart: {config} questions per task and question type"))
        subtasks = Counter()
        for (_, task, qtype, subtask), n in groups.items():
            if subtask is not None:
                subtasks[(task, subtask, qtype)] += n
        if subtasks:
            out.append(f"<h3>Questions per task and subtask — <code>{esc(config)}</code></h3>")
            srows = [[t, s, q, fmt_count(n)] for (t, s, q), n in sorted(subtasks.items(), key=lambda kv: tuple(map(str, kv[0])))]
            out.append(table(["task", "subtask", "question type", "questions"], srows, numeric=(3,)))
            merged: Counter = Counter()
            for (t, s, _), n in subtasks.items():
                merged[f"{t} / {s}"] += n
            bars = sorted(merged.items(), key=lambda kv: kv[0])
            out.append(img_tag(plots.render(barh_chart(bars, f"{config}: questions per task / subtask",
                                                        "questions")),
                               f"bar chart: {config} questions per task and subtask"))
    out.append(region_section(stats, kind, plots))
    out.append("</section>")
    return "\n".join(out)


def region_section(stats: Stats, kind: str, plots: Plots) -> str:
    out = []
    if kind == "tree":
        out.append("<h3>Images per location (region) and modality</h3>")
        by_loc: dict = defaultdict(Counter)
        for (_, modality, location), n in stats.images.items():
            by_loc[location][modality] += n
        modalities = sorted({m for c in by_loc.values() for m in c}, key=str)
        locs = sorted(by_loc, key=lambda loc: (-sum(by_loc[loc].values()), str(loc)))
        rows = [[loc] + [fmt_count(by_loc[loc][m]) for m in modalities] + [fmt_count(sum(by_loc[loc].values())),
                fmt_share(stats.abnormal[loc] / max(1, sum(by_loc[loc].values())))] for loc in locs]
        out.append(table(["location"] + modalities + ["images", "abnormal"], rows,
                         numeric=range(1, len(modalities) + 3)))
        series = [(m, [by_loc[loc][m] for loc in locs]) for m in modalities]
        out.append(img_tag(plots.render(stacked_chart([str(x) for x in locs], series,
                                                       "Images per location and modality", "images")),
                           "stacked bar chart: images per location and modality"))
        if stats.pathologies:
            out.append("<h3>Images per location and label (pathology)</h3>")
            top = top_items(stats.pathologies, TOP_TABLE)
            rows = [[loc, path, fmt_count(n)] for (loc, path), n in top]
            out.append(table(["location", "label", "images"], rows, numeric=(2,)))
            if len(stats.pathologies) > TOP_TABLE:
                out.append(f'<p class="note">Top {TOP_TABLE} of {len(stats.pathologies):,} '
                           "location/label pairs.</p>")
        return "\n".join(out)
    title = "Images per plane and modality" if kind == "slices" else "Volumes per modality"
    out.append(f"<h3>{title}</h3>")
    if kind == "slices":
        out.append('<p class="note">A slice\'s body region is not stored per structure; images are '
                   "counted by plane and modality, and boxes by structure label below.</p>")
    by: dict = defaultdict(Counter)
    for (split, modality, plane), n in stats.images.items():
        by[(modality, plane)][split] += n
    split_names = sorted({s for c in by.values() for s in c}, key=split_key)
    keys_sorted = sorted(by, key=lambda k: tuple(map(str, k)))
    rows = [[m, p] + [fmt_count(by[(m, p)][s]) for s in split_names] + [fmt_count(sum(by[(m, p)].values()))]
            for m, p in keys_sorted]
    out.append(table(["modality", "plane" if kind == "slices" else "kind"] + split_names + ["total"],
                     rows, numeric=range(2, len(split_names) + 3)))
    if keys_sorted:
        series = [(s, [by[k][s] for k in keys_sorted]) for s in split_names]
        out.append(img_tag(plots.render(stacked_chart([f"{m} {p}" for m, p in keys_sorted], series,
                                                       title + " (stacked by split)", "rows")),
                           f"stacked bar chart: {title.lower()}"))
    if stats.body_parts and any(k for k in stats.body_parts):
        rows = [[k or "(not recorded)", fmt_count(n)] for k, n in top_items(stats.body_parts, TOP_TABLE)]
        out.append("<h3>Images per body part (DICOM header, when recorded)</h3>")
        out.append(table(["body part", "images"], rows, numeric=(1,)))
    if stats.box_labels:
        what = "Boxes" if kind == "slices" else "3D boxes"
        out.append(f"<h3>{what} per structure label</h3>")
        top = top_items(stats.box_labels, TOP_TABLE)
        out.append(img_tag(plots.render(barh_chart(top, f"{what} per label"
                                                    + (f" (top {TOP_TABLE})" if len(stats.box_labels) > TOP_TABLE else ""),
                                                    what)),
                           f"bar chart: {what} per structure label"))
    return "\n".join(out)


def distributions_section(stats: Stats, kind: str, plots: Plots, qa_configs: list[str]) -> str:
    out = ['<section id="distributions"><h2>Distributions</h2>']
    for config in qa_configs:
        groups = {k: v for k, v in stats.answers.items() if k[0] == config}
        if not groups:
            continue
        out.append(f"<h3>Answers per task — <code>{esc(config)}</code></h3>")
        ordered = sorted(groups.items(), key=lambda kv: (str(kv[0][1]), QTYPE_ORDER.get(kv[0][2], 9),
                                                          str(kv[0][2])))
        panels = [(f"{task} · {qtype}", st) for (_, task, qtype), st in ordered]
        out.append(img_tag(plots.render(answers_chart(panels)),
                           f"bar charts: {config} top answers per task and question type"))
        rows, yes_rows, mc_rows, letters = [], [], [], set()
        for (_, task, qtype), st in ordered:
            top = top_items(st.answers, 3)
            distinct = f"{len(st.answers):,}{'+' if st.pruned else ''}"
            shown = "; ".join(f"{clip_text(a, 40)} ({100.0 * n / max(1, st.n):.1f} %)" for a, n in top)
            rows.append([task, qtype, fmt_count(st.n), distinct, shown])
            if qtype == "closed":
                yes = st.answers.get("yes", 0)
                no = st.answers.get("no", 0)
                yes_rows.append((task, 100.0 * yes / max(1, st.n), 100.0 * no / max(1, st.n)))
            if qtype == "multiple_choice":
                mc_rows.append((task, st))
                letters |= {a for a in st.answers if len(a) == 1 and a.isalpha()}
        out.append(table(["task", "question type", "questions", "distinct answers", "top answers"],
                         rows, numeric=(2, 3)))
        if yes_rows or mc_rows:
            out.append(f"<h3>Closed questions: yes share; multiple choice: correct letter — "
                       f"<code>{esc(config)}</code></h3>")
            letters_sorted = sorted(letters)
            srows = [[t, "closed", f"yes {y:.1f} % / no {n:.1f} %"] for t, y, n in yes_rows]
            srows += [[t, "multiple choice", " / ".join(
                f"{x} {100.0 * st.answers.get(x, 0) / max(1, st.n):.1f} %" for x in letters_sorted)]
                for t, st in mc_rows]
            out.append(table(["task", "question type", "share"], srows))
            out.append(img_tag(plots.render(shares_chart(
                [(t, y, n) for t, y, n in yes_rows],
                [(t, [100.0 * st.answers.get(x, 0) / max(1, st.n) for x in letters_sorted])
                 for t, st in mc_rows], letters_sorted, config)),
                f"bar charts: {config} yes share of closed questions and correct-letter share of "
                "multiple-choice questions per task"))
    if kind in ("slices", "volumes") and (stats.area_px is not None or stats.area_frac is not None):
        out.append("<h3>Box sizes</h3>")
        panels = []
        if stats.area_px is not None:
            panels.append((stats.area_px, AREA_PX_EDGES, "box area (pixels, mask pixels inside the box)",
                           "structure area per box", True))
        if stats.area_frac is not None:
            label = "% of the image's pixels" if kind == "slices" else "% of the volume (box extent)"
            panels.append((stats.area_frac, AREA_FRAC_EDGES, label, "relative size", True))
        out.append(img_tag(plots.render(hist_chart(panels, "Box area histogram" if kind == "slices"
                                                    else "3D box extent histogram")),
                           "histograms: box areas"))
    out.append("<h3>Image sizes</h3>")
    if stats.sizes:
        note = (f" (from the PNG headers of the first {SIZE_SAMPLE} rows of the first shard of "
                f"each split: {stats.size_rows:,} images)" if stats.sizes_sampled
                else f" ({stats.size_rows:,} images)")
        out.append(f'<p class="note">Stored image width × height{esc(note)}.</p>')
        rows = [[f"{w} × {h}", fmt_count(n)] for (w, h), n in top_items(stats.sizes, 12)]
        out.append(table(["width × height (px)", "images"], rows, numeric=(1,)))
        if len(stats.sizes) > 1:
                out.append(img_tag(plots.render(scatter_chart(stats.sizes, "Image sizes (marker area ∝ images)",
                                                           "width (px)", "height (px)")),
                               "scatter plot: image sizes"))
    if stats.shapes:
        rows = [[" × ".join(str(x) for x in shape), fmt_count(n)] for shape, n in top_items(stats.shapes, 12)]
        out.append('<p class="note">Stored volume shape <code>[k, j, i]</code> (after resampling).</p>')
        out.append(table(["shape [k, j, i]", "volumes"], rows, numeric=(1,)))
    if stats.spacings:
        rows = [[f"{a:g} mm", f"{b:g} mm", fmt_count(n)] for (a, b), n in top_items(stats.spacings, 12)]
        out.append('<p class="note">Original voxel spacing before resampling.</p>')
        out.append(table(["slice spacing (k)", "in-plane spacing (i)", "volumes"], rows, numeric=(2,)))
    out.append("</section>")
    return "\n".join(out)
