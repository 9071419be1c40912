"""Shortcut leaks of the slice questions, each checked by a model that reads only the text.

* box questions: the box's coordinates in the text named the structure (a learned model
  picked the answer of the identification questions from them); the visual prompt (the
  box drawn in red on ``image_boxed``) leaves the text the same whatever the structure;
* option order: the wrong options kept their given order, so the one option out of place
  was the answer;
* physiology: options of one body system never meet, and the text never names the
  structure.

The records are synthetic slices whose structures sit where anatomy puts them (each label
has its own box position and size), the strongest prior a text model could learn.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import yaml
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression

from pipeline.config.recipes import load_recipe
from pipeline.core import keys
from pipeline.kinds.base import load_questions
from pipeline.qa.balance import apply, candidate, rules_from
from pipeline.qa.questions import generate_questions
from pipeline.qa.templates import load_family_file

FAMILIES, POOLS = load_questions(load_recipe("radvuqa"))
#: label -> (x centre, y centre, width, height): a fixed layout, like real anatomy
LAYOUT = {"liver": (25, 40, 30, 34), "spleen": (78, 45, 14, 20), "kidney_left": (70, 62, 12, 14),
          "kidney_right": (26, 62, 12, 14), "stomach": (66, 30, 20, 16), "pancreas": (50, 48, 24, 8),
          "gallbladder": (32, 50, 8, 8), "aorta": (52, 60, 6, 6), "inferior_vena_cava": (44, 58, 7, 7),
          "colon": (50, 75, 60, 12), "vertebrae_L1": (48, 72, 14, 12), "lung_lower_lobe_left": (72, 20, 20, 22)}
LABELS = sorted(LAYOUT)
NUM = re.compile(r"\d+")


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        present = sorted(rng.sample(LABELS, rng.randint(3, 6)))
        boxes = []
        for label in present:
            cx, cy, w, h = (v + rng.randint(-2, 2) for v in LAYOUT[label])
            boxes.append({"label": label, "x_min": cx - w // 2, "y_min": cy - h // 2, "x_max": cx + w // 2,
                          "y_max": cy + h // 2, "area_px": w * h, "area_mm2": 2.0 * w * h, "components": 1,
                          "centroid_x": float(cx), "centroid_y": float(cy),
                          "centroid_lps": [float(cx), float(cy), 100.0], "laterality": "midline"})
        key = keys.stable_key("leak", seed, i)
        out.append({"image_id": key, "case_key": key, "split": ("train", "test")[i % 2], "modality": "CT",
                    "plane": "axial", "slice_index": 3, "width": 96, "height": 96, "spacing_mm": [1.5, 1.5],
                    "boxes": boxes, "prompt_label": rng.choice(present), "case_labels": LABELS})
    return out


def _balanced(records, names) -> list[dict]:
    families = {k: FAMILIES[k] for k in names}
    rows = [row for r in records for row in generate_questions(r, families, POOLS, seed=11)]
    cands = [candidate(r["split"], r["balance"], r["answer_text"] if r["balance"]["mode"] == "answers" else "")
             for r in rows if r.get("balance")]
    rules = rules_from(cands, POOLS)
    return [x for x in (apply(dict(r), rules, families, POOLS) for r in rows) if x is not None]


def _features(question: str) -> dict:
    """Words, word bigrams and each number binned with its position (a box's corners)."""
    words = re.findall(r"[a-z]+", question.lower())
    f = {f"w={w}": 1.0 for w in words} | {f"b={a}_{b}": 1.0 for a, b in zip(words, words[1:])}
    for n, v in enumerate(NUM.findall(question)):
        f[f"n{n}/{int(v) // 8}"] = 1.0
    return f


def learned_accuracy(rows: list[dict]) -> tuple[float, float]:
    """(accuracy, chance) of a text-only logistic regression trained on the train rows and
    scored on the test rows: open questions predict the answer text (chance: the majority
    prior); multiple choice score each option's text against the question (chance 1/options)."""
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(train) > 100 and len(test) > 100
    vec = DictVectorizer()
    x = vec.fit_transform([_features(r["question"]) for r in train])
    model = LogisticRegression(max_iter=2000).fit(x, [r["answer_text"] for r in train])
    proba = model.predict_proba(vec.transform([_features(r["question"]) for r in test]))
    classes = {c: i for i, c in enumerate(model.classes_)}
    if test[0]["question_type"] == "open":
        prior = Counter(r["answer_text"] for r in train).most_common(1)[0][0]
        hits = [model.classes_[int(np.argmax(p))] == r["answer_text"] for r, p in zip(test, proba)]
        return float(np.mean(hits)), float(np.mean([r["answer_text"] == prior for r in test]))
    hits = []
    for r, p in zip(test, proba):
        scores = [p[classes[o]] if o in classes else -1.0 for o in r["options"]]
        hits.append(r["options"][int(np.argmax(scores))] == r["answer_text"])
    return float(np.mean(hits)), 1.0 / len(test[0]["options"])


def test_box_questions_do_not_give_their_structure_away_to_a_text_model():
    rows = _balanced(_records(1200), ("structure_identification_mc", "structure_identification_open"))
    for family in ("structure_identification_mc", "structure_identification_open"):
        acc, chance = learned_accuracy([r for r in rows if r["family"] == family])
        assert acc <= chance + 0.05, (family, acc, chance)
    ident = [r for r in rows if r["family"].startswith("structure_identification")]
    assert all(r["visual_prompt"] == "red_box" and not NUM.search(r["question"]) for r in ident)


def test_physiology_options_are_of_distinct_systems_and_the_text_names_no_structure():
    rows = _balanced(_records(1600), ("physiology_mc",))
    acc, chance = learned_accuracy(rows)
    assert acc <= chance + 0.05, (acc, chance)
    by_text = {POOLS.display(label): label for label in POOLS.function_labels()}
    names = {POOLS.display(label).lower() for label in LABELS}
    for r in rows:
        labels = [by_text[o] for o in r["options"]]
        assert len(labels) == 4 and not any(POOLS.related(a, b) for n, a in enumerate(labels)
                                            for b in labels[n + 1:]), r["options"]
        assert not any(name in r["question"].lower() for name in names)
    # each option text is correct about a quarter of the times it is offered
    offered, correct = Counter(o for r in rows for o in r["options"]), Counter(r["answer_text"] for r in rows)
    assert max(correct[o] / offered[o] for o in offered if offered[o] >= 40) < 0.35


def test_option_order_says_nothing_of_the_answer(tmp_path):
    """An answers-balanced multiple-choice family whose generator lists its options in a
    fixed order: the order of the balanced options must not tell the answer (it did: the
    one option moved out of the fixed order was the answer)."""
    path = tmp_path / "fam.yaml"
    path.write_text(yaml.safe_dump({
        "family": "order_mc", "task": "anatomy", "generator": "prompt_identification",
        "question_type": "multiple_choice", "answer_format": "option_letter", "balance": "answers",
        "requires": ["colour"], "version": 1,
        "variants": [{"id": f"o{n}", "text": f"Which structure is in the {{{{ colour }}}} box ({n})?"}
                     for n in range(3)]}))
    family = load_family_file(path)
    canonical = ["aorta", "colon", "liver", "spleen"]
    rows = []
    for i in range(1600):
        answer = canonical[i % 4]
        u = keys.unit_interval(5, str(i), "u")
        rows.append({"qa_id": str(i), "family": "order_mc", "split": "test", "question_type": "multiple_choice",
                     "options": list(canonical), "answer": "A", "answer_text": answer, "template_id": "o1",
                     "balance": {"mode": "answers", "group": "order_mc|{}", "u": u},
                     "_context": {"colour": "red", "options": canonical}})
    rules = rules_from([candidate("test", r["balance"], r["answer_text"]) for r in rows], POOLS)
    out = [apply(dict(r), rules, {"order_mc": family}, POOLS) for r in rows]

    # the attacker: the answer most often correct for each option order, learned on half
    train, test = out[: len(out) // 2], out[len(out) // 2:]
    by_order: dict = {}
    for r in train:
        by_order.setdefault(tuple(r["options"]), Counter())[r["answer_text"]] += 1
    hits = [tuple(r["options"]) in by_order
            and by_order[tuple(r["options"])].most_common(1)[0][0] == r["answer_text"] for r in test]
    assert np.mean(hits) < 0.25 + 0.08, np.mean(hits)
    letters = Counter(r["answer"] for r in out)  # a uniform permutation: each letter about a quarter
    assert set(letters) == set("ABCD") and all(abs(n / len(out) - 0.25) < 0.04 for n in letters.values())




def test_physiology_table_loads_as_function_labels_related_by_main_system():
    assert POOLS.function_label("lung_upper_lobe_left") == POOLS.function_label("lung_right") == "function:lung"
    assert POOLS.display("function:kidney") == "filters blood to make urine"
    assert POOLS.function_label("kidney_cyst_left") is None  # a lesion: no function
    related = POOLS.related
    assert related("function:aorta", "function:subclavian_artery")  # one system: never together
    assert related("function:pancreas", "function:thyroid_gland")  # the pancreas serves the endocrine system too
    assert not related("function:pancreas", "function:kidney")  # both partly endocrine, different main systems
    assert not related("function:liver", "function:lung")
    assert POOLS.option_group("function:colon") == POOLS.option_group("function:liver") == "system:digestive"
    assert POOLS.option_group("liver") == "liver"
