"""The launcher's planning of a labelled tree, made fast for 750K images, decides exactly what
the straightforward code decides: balanced question plans (against a per-image reference
kept here), distractor draws, splits, fingerprints, plan-file JSON, the listing's stats;
and a changed image is extracted again (its fingerprint sees the stat taken while listing)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import shutil
from concurrent.futures import ProcessPoolExecutor

import pytest

from pipeline.config.recipes import load_recipe
from pipeline.config.resources import resource_dir
from pipeline.core import keys
from pipeline.engine import units
from pipeline.inputs.layouts.tree import TreeImage, assign_splits
from pipeline.inputs.sample_tree import write_tree
from pipeline.inputs.tree import InputTree
from pipeline.kinds.base import load_questions
from pipeline.launch.build import build
from pipeline.qa import balance
from pipeline.qa.label_pools import load_label_pools
from pipeline.qa.options import LETTERS
from pipeline.qa.tree_balance import plan_tree_questions, variant_of

POOL_FILE = resource_dir("distractor_pools") / "radimagenet.yaml"


# ------------------------------------------------------------------- the reference


def _derange(items, related):
    """The derangement of one group, item by item (see :func:`tree_balance.derangement`)."""
    answers = sorted({a for _, _, a in items})
    parent = {a: a for a in answers}

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for n, a in enumerate(answers):
        for b in answers[n + 1:]:
            if related(a, b):
                parent[root(b)] = root(a)
    classes = {}
    for u, key, answer in items:
        classes.setdefault(root(answer), []).append((answer, u, key))
    if len(classes) < 2:
        return {}
    seq, block = [], []
    for c in sorted(classes, key=lambda c: keys.unit_interval(0, c, "derange")):
        start = len(seq)
        seq.extend(key for _, _, key in sorted(classes[c]))
        block.extend([(start, len(seq))] * len(classes[c]))
    n, shift, out = len(seq), max(len(v) for v in classes.values()), {}
    for p, key in enumerate(seq):
        start, end = block[p]
        t = (p + shift) % n
        out[key] = seq[end % n if start <= t < end else t]
    return out


def _reference_plan(images, families, pools, seed, settings, population=None):
    """plan_tree_questions image by image, as it was written before it worked on columns."""
    out = {i.key: {} for i in images}
    fam = {f.generator: name for name, f in families.items()}
    us = [keys.unit_intervals(seed, i.key, "tree-balance") for i in images]
    splits = [population or i.split for i in images]
    for slot, absent, present, level in ((0, "rin_anatomy_absent", "rin_anatomy_present", "modality"),
                                         (1, "rin_pathology_absent", "rin_pathology_present", "region")):
        name_a, name_p = fam[absent], fam[present]
        n_variants = len(families[name_p].variants)
        groups, answer_of = {}, {}
        for i, u, sp in zip(images, us, splits):
            g, answer = ((sp, i.modality), i.region) if level == "modality" else \
                ((sp, i.modality, i.region), i.label)
            groups.setdefault(g, []).append((u[slot], i.key, answer))
            answer_of[i.key] = answer
        rel = (lambda a, b: a == b) if level == "modality" else pools.related
        for members in groups.values():
            for key, src in _derange(members, rel).items():
                out[key][name_a] = {"wrong": answer_of[src],
                                    "variant": variant_of(seed, src, name_p, n_variants)}
    for slot, gen, level in ((2, "rin_anatomy_mc", "modality"), (3, "rin_pathology_mc", "region")):
        name = fam[gen]
        by_split, pools_by, key_of_u = {}, {}, {}
        for i, u, sp in zip(images, us, splits):
            key_of_u[u[slot]] = i.key
            by_split.setdefault(sp, []).append((u[slot], i.key))
            pool, answer = ((sp, i.modality), i.region) if level == "modality" else \
                ((sp, i.modality, i.region), i.label)
            pools_by.setdefault(pool, []).append((u[slot], answer))
        if population is not None:
            for pool, members in pools_by.items():
                kept = balance.cap_answers(members, len(LETTERS))
                if kept is not None:
                    for u, _ in set(members) - set(kept):
                        out[key_of_u[u]][name] = {"skip": True}
                    pools_by[pool] = kept
            by_split = {sp: [m for m in ms if name not in out[m[1]]] for sp, ms in by_split.items()}
        for members in by_split.values():
            for r, (_, key) in enumerate(sorted(members)):
                out[key][name] = {"position": r}
        rel = (lambda a, b: a == b) if level == "modality" else pools.related
        for members in pools_by.values():
            if len({a for _, a in members}) >= len(LETTERS):
                for u, chosen in _reference_distractors(sorted(members), rel, level == "region").items():
                    if len(chosen) == len(LETTERS) - 1:
                        out[key_of_u[u]][name]["distractors"] = list(chosen)
    name, classes = fam["rin_abnormality"], {}
    for i, u, sp in zip(images, us, splits):
        classes.setdefault((sp, i.modality, pools.is_abnormal(i.label)), []).append((u[4], i.key))
    for members in classes.values():
        for r, (_, key) in enumerate(sorted(members)):
            out[key][name] = {"ask_normal": bool(r % 2), "variant": (r // 2) % len(families[name].variants)}
    return out


def _reference_distractors(kept, related, weighted, excludes=None, k=3):
    """assign_distractors question by question, every draw one keyed-hash call."""
    excludes = excludes or {}
    labels = sorted({label for _, label in kept})
    quota = [k * sum(1 for _, x in kept if x == label) for label in labels]
    rel = [[related(a, b) for b in labels] for a in labels]
    ties = [[keys.unit_interval(t, label, "distractor-ties") for label in labels]
            for t in range(balance.TIE_ORDERS)]
    out = {}
    for u, answer in kept:
        a = labels.index(answer)
        excluded = {labels.index(x) for x in excludes.get(u, ()) if x in labels}
        tie = ties[int(u * 2.0**40) % balance.TIE_ORDERS]
        if weighted:
            draw = keys.unit_intervals(0, repr(float(u)), "distractor-draw")
            r = [draw[i] if i < 8 else keys.unit_interval(i, repr(float(u)), "distractor-draw")
                 for i in range(len(labels))]
            order = sorted((-(r[i] ** (1.0 / max(quota[i], 0.5))), tie[i], i) for i in range(len(labels)))
        else:
            order = sorted((-quota[i], tie[i], i) for i in range(len(labels)))
        chosen = []
        for _, _, i in order:
            if i != a and not rel[a][i] and i not in excluded and not any(rel[i][c] for c in chosen):
                chosen.append(i)
                if len(chosen) == k:
                    break
        for i in chosen:
            quota[i] -= 1
        out[u] = tuple(labels[i] for i in sorted(chosen, key=tie.__getitem__))
    return out


# ------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def questions():
    families, pools = load_questions(load_recipe("radimagenet-vqa"),
                                     pools_loader=load_label_pools)
    # two synonyms in one region, so that related labels are kept apart
    knee = sorted(pools.modalities["MR"]["regions"]["knee"]["labels"])
    a, b = [x for x in knee if x != pools.normal_label][:2]
    return families, dataclasses.replace(pools, synonyms={a: frozenset({b}), b: frozenset({a})})


def _images(pools, n, seed):
    """Images with skewed labels over every region, a region of one label and one of a
    dominant label (the derangement's fallback), in three splits."""
    rng, out = random.Random(seed), []
    for j in range(n):
        m = rng.choice(["MR", "MR", "CT"])
        region = rng.choice(sorted(pools.modalities[m]["regions"]))
        labels = sorted(pools.modalities[m]["regions"][region]["labels"])
        label = labels[min(int(rng.expovariate(0.4)), len(labels) - 1)]
        if region == "hip" or (region == "knee" and rng.random() < 0.7):
            label = labels[0]  # one class only; one class of more than half the group
        key = keys.stable_key("img", seed, j)
        out.append(TreeImage(key, f"{m}/{region}/{label}/{j}.png", m, region, label,
                             rng.choice(["train", "train", "validation", "test"])))
    return sorted(out, key=lambda i: i.key)


@pytest.mark.parametrize("population", [None, "benchmark"])
def test_columnar_plans_are_the_per_image_plans(questions, population):
    families, pools = questions
    images = _images(pools, 1500, seed=3)
    want = _reference_plan(images, families, pools, 11, {}, population)
    got = plan_tree_questions(images, families, pools, 11, {}, population=population)
    assert got == want
    assert plan_tree_questions(images[::-1], families, pools, 11, {}, population) == want
    # about half of the distractor assignments in another process: the same plans
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert plan_tree_questions(images, families, pools, 11, {}, population, pool=pool) == want


def test_distractor_draws_are_the_per_question_draws():
    rng = random.Random(5)
    for trial in range(40):
        labels = [f"l{i}" for i in range(rng.choice([4, 7, 9, 12, 20]))]
        weights = [rng.random() ** 3 for _ in labels]
        kept = sorted((keys.unit_interval(trial, str(j), "t"), rng.choices(labels, weights)[0])
                      for j in range(rng.choice([5, 60])))
        pair = set(rng.sample(labels, 2))

        def related(a, b, p=pair):
            return a == b or {a, b} == p

        excludes = {u: tuple(rng.sample(labels, 1)) for u, _ in kept[::3]}
        pools = type("P", (), {"related": staticmethod(related)})()
        for weighted in (False, True):
            assert balance.assign_distractors(kept, excludes, pools, weighted=weighted) == \
                _reference_distractors(kept, related, weighted, excludes)


def test_splits_fingerprints_and_json_agree_with_the_one_at_a_time_versions():
    image_keys = [keys.stable_key("k", j) for j in range(3000)]
    for fractions in ({"train": 0.8, "validation": 0.1, "test": 0.1}, {"train": 3, "test": 0, "x": 1}):
        assert assign_splits(image_keys, fractions, 4) == [keys.assign_split(k, fractions, 4)
                                                           for k in image_keys]
    with pytest.raises(ValueError):
        assign_splits(image_keys, {"train": -1, "test": 2}, 0)
    cases = [[k, f"MR/knee/ré \"q\"/{k}.png", "MR", "knee", "x", "train"] for k in image_keys[:200]]
    identities = [[(c[1], 10 + n, 10**18 + n)] for n, c in enumerate(cases)]
    assert units.case_fingerprints("tree", "2", "s", cases, identities) == [
        units.case_fingerprint("tree", "2", "s", c, i) for c, i in zip(cases, identities)]
    value = {"b": [1.5, None, True, "é\n"], "a": {"z": 1, "y": [("t", 2)]}, "c": float("inf")}
    assert units._sorted_json(value) == json.dumps(value, sort_keys=True)


def test_listing_stats_are_what_a_stat_says(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes(b"12345")
    (tmp_path / "a" / "y.png").write_bytes(b"1")
    (tmp_path / "a" / ".hidden").write_bytes(b"1")
    os.symlink(tmp_path / "a" / "missing", tmp_path / "a" / "dangling.png")
    listed = InputTree(str(tmp_path))
    files = listed.walk_files("a", stat=True)
    assert files == InputTree(str(tmp_path)).walk_files("a")
    fresh = InputTree(str(tmp_path))
    for f in files + ["a", "a/b"]:
        assert listed.identity([f]) == fresh.identity([f])
        assert listed.stat(f) == fresh.stat(f)


def test_a_changed_image_is_extracted_again_and_only_it(tmp_path):
    """The fingerprint of an image uses the size and mtime seen while listing the tree."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_tree(inp, 60, load_label_pools([POOL_FILE]))
    shutil.rmtree(inp / "US")
    quiet = {"log": lambda m: None}
    build("radimagenet-vqa", str(out), input_dir=str(inp), **quiet)
    png = next((inp / "MR").rglob("*.png"))
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    again = build("radimagenet-vqa", str(out), input_dir=str(inp), **quiet)
    assert again.manifest["build"]["cases_extracted"] == 1
    assert again.manifest["build"]["cases_copied_from_stored_shards"] == 59


def test_ungrouped_shards_are_the_grouped_shards():
    images = [TreeImage(keys.stable_key("s", j), "", "MR", "knee", "x", ["train", "test"][j % 3 == 0])
              for j in range(2500)]
    fractions = ["train", "validation", "test"]
    for items in (images, images + images[:5]):  # the second: keys shared, one group each
        want = units.plan_split_shards(items, lambda i: i.split, fractions, 300,
                                       group_of=lambda i: i.key, order=lambda i: i.key)
        assert units.plan_split_shards(iter(items), lambda i: i.split, fractions, 300) == want
