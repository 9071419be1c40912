"""Corpus-wide, order-free answer balancing (CLEVR/GQA-style, but shard-independent).

A template family declares ``balance`` (``schemas/template_family.schema.json``); its
generated questions carry a mark ``{"mode", "group", "u", …}`` where ``u`` is a keyed
uniform number of the question (seed, image, family — never arrival order).  Every unit
reports its marks as small *candidates* (:mod:`pipeline.qa.candidates`); the rules below
are a function of the multiset of candidates only, so any runner, shard layout or worker
count gives the same corpus.

``answers`` (closed and categorical open questions)
    ``group`` is the family with the values of the variables its text may use (the
    family's ``requires``) — everything its text depends on except the paraphrase.  For every ``(split, group)`` each answer keeps as
    many questions as the rarest answer has (those with the smallest ``u``); a group with
    a single answer is dropped whole (its text alone would give the answer away).  The
    kept questions of each answer are then given paraphrases by rank (``rank mod
    variants``), so *every question text* has each of its answers equally often: a model
    that reads only the question cannot beat chance on it, on any split.  Multiple-choice
    families balanced this way list their options in a keyed order drawn from the
    question's ``u`` alone, so the permutation says nothing about the answer.

``options`` (multiple choice)
    The correct letter is ``rank mod 4`` of the question among its family's questions in
    the split (positions exactly uniform), the wrong options' order is drawn from the
    question's ``u`` (so the permutation says nothing of the answer), and its distractors are drawn from the correct
    answers of the other questions of the same *pool* (e.g. the same anatomical region) by
    quota (:func:`assign_distractors`): each answer is offered as a distractor three times
    for each time it is correct, so no option text is a better guess than another.  For
    that, no answer may be correct in more than a quarter of its pool: the questions of an
    over-represented answer beyond that share are dropped (smallest ``u`` kept), and a
    pool with fewer than four distinct answers is dropped whole.  When the quotas leave
    too few distractors for a question, the generator's own stay.  A pool whose answers
    come in groups sharing one option slot (the functions of one body system) is dealt
    out in blocks instead (:func:`assign_blocks`), so not even the set of options points
    at the answer.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.core import keys
from pipeline.qa.options import LETTERS
from pipeline.qa.templates import render

MODES = ("none", "answers", "options")

#: How many keyed orders of a pool's labels break quota ties in :func:`assign_distractors`.
TIE_ORDERS = 256


@dataclass
class Rules:
    """Balancing rules of a corpus (picklable side input)."""

    answers: dict = field(default_factory=dict)  # (split, group) -> {answer: [kept u]} | None
    positions: dict = field(default_factory=dict)  # (split, family) -> [u]
    pools: dict = field(default_factory=dict)  # (split, pool) -> {u: distractor labels} | None
    #: digest of the units' ``("unit", unit id, records digest)`` candidates: which records
    #: the whole corpus has (the key of the stored finished rows, pipeline.engine.qa_blocks)
    corpus: str = ""

    def __bool__(self) -> bool:
        return bool(self.answers or self.positions or self.pools)


def mark(family, context: Mapping, u: float, made: Mapping) -> dict | None:
    """The balancing mark of a generated question (``None`` when not balanced)."""
    if family.balance == "answers":
        # the variables the family's text may use (``requires``): questions agreeing on them
        # share their texts, whatever else the context holds
        ctx = {k: context[k] for k in family.requires if k in context and k != "options"}
        return {"mode": "answers", "group": family.family + "|" + json.dumps(ctx, sort_keys=True),
                "u": u}
    if family.balance == "options" and made.get("label") is not None:
        return {"mode": "options", "group": family.family,
                "pool": family.family + "|" + str(made.get("pool", "")), "label": made["label"],
                "exclude": sorted(made.get("exclude") or ()), "u": u}
    return None


def candidate(split: str, m: Mapping, answer: str) -> tuple:
    if m["mode"] == "answers":
        return ("answers", split, m["group"], answer, float(m["u"]))
    return ("options", split, m["group"], m["pool"], m["label"], float(m["u"]),
            tuple(m.get("exclude") or ()))


def rules_from(candidates: Iterable[tuple], pools_=None) -> Rules:
    """The rules for a multiset of candidates (see the module docstring); ``pools_`` (the
    distractor pools) supplies synonyms and parents to keep out of the options."""
    answers: dict[tuple, dict[str, list[float]]] = {}
    pools: dict[tuple, list[tuple[float, str]]] = {}
    excludes: dict[float, tuple] = {}
    units: list[tuple] = []
    for c in candidates:
        if c[0] == "unit":
            units.append(c[1:])
        elif c[0] == "answers":
            _, split, group, answer, u = c
            answers.setdefault((split, group), {}).setdefault(answer, []).append(u)
        else:
            _, split, group, pool, label, u, exclude = c
            pools.setdefault((split, pool), []).append((u, label))
            excludes[u] = exclude
    rules = Rules(corpus=corpus_digest(units) if units else "")
    for key, by in answers.items():
        if len(by) < 2:
            rules.answers[key] = None
            continue
        n = min(len(v) for v in by.values())
        rules.answers[key] = {a: sorted(v)[:n] for a, v in by.items()}
    kept_positions: dict[tuple, list[float]] = {}
    group = getattr(pools_, "option_group", None)
    for (split, pool), items in sorted(pools.items()):
        kept = cap_answers(items, group=group)
        if kept is None:
            rules.pools[(split, pool)] = None
            continue
        grouped = group is not None and any(group(label) != label for _, label in kept)
        assign = assign_blocks if grouped else assign_distractors
        rules.pools[(split, pool)] = assigned = assign(kept, excludes, pools_)
        kept_positions.setdefault((split, pool.split("|", 1)[0]), []).extend(
            u for u, _ in kept if u in assigned)
    rules.positions = {k: sorted(v) for k, v in kept_positions.items()}
    return rules


def corpus_digest(units: Iterable[tuple[str, str]]) -> str:
    """The digest of every unit's ``(unit id, records digest)``, in any order."""
    return keys.digest(json.dumps(sorted(map(list, units))))


def assign_distractors(kept: list[tuple[float, str]], excludes: Mapping[float, tuple], pools_=None,
                       k: int = 3, weighted: bool = False) -> dict[float, tuple[str, ...]]:
    """Distractors for every question of a pool: ``{u: (label, …)}``.

    Each answer gets a quota of ``k`` times the number of questions it answers; in ``u``
    order every question takes the ``k`` eligible labels with the most quota left (ties
    broken by one of :data:`TIE_ORDERS` keyed orders of the labels that the question's
    ``u`` picks), never its own answer, a synonym, parent or child of it, a label excluded
    for it, or two related labels, and lists them in that keyed order.  So every answer is
    offered about ``k`` times as a distractor for each time it is correct, and neither the
    set nor the order of the options points at the answer (ties broken by a rotation of the
    sorted labels made the distractors a run of neighbours, the answer the odd one out: a
    learned text-only model reached 45 % on 4-option anatomy questions).  Linear in the
    questions (a pool holds tens of labels): the launcher runs it over every
    multiple-choice question of a 750K-image tree.

    With ``weighted`` the labels are instead *drawn* with probability proportional to the
    quota they have left (a weighted draw without replacement keyed by the question's
    ``u``).  Taking the labels with the most quota left gave a rare answer the pool's most
    frequent labels, so the option set pointed at the answer (a learned text-only model:
    29.3 % against 25 % on the tree benchmark's pathology questions, a few labels per
    region); drawn in proportion to their frequency, every member of an option set is
    about equally likely the answer.
    """
    counts: dict[str, int] = {}
    for _, label in kept:
        counts[label] = counts.get(label, 0) + 1
    labels = sorted(counts)
    n = len(labels)
    quota = [k * counts[label] for label in labels]
    index = {label: i for i, label in enumerate(labels)}
    related = (pools_.related if pools_ is not None else (lambda a, b: a == b))
    # relatedness among the pool's labels, computed once (the pool is small)
    rel = [[related(a, b) for b in labels] for a in labels]
    out: dict[float, tuple[str, ...]] = {}
    span = range(n)
    ties = [[keys.unit_interval(t, label, "distractor-ties") for label in labels]
            for t in range(TIE_ORDERS)]
    # The sort keys of every question, maintained as the quotas change: ``-quota`` or, with
    # ``weighted``, the exponent ``1 / max(quota, 0.5)`` of the question's keyed draws
    # (all drawn up front: one SHA-512 a question, one SHA-256 a label past the eighth).
    if weighted:
        expo = [1.0 / max(q, 0.5) for q in quota]
        draws = _draws([u for u, _ in kept], n)
    else:
        neg = [-q for q in quota]
    for j, (u, answer) in enumerate(kept):
        a = index[answer]
        rel_a = rel[a]
        excluded = {index[x] for x in excludes.get(u, ()) if x in index} if excludes else ()
        tie = ties[int(u * 2.0**40) % TIE_ORDERS]  # the low bits of u: not its rank
        if weighted:  # Efraimidis–Spirakis: the largest r ** (1 / w) first
            order = sorted(zip([-(r ** e) for r, e in zip(draws[j], expo)], tie, span))
        else:
            order = sorted(zip(neg, tie, span))
        chosen: list[int] = []
        for _, _, i in order:
            if i == a or rel_a[i] or i in excluded:
                continue
            rel_i = rel[i]
            for c in chosen:
                if rel_i[c]:
                    break
            else:
                chosen.append(i)
                if len(chosen) == k:
                    break
        for i in chosen:
            quota[i] -= 1
            if weighted:
                expo[i] = 1.0 / max(quota[i], 0.5)
            else:
                neg[i] = -quota[i]
        out[u] = tuple([labels[i] for i in sorted(chosen, key=tie.__getitem__)])
    return out


def _draws(us: list[float], n: int) -> list[list[float]]:
    """Per question ``u``, the keyed uniform of each label ``i`` of ``0..n-1``:
    ``keys.unit_intervals(0, repr(u), "distractor-draw")[i]`` for the first eight (one
    SHA-512), ``keys.unit_interval(i, repr(u), "distractor-draw")`` past them — the same
    bytes hashed and the same numbers (a big-endian 64-bit integer over 2**64, rounded
    once), converted by numpy instead of one Python call a number."""
    sha256, sha512 = hashlib.sha256, hashlib.sha512
    reprs = [repr(float(u)).encode() for u in us]
    tail = b"\x1fdistractor-draw"
    cols = np.frombuffer(b"".join([sha512(b"0\x1f" + r + tail).digest() for r in reprs]),
                         dtype=">u8").reshape(-1, 8)[:, :n]
    if n > 8:
        extra = [np.frombuffer(b"".join([sha256(head + r + tail).digest()[:8] for r in reprs]),
                               dtype=">u8") for head in (f"{i}\x1f".encode() for i in range(8, n))]
        cols = np.column_stack([cols, *extra])
    return (cols.astype(np.float64) / 2.0**64).tolist()


def assign_blocks(kept: list[tuple[float, str]], excludes: Mapping[float, tuple], pools_,
                  k: int = 3) -> dict[float, tuple[str, ...]]:
    """Distractors for a pool whose answers come in groups sharing one option slot
    (:meth:`pipeline.qa.pools.Pools.option_group`, e.g. the functions of one body system):
    ``{u: (label, …)}`` for the questions kept, in blocks of ``k + 1``.

    The per-label quotas of :func:`assign_distractors` balance each option text alone, but
    with a handful of groups the *set* of options gave the answer away (the physiology
    family: six body systems, the lung's function in every question and correct in 36 % of
    the questions offering it beside the three other largest systems; a learned text-only
    model scored 32 % against 25 %).  Here the questions are dealt out in blocks: each block
    takes one question (smallest ``u``) from each of ``k + 1`` pairwise unrelated answers of
    distinct groups — the groups with the most questions left, within a group the answer
    with the most left (ties by name) — and every question of a block offers the block's
    other answers.  So every option set is offered exactly once per member as the answer:
    neither an option text nor the set of options points at it.  Questions left over (no
    ``k + 1`` unrelated answers remain) get no entry: :func:`apply` drops them.
    """
    queues: dict[str, list[float]] = {}
    for u, label in kept:
        queues.setdefault(label, []).append(u)
    for us in queues.values():
        us.sort(reverse=True)  # pop() takes the smallest u
    members: dict[str, list[str]] = {}
    for label in sorted(queues):
        members.setdefault(pools_.option_group(label), []).append(label)
    out: dict[float, tuple[str, ...]] = {}
    while True:
        left = {g: sum(len(queues[x]) for x in labels) for g, labels in members.items()}
        chosen: list[str] = []
        for g in sorted((g for g in left if left[g]), key=lambda g: (-left[g], g)):
            for label in sorted(members[g], key=lambda x: (-len(queues[x]), x)):
                if queues[label] and not any(
                        pools_.related(label, c) or c in excludes.get(queues[label][-1], ())
                        or label in excludes.get(queues[c][-1], ()) for c in chosen):
                    chosen.append(label)
                    break
            if len(chosen) == k + 1:
                break
        if len(chosen) < k + 1:
            return out
        for label in chosen:
            out[queues[label].pop()] = tuple(c for c in chosen if c != label)


def cap_answers(items: list[tuple[float, str]], n_options: int = 4,
                group=None) -> list[tuple[float, str]] | None:
    """The questions of a pool kept so that no answer is more than ``1/n_options`` of them
    (its questions with the smallest ``u``), sorted by ``u``; ``None`` when the pool has
    fewer distinct answers than options.

    An answer correct in more than a quarter of a pool's questions cannot be offered as a
    distractor three times for each time it is correct, so it would be the better blind
    guess; capping it is what makes the neighbour distractors fair.  With ``group`` (a
    label → group function, :meth:`pipeline.qa.pools.Pools.option_group`) the cap holds per
    group of answers that may never be offered together (the functions of one body system:
    a question offers at most one of them, so together they get one distractor slot).
    """
    group = group or (lambda label: label)
    by: dict[str, list[float]] = {}
    for u, label in items:
        by.setdefault(group(label), []).append(u)
    if len(by) < n_options:
        return None
    counts = {g: len(us) for g, us in by.items()}
    while True:
        total = sum(counts.values())
        g = max(sorted(counts), key=lambda x: counts[x])
        allowed = (total - counts[g]) // (n_options - 1)
        if counts[g] <= allowed:
            break
        counts[g] = allowed
    keep = {g: set(sorted(us)[:counts[g]]) for g, us in by.items()}
    return sorted((u, label) for u, label in items if u in keep[group(label)])


def apply(row: dict, rules: Rules, families: Mapping, pools) -> dict | None:
    """The balanced form of a generated row, or ``None`` when balancing drops it.

    Rows without a mark, and every row when ``rules`` is empty (no corpus-wide view, e.g.
    ``radvqa lint``), pass unchanged apart from the internal fields being removed.
    """
    m = row.pop("balance", None)
    context = row.pop("_context", None)
    deferred = row.pop("_variant", None)  # generate_questions(defer=True) left it unworded
    if not m or not rules:
        if deferred is not None:
            return _rerender(row, families[row["family"]], deferred, context)
        return row
    family = families[row["family"]]
    if m["mode"] == "answers":
        kept = rules.answers.get((row["split"], m["group"]))
        if kept is None:
            return None
        us = kept.get(row["answer_text"], [])
        rank = bisect.bisect_left(us, m["u"])
        if rank >= len(us) or us[rank] != m["u"]:
            return None
        if family.question_type == "multiple_choice":
            # The options in a keyed order of their own (a uniform permutation drawn from the
            # question's u), independent of the answer, its rank and the paraphrase.  Placing
            # the answer by its rank and its index among the group's answers spreads each
            # letter evenly only over many questions; in groups of a few dozen the position
            # then tells the answer (a learned text-only model: 100 % on 3D-RAD's static
            # temporal questions at first, 69.7 % against 50 % on the longitudinal ones).
            options = sorted(row["options"], key=lambda o: keys.unit_interval(
                0, f"{m['u']!r}\x1f{o}", "option-order"))
            position = options.index(row["answer_text"])
            row = row | {"options": options, "answer": LETTERS[position]}
            context = dict(context) | {"options": options}
        return _rerender(row, family, rank % len(family.variants), context)
    # options
    pool = rules.pools.get((row["split"], m["pool"]))
    if pool is None or m["u"] not in pool:
        return None  # a pool with too few answers, or an answer over-represented in it
    us = rules.positions.get((row["split"], m["group"]), [])
    rank = bisect.bisect_left(us, m["u"])
    distractors = pool[m["u"]]
    if len(distractors) < len(LETTERS) - 1:
        wrong = [o for o in row["options"] if o != row["answer_text"]]
    else:
        wrong = [pools.display(label) for label in distractors]
    position = rank % (len(wrong) + 1)  # a question may offer fewer than four options
    options = _shuffled(wrong, m["u"])
    options.insert(position, row["answer_text"])
    row = row | {"options": options, "answer": LETTERS[position]}
    context = dict(context) | {"options": options}
    variant = next(i for i, v in enumerate(family.variants) if v.id == row["template_id"])
    return _rerender(row, family, variant, context)


def _shuffled(wrong: list, u: float) -> list:
    """The wrong options in an order drawn from the question's keyed number ``u`` alone.

    The correct option's place is balanced separately; drawing the others' order
    independently of it makes the whole permutation independent of the answer (kept in
    their given order — canonical, or quota order — the one option out of place gave the
    answer away)."""
    gen, rest, out = keys.KeyedStream(0, repr(float(u)), "option-order"), list(wrong), []
    while rest:
        out.append(rest.pop(int(gen.integers(len(rest)))))
    return out


def _rerender(row: dict, family, variant: int, context) -> dict:
    v = family.variants[variant]
    return row | {"question": render(family, v, context), "template_id": v.id}


def strip(row: dict) -> dict:
    """A row without the internal balancing fields."""
    row.pop("balance", None)
    row.pop("_context", None)
    return row
