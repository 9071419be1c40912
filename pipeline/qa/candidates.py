"""Balancing candidates: what each unit reports of its records' balanced questions.

Every unit generates its records' questions once for the candidates (remembered by
:func:`pipeline.qa.questions.questions_for` for the rendering pass) and reports, per
balanced question, the small tuple :func:`pipeline.qa.balance.candidate` makes of its
mark; :func:`pipeline.qa.balance.rules_from` turns the multiset of all units' candidates
into the corpus's rules.  With a unit's stored rows (:mod:`pipeline.qa.stored_rows`) the
marks of unchanged families come from their small marks files instead, and only the
other families are generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.qa import stored_rows
from pipeline.qa.balance import candidate
from pipeline.qa.questions import generate_questions, questions_for, record_digest


def question_candidates(records: Iterable[Mapping], ctx) -> list[tuple]:
    """Candidates of every balanced question the records would get."""
    families = {k: f for k, f in ctx.families.items() if f.balance != "none"}
    out = []
    if not families:
        return out
    store = stored_rows.current()
    # Only balanced families to generate (those without stored rows; e.g. the one edited,
    # the others kept as blocks): their rows through questions_for, remembered for the
    # rendering pass — generated once, not once per pass.  Otherwise the marks.
    marks_files = store is not None and ctx.qa_fp and any(
        f not in families for f in ctx.families if f not in store.valid)
    for record in records:
        try:
            if marks_files:
                # the marks of unchanged families from the unit's stored marks files; only
                # the other families are generated (stored_rows)
                marks = store.marks(record_digest(record).hex(), families, lambda fams, record=record: generate_questions(
                    record, fams, ctx.pools, seed=ctx.seed, settings=ctx.qa_settings, defer=True))
            else:
                # every family's rows, remembered for the rendering pass (a family's rows
                # never depend on which other families run)
                marks = stored_rows.marks_of(r for r in questions_for(record, ctx) if r["family"] in families)
        except Exception:  # noqa: BLE001 — the rendering pass dead-letters the record
            marks = stored_rows.marks_of(generate_questions(
                record, families, ctx.pools, seed=ctx.seed, settings=ctx.qa_settings))
        for split, mark, answer_text in marks:
            out.append(candidate(split, mark, answer_text if mark["mode"] == "answers" else ""))
    return out
