"""Balancing by construction for labelled 2D trees (RadImageNet-VQA's nine questions).

Every image gets the same nine questions, so nothing may be dropped; what the generators
would otherwise draw at random is planned on the launcher from the file list (labels are
known before any image is read) and handed to each image's questions:

* **closed−** (``anatomy_closed_absent``, ``pathology_closed_absent``): the wrong region
  or label an image is asked about is the true one of another image of the same split and
  modality (and region), chosen by a *derangement* — a bijection that maps no image to
  one with the same (or a related) answer — and the question takes the paraphrase of that
  image's closed+ question.  So every closed question text ("Is the knee visible in the
  image?") is asked exactly as often with answer *no* as with *yes*.
* **multiple choice** (``anatomy_mc``, ``pathology_mc``): answer positions by rank (exactly
  uniform per split) and distractors by quota (:func:`pipeline.qa.balance.assign_distractors`):
  each region or label, "no pathology seen" included, is offered three times for each
  time it is correct, so no option text is a better blind guess (the pathology labels
  drawn in proportion to the quota left, so the option set does not point at the answer).
* **abnormality**: the polarity ("abnormal?" / "normal?") alternates by rank within the
  normal and the abnormal images of each modality, and the paraphrase follows the rank
  too, so yes and no are exactly even, per text where the classes are even.  In
  ``instruct`` the question's blind accuracy still equals the label prior (most images are
  abnormal, and the wording tells the polarity); the benchmark selects its images half
  normal, half abnormal per region (:func:`pipeline.qa.benchmark.select_benchmark`), where
  the prior is even.
* **the benchmark** (``population``): its multiple-choice questions are asked only as far
  as no answer is correct in more than a quarter of a pool
  (:func:`pipeline.qa.balance.cap_answers`): with half of each region normal, two in three
  normal images skip the pathology multiple choice (planned ``{"skip": True}``).

Everything is a function of ``(seed, image keys, labels, splits)``, never of arrival order.
The launcher plans every image of the tree (750K for RadImageNet), so the planning works on
columns: one keyed hash per image and purpose, groups and ranks by numpy sorts; only the
distractor quotas (:func:`pipeline.qa.balance.assign_distractors`) go question by question.
Plans come from the file list, before any image is read: an image rejected when it is read
leaves its partners one-sided (one text off by one per rejected image).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pipeline.core import keys
from pipeline.qa.balance import assign_distractors, cap_answers
from pipeline.qa.options import LETTERS

#: Which of an image's keyed uniforms (:func:`pipeline.core.keys.unit_intervals`, purpose
#: ``tree-balance``) each balanced generator uses: planning a 750K-image tree hashes each
#: image once, not once per question.
U_SLOTS = {"rin_anatomy_absent": 0, "rin_pathology_absent": 1, "rin_anatomy_mc": 2,
           "rin_pathology_mc": 3, "rin_abnormality": 4}


def variant_of(seed: int, key: str, family: str, n_variants: int) -> int:
    """The paraphrase :func:`pipeline.qa.questions.generate_questions` picks for a question."""
    return keys.KeyedStream(seed, key, f"{family}/variant").integers(n_variants)


def variants_of(seed: int, image_keys: Sequence[str], family: str, n_variants: int) -> list[int]:
    """:func:`variant_of` for every key: the :class:`~pipeline.core.keys.KeyedStream` first draw
    inlined (two SHA-256 a key); the rare key whose first draw is rejected takes the stream."""
    sha256 = hashlib.sha256
    head, tail, one = f"{int(seed)}\x1f", f"\x1f{family}/variant", (1).to_bytes(8, "big")
    first = b"".join([sha256(sha256(f"{head}{k}{tail}".encode()).digest() + one).digest()[:8]
                      for k in image_keys])
    v = np.frombuffer(first, dtype=">u8").tolist()
    limit = (1 << 64) - ((1 << 64) % n_variants)
    return [x % n_variants if x < limit else variant_of(seed, k, family, n_variants)
            for x, k in zip(v, image_keys)]


def uniforms(seed: int, image_keys: Sequence[str], purpose: str) -> np.ndarray:
    """``(n, 8)`` float64: :func:`pipeline.core.keys.unit_intervals` of every key (the same
    numbers: a big-endian 64-bit integer over 2**64, rounded once)."""
    sha512 = hashlib.sha512
    head, tail = f"{int(seed)}\x1f", f"\x1f{purpose}"
    buf = b"".join([sha512(f"{head}{k}{tail}".encode()).digest() for k in image_keys])
    return np.frombuffer(buf, dtype=">u8").reshape(-1, 8).astype(np.float64) / 2.0**64


def _codes(values: Sequence) -> tuple[np.ndarray, list]:
    """``(code of each value, the distinct values sorted)``: codes follow the sort order."""
    distinct = sorted(set(values))
    index = {v: n for n, v in enumerate(distinct)}
    return np.array([index[v] for v in values], dtype=np.int64), distinct


def _ranks(order: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Rank of each item of ``order`` (item indices sorted by group first) within its group;
    ``-1`` for items not in ``order``."""
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(g)]))
    rank = np.full(len(group), -1, dtype=np.int64)
    rank[order] = np.arange(len(g)) - first
    return rank


def answer_classes(answers: Sequence[str], related) -> dict[str, str]:
    """``{answer: its class}``: answers grouped into classes of related answers (synonyms,
    transitively), each class named by its first answer in sorted order's root."""
    answers = sorted(set(answers))
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
    return {a: root(a) for a in answers}


def derangement(group: np.ndarray, answer: Sequence[str], u: np.ndarray, tiebreak: np.ndarray,
                related) -> np.ndarray:
    """For every item, the index of its *source* (``-1``: none): within each group a bijection
    that maps no item to one with the same or a related answer, where the answer counts allow
    (no class of related answers more than half of the group); otherwise the first item of
    the next class.

    Answers are grouped into classes of related answers, items laid out class by class
    (classes in keyed order, then by answer, ``u`` and ``tiebreak``) and shifted by the
    largest class's size: no item then lands in its own class.  A group with a single class
    has no valid source (the generators draw).
    """
    n = len(answer)
    src = np.full(n, -1, dtype=np.int64)
    if not n:
        return src
    a_code, distinct = _codes(answer)
    a_index = {a: c for c, a in enumerate(distinct)}
    n_groups = int(group.max()) + 1
    # per group: each answer's class position (classes in keyed order), -1 for one class
    class_pos = np.full((n_groups, len(distinct)), -1, dtype=np.int64)
    pairs = np.unique(group * len(distinct) + a_code)
    for g in np.unique(pairs // len(distinct)).tolist():
        present = [distinct[c] for c in (pairs[pairs // len(distinct) == g] % len(distinct)).tolist()]
        cls = answer_classes(present, related)
        roots = list(dict.fromkeys(cls[a] for a in present))
        if len(roots) < 2:
            continue
        order = sorted(roots, key=lambda c: keys.unit_interval(0, c, "derange"))
        pos = {c: p for p, c in enumerate(order)}
        for a in present:
            class_pos[g, a_index[a]] = pos[cls[a]]
    cpos = class_pos[group, a_code]
    live = np.flatnonzero(cpos >= 0)
    if not len(live):
        return src
    g_l, c_l = group[live], cpos[live]
    order = live[np.lexsort((tiebreak[live], u[live], a_code[live], c_l, g_l))]
    gs, cs = group[order], cpos[order]
    m = len(order)
    g_start = np.r_[0, np.flatnonzero(gs[1:] != gs[:-1]) + 1]
    g_len = np.diff(np.r_[g_start, m])
    b_start = np.r_[0, np.flatnonzero((gs[1:] != gs[:-1]) | (cs[1:] != cs[:-1])) + 1]
    b_len = np.diff(np.r_[b_start, m])
    # the largest class of each group: its shift
    b_group = np.searchsorted(g_start, b_start, side="right") - 1
    shift = np.zeros(len(g_start), dtype=np.int64)
    np.maximum.at(shift, b_group, b_len)
    each_g = np.repeat(np.arange(len(g_start)), g_len)
    each_b = np.repeat(np.arange(len(b_start)), b_len)
    base = g_start[each_g]
    size = g_len[each_g]
    p = np.arange(m) - base
    start = b_start[each_b] - base
    end = start + b_len[each_b]
    t = (p + shift[each_g]) % size
    inside = (start <= t) & (t < end)  # only when a class holds more than half: its block's end
    t = np.where(inside, end % size, t)
    src[order] = order[base + t]
    return src


def plan_tree_questions(images: Iterable, families: Mapping, pools, seed: int,
                        settings: Mapping, population: str | None = None,
                        pool=None) -> dict[str, dict]:
    """Per image key, what its balanced questions ask: ``{key: {family: {...}}}``.

    ``images``: :class:`pipeline.inputs.layouts.tree.TreeImage`; groups are formed per split (or
    over all images as one ``population``, e.g. the benchmark).  ``pool``: an executor (a
    process pool) that takes about half of the distractor assignments (one per pool of
    questions, each its own: the same choices wherever it runs) while this process does
    the others.
    """
    images = list(images)
    image_keys = [i.key for i in images]
    plans: list[dict] = [{} for _ in images]
    out = dict(zip(image_keys, plans))
    if not images:
        return out
    fam = {f.generator: name for name, f in families.items()}
    us = uniforms(seed, image_keys, "tree-balance")
    split, _ = _codes([population or i.split for i in images])
    modality, _ = _codes([i.modality for i in images])
    region_names = [i.region for i in images]
    label_names = [i.label for i in images]
    region, _ = _codes(region_names)
    # ties of u (never seen: 64-bit keyed numbers) are broken by key, as a sort of
    # (u, key) tuples would
    if all(a < b for a, b in zip(image_keys, image_keys[1:])):
        by_key = np.arange(len(images))
    else:
        by_key = np.empty(len(images), dtype=np.int64)
        by_key[sorted(range(len(images)), key=image_keys.__getitem__)] = np.arange(len(images))
    by_modality = split * (int(modality.max()) + 1) + modality
    by_region = by_modality * (int(region.max()) + 1) + region

    def related_labels(a, b):
        return pools.related(a, b)

    # closed− by derangement, paraphrase of the source's closed+ question
    for absent, present, level in (("rin_anatomy_absent", "rin_anatomy_present", "modality"),
                                   ("rin_pathology_absent", "rin_pathology_present", "region")):
        if absent not in fam or present not in fam:
            continue
        name_a, name_p = fam[absent], fam[present]
        n_variants = len(families[name_p].variants)
        if len(families[name_a].variants) != n_variants:
            continue  # paraphrases cannot be paired
        if level == "modality":
            groups, answers, rel = by_modality, region_names, (lambda a, b: a == b)
        else:
            groups, answers, rel = by_region, label_names, related_labels
        src = derangement(_dense(groups), answers, us[:, U_SLOTS[absent]], by_key, rel)
        targets = np.flatnonzero(src >= 0)
        sources = src[targets].tolist()
        variants = variants_of(seed, [image_keys[s] for s in sources], name_p, n_variants)
        for t, s, v in zip(targets.tolist(), sources, variants):
            plans[t][name_a] = {"wrong": answers[s], "variant": v}
    # multiple choice: positions by rank, distractors by quota
    auto_normal = str(settings.get("no_pathology_option_rate", "auto")) == "auto"
    assignments: list[tuple] = []  # (family, members, their images, pools, weighted)
    for gen, level in (("rin_anatomy_mc", "modality"), ("rin_pathology_mc", "region")):
        if gen not in fam or (gen == "rin_pathology_mc" and not auto_normal):
            continue
        name = fam[gen]
        u = us[:, U_SLOTS[gen]]
        if level == "modality":
            pool_of, answers, rel = _dense(by_modality), region_names, (lambda a, b: a == b)
        else:
            pool_of, answers, rel = _dense(by_region), label_names, related_labels
        a_code, _ = _codes(answers)
        order = np.lexsort((a_code, u, pool_of))
        bounds = np.r_[0, np.flatnonzero(np.diff(pool_of[order])) + 1, len(order)]
        u_list = u.tolist()
        pools_by = []  # per pool: its members (u, answer) sorted, and their image indices
        for b0, b1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            idx = order[b0:b1].tolist()
            pools_by.append(([(u_list[i], answers[i]) for i in idx], idx))
        asked = np.ones(len(images), dtype=bool)
        if population is not None:
            # a population of its own (the benchmark) asks each pool's questions only as
            # far as no answer is correct in more than a quarter of them (its normal images
            # are half of each region: two in three skip the pathology question)
            for n, (members, idx) in enumerate(pools_by):
                kept = cap_answers(members, len(LETTERS))
                if kept is None:
                    continue
                keep = set(kept)
                for m, i in zip(members, idx):
                    if m not in keep:
                        plans[i][name] = {"skip": True}
                        asked[i] = False
                pools_by[n] = ([m for m in members if m in keep],
                               [i for m, i in zip(members, idx) if m in keep])
        live = np.flatnonzero(asked)
        rank = _ranks(live[np.lexsort((by_key[live], u[live], split[live]))], split)
        ranks = rank.tolist()
        for i in live.tolist():  # every question: its position by rank
            plans[i][name] = {"position": ranks[i]}
        for members, idx in pools_by:
            if len({a for _, a in members}) < len(LETTERS):
                continue  # too few answers in the pool: the generator's fallback draws
            # drawn in proportion to the quota left, not the largest quotas: those gave a
            # rare pathology the region's most frequent ones, the option set the answer
            # (anatomy: related means equal, assign_distractors' default without pools)
            assignments.append((name, members, idx, pools if level == "region" else None,
                                level == "region"))
    for name, members, idx, chosen_by in _assigned(assignments, pool):
        index_of = {m[0]: i for m, i in zip(members, idx)}
        for v, chosen in chosen_by.items():
            if len(chosen) == len(LETTERS) - 1:
                plans[index_of[v]][name]["distractors"] = list(chosen)
    # abnormality polarity: alternate by rank within normal and abnormal images
    if "rin_abnormality" in fam:
        name = fam["rin_abnormality"]
        u = us[:, U_SLOTS["rin_abnormality"]]
        abnormal = np.array([pools.is_abnormal(x) for x in label_names], dtype=np.int64)
        classes = by_modality * 2 + abnormal  # the text names the modality, not the region
        rank = _ranks(np.lexsort((by_key, u, classes)), classes)
        n_variants = len(families[name].variants)
        for plan, r in zip(plans, rank.tolist()):  # and the paraphrase by rank: even per text
            plan[name] = {"ask_normal": bool(r % 2), "variant": (r // 2) % n_variants}
    return out


def _assign(members: list, pools, weighted: bool) -> dict:
    return assign_distractors(members, {}, pools, weighted=weighted)


def _assigned(assignments: list[tuple], pool) -> list[tuple]:
    """``(family, members, images, {u: distractors})`` of every assignment, in order: with a
    ``pool``, the largest ones go to it until it holds about half of the questions."""
    remote: dict[int, object] = {}
    if pool is not None and len(assignments) > 1:
        load, half = 0, sum(len(a[1]) for a in assignments) / 2
        for n in sorted(range(len(assignments)), key=lambda n: -len(assignments[n][1])):
            if load + len(assignments[n][1]) <= half or not remote:
                _, members, _, pools, weighted = assignments[n]
                remote[n] = pool.submit(_assign, members, pools, weighted)
                load += len(assignments[n][1])
    local = {n: _assign(a[1], a[3], a[4]) for n, a in enumerate(assignments) if n not in remote}
    return [(a[0], a[1], a[2], remote[n].result() if n in remote else local[n])
            for n, a in enumerate(assignments)]


def _dense(codes: np.ndarray) -> np.ndarray:
    """``codes`` renumbered 0..k-1 in their sorted order."""
    return np.unique(codes, return_inverse=True)[1].reshape(-1)
