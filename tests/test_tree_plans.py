"""The tree's question plans remembered across builds (pipeline/kinds/tree_plans.py): the
stored plan is the one planning gives, and any change of what a plan is made of (images,
labels, splits, families' generators and paraphrase counts, pools, seed, settings,
population, planning code) misses it; a regenerate after a wording edit plans nothing, one
after an image is relabelled plans again — both the same bytes as a fresh build.  The
report's alignment statistics likewise (pipeline/report/alignment_cache.py): kept while
the alignment shards are the same bytes, scanned again when a caption edit rewrites them,
and always scanned by ``radvqa report`` on a corpus alone."""

from __future__ import annotations

import dataclasses

from pipeline.config.recipes import load_recipe
from pipeline.kinds import tree_plans
from pipeline.kinds.base import load_questions
from pipeline.launch.build import build, regenerate
from pipeline.qa.label_pools import load_label_pools
from pipeline.qa.tree_balance import plan_tree_questions
from pipeline.report import alignment_cache, write_report
from tests.test_incremental import QUIET, _edit, corpus_digest, editable_tree_recipe
from tests.test_tree_planning import _images


def test_a_stored_plan_is_the_plan_and_any_changed_input_misses_it(tmp_path, monkeypatch):
    families, pools = load_questions(load_recipe("radimagenet-vqa"),
                                     pools_loader=lambda paths: load_label_pools(paths))
    images = _images(pools, 400, seed=4)
    out = str(tmp_path)
    got = tree_plans.planned(out, images, families, pools, 7, {})
    assert got == plan_tree_questions(images, families, pools, 7, {})
    key = tree_plans.plan_key(images, families, pools, 7, {}, None)
    assert tree_plans.load(out, key) == got  # JSON gives the plan back equal
    first = images[0]
    other = next(lab for lab in pools.labels(first.modality, first.region) if lab != first.label)
    name, fam = next((n, f) for n, f in sorted(families.items()) if len(f.variants) > 1)
    changed = {
        "an image relabelled": ([first._replace(label=other), *images[1:]], families, pools, 7, {}, None),
        "an image moved to another split": (
            [first._replace(split="test" if first.split != "test" else "train"), *images[1:]],
            families, pools, 7, {}, None),
        "an image removed": (images[1:], families, pools, 7, {}, None),
        "a paraphrase fewer": (images, families | {name: dataclasses.replace(
            fam, variants=fam.variants[:-1])}, pools, 7, {}, None),
        "a family left out": (images, {k: v for k, v in families.items() if k != name}, pools, 7, {}, None),
        "a pool edited": (images, families, dataclasses.replace(
            pools, overrides=dict(pools.overrides) | {"fracture": "broken bone"}), 7, {}, None),
        "the seed": (images, families, pools, 8, {}, None),
        "a setting": (images, families, pools, 7, {"no_pathology_option_rate": 0.3}, None),
        "the population": (images, families, pools, 7, {}, "benchmark"),
    }
    for what, args in changed.items():
        assert tree_plans.plan_key(*args) != key, what
        assert tree_plans.load(out, tree_plans.plan_key(*args)) is None, what
    # a paraphrase's wording is not part of the plan
    reworded = families | {name: dataclasses.replace(fam, variants=tuple(reversed(fam.variants)))}
    assert tree_plans.plan_key(images, reworded, pools, 7, {}, None) == key
    # the planning code
    monkeypatch.setattr(tree_plans, "_code", lambda: "other code")
    assert tree_plans.load(out, tree_plans.plan_key(images, families, pools, 7, {}, None)) is None


def test_regenerate_reuses_plans_and_alignment_stats_until_their_inputs_change(tmp_path, monkeypatch):
    inp, d = editable_tree_recipe(tmp_path, 160, seed=5)
    out = tmp_path / "out"
    build(str(d / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    planned, scanned = [], []
    real_scan = alignment_cache.scan_alignment
    monkeypatch.setattr(alignment_cache, "scan_alignment", lambda corpus, stats: scanned.append(
        1) or real_scan(corpus, stats))
    real = tree_plans.plan_tree_questions
    monkeypatch.setattr(tree_plans, "plan_tree_questions", lambda images, *a, **k: planned.append(
        k.get("population")) or real(images, *a, **k))

    def fresh(name):
        build(str(d / "my.yaml"), str(tmp_path / name), input_dir=str(inp), **QUIET)
        return corpus_digest(tmp_path / name)

    _edit(d / "tpl" / "abnormality_closed.yaml", "Does this image appear normal?", "Does this image look normal?")
    regenerate(str(out), **QUIET)
    assert planned == []  # neither the splits' plan nor the benchmark's
    assert scanned == []  # the alignment shards are the same bytes
    assert corpus_digest(out) == fresh("fresh")
    scanned.clear()
    write_report(str(out))  # radvqa report: the corpus alone, always scanned
    assert scanned == [1] and corpus_digest(out) == corpus_digest(tmp_path / "fresh")
    # a caption's wording: every alignment shard written again, scanned again
    _edit(d / "tpl" / "caption.yaml", "Summarise what this image shows.", "Summarize what this image shows.")
    scanned.clear()
    planned.clear()
    regenerate(str(out), **QUIET)
    assert scanned == [1] and planned == []
    assert corpus_digest(out) == fresh("fresh_caption")
    # an image moved to another label's folder: planned again
    png = sorted(p for p in inp.rglob("*.png") if p.parts[-4] != "US")[0]
    labels = sorted(q.name for q in png.parent.parent.iterdir() if q.is_dir() and q != png.parent)
    target = png.parent.parent / labels[0] / png.name
    png.rename(target)
    planned.clear()
    regenerate(str(out), **QUIET)
    assert None in planned
    assert corpus_digest(out) == fresh("fresh1")


def test_the_units_blocks_name_their_planned_choices_by_the_plans_key(tmp_path, monkeypatch):
    """A unit's finished rows per family (pipeline/kinds/tree_blocks.py) are named by its
    records and the key of the plan their choices come from: records that differ, or another
    plan's key, give another name.  In a build: a wording edit generates its family alone; a
    paraphrase added to a family (another plan: its variant choices) generates every family
    again — each time the bytes of a fresh build."""
    from pipeline.kinds import tree as tree_kind
    from pipeline.kinds import tree_blocks, tree_tables

    records = [{"image_id": f"i{n}", "case_key": f"i{n}", "split": "train", "modality": "MR",
                "region": "knee", "label": "normal", "assign": {"f": {"variant": n % 2}}}
               for n in range(6)]
    named = tree_blocks.records_digest(records, "plan-a")
    assert named == tree_blocks.records_digest([dict(r) for r in records], "plan-a")
    assert named != tree_blocks.records_digest(records, "plan-b")
    assert named != tree_blocks.records_digest([records[0] | {"label": "x"}, *records[1:]], "plan-a")
    assert named != tree_blocks.records_digest(records[1:], "plan-a")
    assert named != tree_blocks.records_digest(records)  # no key: the choices themselves
    other = [records[0] | {"assign": {"f": {"variant": 1}}}, *records[1:]]
    assert tree_blocks.records_digest(other) != tree_blocks.records_digest(records)

    inp, d = editable_tree_recipe(tmp_path, 120, seed=6)
    out = tmp_path / "out"
    build(str(d / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    generated: set[str] = set()
    real = tree_tables.render_tree_images
    monkeypatch.setattr(tree_kind, "render_tree_images", lambda records, images, ctx:
                        generated.update(ctx.families) or real(records, images, ctx))
    _edit(d / "tpl" / "pathology_open.yaml", "?", "? ")
    regenerate(str(out), **QUIET)
    assert generated == {"pathology_open"}
    generated.clear()
    _edit(d / "tpl" / "anatomy_closed_absent.yaml", "  - id: an_neg_v1\n",
          "  - id: an_neg_v0\n    text: \"Is any {{ wrong_region }} here?\"\n  - id: an_neg_v1\n")
    regenerate(str(out), **QUIET)
    assert len(generated) == 9  # every family but the captions (their alignment shards stand)
    fresh = tmp_path / "fresh"
    build(str(d / "my.yaml"), str(fresh), input_dir=str(inp), **QUIET)
    assert corpus_digest(out) == corpus_digest(fresh)


def test_the_benchmarks_blocks_miss_when_its_records_plan_or_family_change(tmp_path, monkeypatch):
    """The benchmark's rows per family (tree_blocks.benchmark) are read from their blocks only
    while the family's digest, the picked records and the benchmark plan's key are those
    they were made from; anything else generates the family again — and the table is the one
    generating every family gives."""
    import types

    from pipeline.kinds import tree_blocks
    from pipeline.kinds.tree_tables import image_record
    from pipeline.qa.stored_rows import family_digests

    families, pools = load_questions(load_recipe("radimagenet-vqa"),
                                     pools_loader=lambda paths: load_label_pools(paths))
    images = [i._replace(split="test") for i in _images(pools, 40, seed=9)]
    assign = tree_plans.planned(str(tmp_path), images, families, pools, 7, {}, population="benchmark")
    picked = [(image_record(i.key, "test", i.modality, i.region, i.label), i.key.encode() * 3)
              for i in images]
    generated: list[set] = []
    real = tree_blocks.benchmark_rows
    monkeypatch.setattr(tree_blocks, "benchmark_rows", lambda records, fams, ctx:
                        generated.append(set(fams)) or real(records, fams, ctx))

    def ctx_of(output, fams):
        return types.SimpleNamespace(output=str(output), families=fams, pools=pools, seed=7,
                                     qa_settings={}, extras={"qa_families": family_digests(
                                         fams, pools, 7, {}, "v")})

    fresh = iter(range(100))

    def run(picked_, plans="plan-a", fams=families):
        """The families generated for ``tmp_path/out``; its table checked against a fresh one."""
        table, _ = tree_blocks.benchmark(picked_, assign, plans, ctx_of(tmp_path / "out", fams))
        got = generated.pop()
        whole, _ = tree_blocks.benchmark(picked_, assign, plans,
                                         ctx_of(tmp_path / f"fresh{next(fresh)}", fams))
        generated.clear()
        assert table.equals(whole)
        return got

    questions = {n for n, f in families.items() if f.task != "caption"}
    assert run(picked) == questions  # nothing stored yet
    assert run(picked) == set()
    assert run(picked, plans="plan-b") == questions  # another plan's choices
    assert run(picked, plans="plan-b") == set()
    first = picked[0][0]
    other = next(lab for lab in pools.labels(first["modality"], first["region"]) if lab != first["label"])
    assert run([(first | {"label": other}, picked[0][1]), *picked[1:]], plans="plan-b") == questions
    name, fam = next((n, f) for n, f in sorted(families.items()) if f.task != "caption")
    edited = families | {name: dataclasses.replace(fam, variants=tuple(reversed(fam.variants)))}
    assert run([(first | {"label": other}, picked[0][1]), *picked[1:]], plans="plan-b",
               fams=edited) == {name}  # a family's wording: that family only


def test_a_stored_plan_is_marshal_behind_a_header_of_its_python_and_key(tmp_path, monkeypatch):
    """The stored plan (pipeline/kinds/tree_plans.py) is :mod:`marshal`'s bytes behind a header
    naming this Python, its marshal version and the key, then its sha256: another Python's,
    a cut-short or damaged one (never unmarshalled) or one of another key is planned again;
    an earlier version's JSON plan is removed."""
    import hashlib
    import json
    import marshal
    import sys

    families, pools = load_questions(load_recipe("radimagenet-vqa"),
                                     pools_loader=lambda paths: load_label_pools(paths))
    images = _images(pools, 120, seed=3)
    out = str(tmp_path)
    stale = tmp_path / ".radvqa" / "question-plans" / "splits.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"key": "an earlier version's", "plans": {}}))
    got = tree_plans.planned(out, images, families, pools, 7, {})
    key = tree_plans.plan_key(images, families, pools, 7, {}, None)
    path = tmp_path / ".radvqa" / "question-plans" / "splits.marshal"
    data = path.read_bytes()
    head = f"radvqa question plan\0{sys.implementation.cache_tag}\0{marshal.version}\0{key}\n".encode()
    body = data[len(head) + 32:]
    assert data.startswith(head) and marshal.loads(body) == got
    assert data[len(head):len(head) + 32] == hashlib.sha256(body).digest()
    assert not stale.exists()
    assert tree_plans.load(out, key) == got
    monkeypatch.setattr(tree_plans.sys.implementation, "cache_tag", "cpython-399")
    assert tree_plans.load(out, key) is None  # another Python
    monkeypatch.undo()
    path.write_bytes(data[:-100])
    assert tree_plans.load(out, key) is None  # cut short
    flipped = bytearray(data)
    flipped[-7] ^= 0x20  # one bit of a string: marshal alone would read it as another plan
    path.write_bytes(bytes(flipped))
    assert tree_plans.load(out, key) is None  # damaged
    other = marshal.dumps(["not", "a", "plan"])
    path.write_bytes(head + hashlib.sha256(other).digest() + other)
    assert tree_plans.load(out, key) is None
