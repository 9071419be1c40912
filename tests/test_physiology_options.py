"""Physiology multiple choice (options balancing with answers grouped by body system): no option
text and no *set* of options points at the answer (pipeline.qa.balance.assign_blocks)."""

from __future__ import annotations

import collections

from pipeline.config.recipes import load_recipe
from pipeline.core import keys
from pipeline.kinds.base import load_questions
from pipeline.qa.balance import rules_from

_, POOLS = load_questions(load_recipe("radvuqa"))
#: structure -> questions, skewed like the built-in radvuqa sample (the lung on most slices)
WEIGHTS = {"lung_upper_lobe_left": 400, "vertebrae_L1": 300, "kidney_left": 240, "spleen": 170,
           "liver": 180, "colon": 100, "stomach": 70, "aorta": 60, "inferior_vena_cava": 45,
           "pancreas": 15, "gallbladder": 2}
POOL = "physiology_mc|physiology|axial|CT"


def _rules():
    cands = []
    for structure, n in WEIGHTS.items():
        label = POOLS.function_label(structure)
        cands += [("options", "test", "physiology_mc", POOL, label,
                   keys.unit_interval(i, structure, "phys"), ()) for i in range(n)]
    return rules_from(cands, POOLS), {c[5]: c[4] for c in cands}


def test_every_option_set_has_each_member_as_the_answer_equally_often():
    rules, answer_of = _rules()
    assigned = rules.pools[("test", POOL)]
    assert len(assigned) >= 0.6 * len(answer_of)  # the balancing keeps most questions
    by_set = collections.defaultdict(collections.Counter)
    offered, correct = collections.Counter(), collections.Counter()
    for u, distractors in assigned.items():
        answer = answer_of[u]
        options = (answer, *distractors)
        assert len(set(options)) == 4
        assert not any(POOLS.related(a, b) for a in options for b in options if a != b)
        by_set[frozenset(options)][answer] += 1
        correct[answer] += 1
        offered.update(options)
    for options, answers in by_set.items():
        assert set(answers) == set(options) and len(set(answers.values())) == 1, answers
    for label in offered:
        assert correct[label] * 4 == offered[label], label
    assert rules.positions[("test", "physiology_mc")] == sorted(assigned)
