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
Plans come from the file list, before any image is read: an image rejected when it is read
leaves its partners one-sided (one text off by one per rejected image).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def derange(items: list[tuple[float, str, str]], related) -> dict[str, str]:
    """``{key: source key}``: a bijection between ``items`` (``(u, key, answer)``) that maps
    no item to one with the same or a related answer, where the answer counts allow
    (no class of related answers more than half of the items); otherwise the first item
    of the next class.

    Answers are grouped into classes of related answers (synonyms, transitively), items
    laid out class by class (classes in keyed order, answers and members by ``u``) and
    shifted by the largest class's size: no item then lands in its own class.  Linear in
    the items.  With a single class there is no valid source: ``{}`` (the generators draw).
    """
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
    classes: dict[str, list[tuple[str, float, str]]] = {}
    for u, key, answer in items:
        classes.setdefault(root(answer), []).append((answer, u, key))
    if len(classes) < 2:
        return {}
    order = sorted(classes, key=lambda c: keys.unit_interval(0, c, "derange"))
    seq: list[str] = []
    block: list[tuple[int, int]] = []  # per position: its class's block [start, end)
    for c in order:
        members = sorted(classes[c])
        start = len(seq)
        seq.extend(key for _, _, key in members)
        block.extend([(start, len(seq))] * len(members))
    n = len(seq)
    shift = max(len(v) for v in classes.values())
    out = {}
    for p, key in enumerate(seq):
        start, end = block[p]
        t = (p + shift) % n
        if start <= t < end:  # only when a class holds more than half: its block's end
            t = end % n
        out[key] = seq[t]
    return out


def plan_tree_questions(images: Iterable, families: Mapping, pools, seed: int,
                        settings: Mapping, population: str | None = None) -> dict[str, dict]:
    """Per image key, what its balanced questions ask: ``{key: {family: {...}}}``.

    ``images``: :class:`pipeline.inputs.layouts.tree.TreeImage`; groups are formed per split (or
    over all images as one ``population``, e.g. the benchmark).
    """
    images = list(images)
    out: dict[str, dict] = {i.key: {} for i in images}
    fam = {f.generator: name for name, f in families.items()}
    # one pass: each image's uniforms and groups
    us = [keys.unit_intervals(seed, i.key, "tree-balance") for i in images]
    splits = [population or i.split for i in images]

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
        slot = U_SLOTS[absent]
        groups: dict[tuple, list] = {}
        answer_of: dict[str, str] = {}
        for i, u, sp in zip(images, us, splits):
            if level == "modality":
                g, answer = (sp, i.modality), i.region
            else:
                g, answer = (sp, i.modality, i.region), i.label
            groups.setdefault(g, []).append((u[slot], i.key, answer))
            answer_of[i.key] = answer
        rel = (lambda a, b: a == b) if level == "modality" else related_labels
        for members in groups.values():
            for key, src in derange(members, rel).items():
                out[key][name_a] = {"wrong": answer_of[src],
                                    "variant": variant_of(seed, src, name_p, n_variants)}
    # multiple choice: positions by rank, distractors by quota
    auto_normal = str(settings.get("no_pathology_option_rate", "auto")) == "auto"
    for gen, level in (("rin_anatomy_mc", "modality"), ("rin_pathology_mc", "region")):
        if gen not in fam or (gen == "rin_pathology_mc" and not auto_normal):
            continue
        name = fam[gen]
        slot = U_SLOTS[gen]
        by_split: dict[str, list[tuple[float, str]]] = {}
        pools_by: dict[tuple, list[tuple[float, str]]] = {}
        key_of_u: dict[float, str] = {}
        for i, u, sp in zip(images, us, splits):
            v = u[slot]
            key_of_u[v] = i.key
            by_split.setdefault(sp, []).append((v, i.key))
            if level == "modality":
                pools_by.setdefault((sp, i.modality), []).append((v, i.region))
            else:
                pools_by.setdefault((sp, i.modality, i.region), []).append((v, i.label))
        if population is not None:
            # a population of its own (the benchmark) asks each pool's questions only as
            # far as no answer is correct in more than a quarter of them (its normal images
            # are half of each region: two in three skip the pathology question)
            for pool, members in pools_by.items():
                kept = cap_answers(members, len(LETTERS))
                if kept is None:
                    continue
                skip = set(members) - set(kept)
                pools_by[pool] = kept
                for u, _ in skip:
                    out[key_of_u[u]][name] = {"skip": True}
            by_split = {sp: [m for m in ms if name not in out[m[1]]] for sp, ms in by_split.items()}
        for members in by_split.values():  # every question: its position by rank
            members.sort()
            for r, (_, key) in enumerate(members):
                out[key][name] = {"position": r}
        rel = (lambda a, b: a == b) if level == "modality" else related_labels
        for members in pools_by.values():
            if len({a for _, a in members}) < len(LETTERS):
                continue  # too few answers in the pool: the generator's fallback draws
            members.sort()
            # drawn in proportion to the quota left, not the largest quotas: those gave a
            # rare pathology the region's most frequent ones, the option set the answer
            for u, chosen in assign_distractors(members, {}, _Related(rel),
                                                weighted=level == "region").items():
                if len(chosen) == len(LETTERS) - 1:
                    out[key_of_u[u]][name]["distractors"] = list(chosen)
    # abnormality polarity: alternate by rank within normal and abnormal images
    if "rin_abnormality" in fam:
        name = fam["rin_abnormality"]
        slot = U_SLOTS["rin_abnormality"]
        classes: dict[tuple, list[tuple[float, str]]] = {}
        for i, u, sp in zip(images, us, splits):  # the text names the modality, not the region
            classes.setdefault((sp, i.modality, pools.is_abnormal(i.label)), []).append((u[slot], i.key))
        n_variants = len(families[name].variants)
        for members in classes.values():  # and the paraphrase by rank: even per text
            members.sort()
            for r, (_, key) in enumerate(members):
                out[key][name] = {"ask_normal": bool(r % 2), "variant": (r // 2) % n_variants}
    return out


class _Related:
    """Adapter giving :func:`assign_distractors` a ``related`` method."""

    def __init__(self, fn):
        self.related = fn
