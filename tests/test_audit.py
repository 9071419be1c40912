"""The shortcut audit's option baselines: ties share the credit, unoffered options score 0."""

from __future__ import annotations

import pytest

from pipeline.qa.audit import SEP, _baselines


def _counts(**fields) -> dict:
    return {"n": 0, "answers": {}, "question_answer": {}, "positions": {}, "offered": {},
            "correct": {}, "longest_correct": 0, "option_sets": {}} | fields


def test_option_baselines_share_the_credit_of_tied_options():
    train = _counts(positions={"A": 2}, offered={"x": 2, "y": 2, "z": 1}, correct={"x": 1, "y": 2})
    test = _counts(n=3, positions={"A": 1}, option_sets={
        SEP.join(["x", "y", "z", "0"]): 2,  # offered 2, 2, 1: x ties with y -> 1/2, twice
        SEP.join(["z", "w", "1"]): 1})      # rates 0.0 and 0.0 (w never offered): 1/2
    out = _baselines(train, test, "multiple_choice")
    assert out["frequent_option"] == pytest.approx(1.0 / 3)  # (2 * 1/2 + 0) / 3
    assert out["often_correct_option"] == pytest.approx(0.5 / 3)  # x 0.5 < y 1.0; then a tie
    assert out["answer_position"] == pytest.approx(1 / 3)
    assert out["question_majority"] == 0.0
