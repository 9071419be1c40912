"""Exact, shard-independent answer balancing of closed questions (CLEVR/GQA-style, but
order-free).

A generator marks a closed question it wants balanced with ``balance = (group, u)``:
``group`` names what the question text is about (e.g. ``existence/liver`` — the family
and its target), ``u`` is a keyed uniform number of the question (a function of the
seed, the image and the family only).  Over the whole corpus, for every ``(split,
group)``, the answer that occurs less often is kept whole and each more frequent answer
keeps only its questions with the smallest ``u`` — as many as the rarest answer has.
Within every group and split, ``yes`` and ``no`` are then exactly equal, so a model that
reads only the question cannot beat a coin on it.

The thresholds depend only on the multiset of candidates, never on the order in which
shards, bundles or workers produced them; a group whose questions all have one answer is
dropped whole (it could only teach a shortcut).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

ANSWERS = ("yes", "no")


def thresholds(candidates: Iterable[Sequence]) -> dict:
    """``{(split, group): {answer: largest u kept}}`` for the groups that need thinning.

    ``candidates``: ``(split, group, answer, u)`` for every balanced question.
    """
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for split, group, answer, u in candidates:
        groups.setdefault((split, group), {a: [] for a in ANSWERS})[answer].append(float(u))
    out = {}
    for key, by in sorted(groups.items()):
        n_min = min(len(v) for v in by.values())
        rule = {}
        for answer, us in sorted(by.items()):
            if len(us) > n_min:
                rule[answer] = sorted(us)[n_min - 1] if n_min else -1.0
        if rule:
            out[key] = rule
    return out


def keep(split: str, group: str, answer: str, u: float, rules: Mapping) -> bool:
    rule = rules.get((split, group))
    if rule is None or answer not in rule:
        return True
    return u <= rule[answer]


def keep_question(row: Mapping, rules: Mapping) -> bool:
    """Whether a generated row survives balancing (rows without ``balance`` always do)."""
    mark = row.get("balance")
    if not mark:
        return True
    group, u = mark
    return keep(row["split"], group, row["answer"], u, rules)


def as_side_input(rules: Mapping) -> list:
    """A picklable, order-stable form for a Beam side input; :func:`from_side_input` inverts."""
    return sorted((k, sorted(v.items())) for k, v in rules.items())


def from_side_input(items: Iterable) -> dict:
    return {tuple(k): dict(v) for k, v in items}


def question_candidates(records: Iterable[Mapping], ctx) -> list[tuple]:
    """``(split, group, answer, u)`` of every balanced question the records would get."""
    from pipeline.questions import BALANCED_GENERATORS, generate_questions

    families = {k: f for k, f in ctx.families.items() if f.generator in BALANCED_GENERATORS}
    out = []
    if not families:
        return out
    for record in records:
        for row in generate_questions(record, families, ctx.pools, seed=ctx.seed,
                                      settings=ctx.qa_settings):
            if row.get("balance"):
                group, u = row["balance"]
                out.append((row["split"], group, row["answer"], float(u)))
    return out
