"""Balancing candidates: what each unit reports of its records' balanced questions.

Every unit generates its records' questions once for the candidates (remembered by
:func:`pipeline.qa.questions.questions_for` for the rendering pass) and reports, per
balanced question, the small tuple :func:`pipeline.qa.balance.candidate` makes of its
mark; :func:`pipeline.qa.balance.rules_from` turns the multiset of all units' candidates
into the corpus's rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.qa.balance import candidate
from pipeline.qa.questions import generate_questions, questions_for


def question_candidates(records: Iterable[Mapping], ctx) -> list[tuple]:
    """Candidates of every balanced question the records would get."""
    families = {k: f for k, f in ctx.families.items() if f.balance != "none"}
    out = []
    if not families:
        return out
    for record in records:
        try:
            # every family's rows, remembered for the rendering pass (a family's rows
            # never depend on which other families run)
            rows = [r for r in questions_for(record, ctx) if r["family"] in families]
        except Exception:  # noqa: BLE001 — the rendering pass dead-letters the record
            rows = generate_questions(record, families, ctx.pools, seed=ctx.seed,
                                      settings=ctx.qa_settings)
        for row in rows:
            if row.get("balance"):
                answer = row["answer_text"] if row["balance"]["mode"] == "answers" else ""
                out.append(candidate(row["split"], row["balance"], answer))
    return out
