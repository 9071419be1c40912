"""Shortcut audit: blind baselines that never see an image, per config, split, task and
question type, reported against chance.

A VQA corpus is worth training on only if the image is needed to answer it.  Each unit
counts what the baselines need while it renders (:func:`partial_counts`: small tables
keyed by question text, option text and answer position — never rows), the launcher
merges the units' counts (:func:`merge`) and scores every baseline on every split
(:func:`audit`), learning on ``train`` (of the same config, or the one named in
``learn_from`` — the benchmark learns from ``instruct``) and scoring on the split itself:

``question_majority``
    For each exact question text, the answer most often given to it on train; texts
    unseen on train fall back to the group's most frequent train answer.  What a
    language model memorising the training questions would get.
``answer_position``
    Multiple choice: always the letter most often correct on train.
``frequent_option``
    Multiple choice: the option whose text is offered most often on train.
``longest_option``
    Multiple choice: the longest option (the first one on ties).
``often_correct_option``
    Multiple choice: the option whose text is correct most often, relative to how often
    it is offered, on train.

Chance is ``1 / number of options`` for multiple choice (per question, averaged),
``1/2`` for yes/no; for open
questions the reference is the *answer prior* (the most frequent train answer of the
group): a blind model always reaches it, so what is audited is how much the question
text adds to it.  ``excess_pp`` is the best baseline minus chance in percentage points.
A recipe may declare a task's chance (``audit.chance``) when the question itself leaves
fewer answers than it offers — e.g. a longitudinal question that gives the prior history —
and may exempt a task from the verdict with a stated reason (``audit.ignore``; the task is
still reported, with the reason).

Verdicts weigh evidence, not noise: a group is ``ok`` when its best baseline is within
``margin_pp`` of chance, or when the excess is not statistically clear — the lower end of
the 95 % Wilson interval of the baseline's accuracy is not above chance + ``margin_pp``
(on a few dozen questions one standard error is several points).  Otherwise it is
``warn``, or ``fail`` when the excess also exceeds ``fail_pp``.  Every group reports its
point estimate, interval and ``within_margin``.  The corpus
verdict is the worst of the groups that decide it: every split but ``train`` (or the
recipe's ``audit.splits`` and ``audit.configs``) with at least ``min_questions``
questions — smaller groups are reported with their interval, and decide only when they
fail.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping

from pipeline.qa.options import LETTERS

BASELINES = ("question_majority", "answer_position", "frequent_option", "longest_option",
             "often_correct_option", "learned_text")
DEFAULTS = {"margin_pp": 3.0, "fail_pp": 10.0, "min_questions": 100, "on": "warn",
            "chance": {}, "configs": None, "splits": None, "ignore": {}, "learn_from": {}}
SEP = "\x1f"


@functools.lru_cache(maxsize=1 << 16)  # a unit's questions repeat their texts: hash each once
def _h(text: str) -> str:
    """Short texts as they are; longer ones as a 16-hex digest (keeps unit counts small
    when texts are unique, e.g. questions that quote a box)."""
    if len(text) <= 16:
        return text
    return "#" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _group_key(config: str, split: str, task: str, qtype: str) -> str:
    return SEP.join((config, split, task, qtype))


def _split_key(key: str) -> tuple[str, str, str, str]:
    config, split, task, qtype = key.split(SEP)
    return config, split, task, qtype


def _add(table: dict, key, n: int = 1) -> None:
    table[key] = table.get(key, 0) + n


def partial_counts(config: str, rows: Iterable[Mapping]) -> dict:
    """Counts of one unit's QA rows (dicts with split, task, question_type, question,
    options, answer); mergeable with :func:`merge`, JSON-serialisable."""
    out: dict[str, dict] = {}
    for r in rows:
        _count_row(out, config, r["split"], r["task"], r["question_type"], r["question"],
                   r.get("options") or [], r["answer"])
    return out


def partial_counts_columns(config: str, table) -> dict:
    """:func:`partial_counts` for an Arrow table (``choices`` or ``options`` column)."""
    opt_col = "choices" if "choices" in table.column_names else "options"
    cols = [table[c].to_pylist() for c in ("split", "task", "question_type", "question",
                                            opt_col, "answer")]
    # equal rows counted once, with their number (a tree unit's ten questions an image
    # repeat their texts): the same counts, first seen first
    cols[4] = [tuple(o) if o else () for o in cols[4]]
    out: dict[str, dict] = {}
    for (split, task, qtype, question, options, answer), n in Counter(zip(*cols)).items():
        _count_row(out, config, split, task, qtype, question, list(options), answer, n)
    return out


def _count_row(out, config, split, task, qtype, question, options, answer, n: int = 1) -> None:
    """Count ``n`` equal rows."""
    g = out.setdefault(_group_key(config, split, task, qtype), {
        "n": 0, "answers": {}, "question_answer": {}, "positions": {}, "offered": {},
        "correct": {}, "longest_correct": 0, "option_sets": {}})
    g["n"] += n
    answer_h = _h(answer)
    _add(g["answers"], answer_h, n)
    _add(g["question_answer"], _h(question) + SEP + answer_h, n)
    if qtype == "multiple_choice" and options:
        pos = LETTERS.index(answer) if answer in LETTERS else -1
        _add(g["positions"], answer, n)
        hashed = [_h(o) for o in options]
        for o in hashed:
            _add(g["offered"], o, n)
        if 0 <= pos < len(options):
            _add(g["correct"], hashed[pos], n)
            longest = max(range(len(options)), key=lambda i: (len(options[i]), -i))
            g["longest_correct"] += n * int(longest == pos)
            _add(g["option_sets"], SEP.join([*hashed, str(pos)]), n)


def merge(parts: Iterable[Mapping]) -> dict:
    """Sum the units' partial counts."""
    out: dict[str, dict] = {}
    for part in parts:
        for key, g in part.items():
            m = out.setdefault(key, {"n": 0, "answers": {}, "question_answer": {}, "positions": {},
                                     "offered": {}, "correct": {}, "longest_correct": 0,
                                     "option_sets": {}})
            m["n"] += g["n"]
            m["longest_correct"] += g["longest_correct"]
            for field in ("answers", "question_answer", "positions", "offered", "correct",
                          "option_sets"):
                for k, v in g[field].items():
                    _add(m[field], k, v)
    return out


def entropy_bits(counts: Mapping[str, int]) -> float:
    n = sum(counts.values())
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in counts.values() if c)


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _argmax(counts: Mapping[str, int]) -> str | None:
    if not counts:
        return None
    return max(sorted(counts), key=lambda k: counts[k])


def _baselines(train: Mapping | None, test: Mapping, qtype: str) -> dict:
    """Accuracy of each baseline learned on ``train`` and scored on ``test``."""
    n = test["n"]
    out = dict.fromkeys(BASELINES)
    if not n:
        return out
    train = train or {"answers": {}, "question_answer": {}, "positions": {}, "offered": {},
                      "correct": {}}
    prior = _argmax(train["answers"])
    # question majority: per text the most frequent train answer
    per_text: dict[str, Counter] = {}
    for k, v in train["question_answer"].items():
        text, answer = k.rsplit(SEP, 1)
        per_text.setdefault(text, Counter())[answer] += v
    majority = {t: _argmax(c) for t, c in per_text.items()}
    hits = 0
    for k, v in test["question_answer"].items():
        text, answer = k.rsplit(SEP, 1)
        guess = majority.get(text, prior)
        hits += v * (guess == answer)
    out["question_majority"] = hits / n
    if qtype == "multiple_choice" and test["option_sets"]:
        n_mc = sum(test["option_sets"].values())
        letter = _argmax(train["positions"])
        out["answer_position"] = test["positions"].get(letter, 0) / n_mc if letter else None
        out["longest_option"] = test["longest_correct"] / n_mc
        offered, correct = train["offered"], train["correct"]
        # each option's rate of being correct when offered, once an option (0.0 unoffered)
        rate = {o: correct.get(o, 0) / c for o, c in offered.items() if c}
        freq_hits = rate_hits = 0.0
        for k, v in test["option_sets"].items():
            *options, pos = k.split(SEP)
            pos = int(pos)
            freq_hits += v * _pick_share([offered.get(o, 0) for o in options], pos)
            rate_hits += v * _pick_share([rate.get(o, 0.0) for o in options], pos)
        out["frequent_option"] = freq_hits / n_mc
        out["often_correct_option"] = rate_hits / n_mc
    return out


def _pick_share(scores: list, pos: int) -> float:
    """Credit of picking the best-scoring option (``scores``, one an option) when option
    ``pos`` is correct: 1/k when k options tie at the top."""
    best = max(scores)
    return (scores[pos] == best) / scores.count(best)


def audit(merged: Mapping, settings: Mapping | None = None, learned: Mapping | None = None) -> dict:
    """Score every group of the merged counts; returns the manifest's ``audit`` section.

    ``learned`` is :func:`pipeline.qa.learned.learned_baseline`'s result (``(config, split,
    task, question_type)`` -> ``{accuracy, scored, train, …}``); without it the
    ``learned_text`` baseline is not reported."""
    conf = DEFAULTS | dict(settings or {})
    margin, fail_pp = float(conf["margin_pp"]), float(conf["fail_pp"])
    groups = []
    for key in sorted(merged, key=lambda k: _split_key(k)):
        config, split, task, qtype = _split_key(key)
        g = merged[key]
        train = merged.get(_group_key(conf["learn_from"].get(config, config), "train", task, qtype))
        base = _baselines(train, g, qtype)
        lr = (learned or {}).get((config, split, task, qtype))
        base["learned_text"] = lr["accuracy"] if lr else None
        if task in conf["chance"]:
            chance, reference = float(conf["chance"][task]), "declared"
        elif qtype == "multiple_choice" and g["option_sets"]:
            # per question 1 / its number of options (a CT anatomy question may offer two)
            weighted = sum(v / (len(k.split(SEP)) - 1) for k, v in g["option_sets"].items())
            chance, reference = weighted / sum(g["option_sets"].values()), "uniform"
        elif qtype == "multiple_choice":
            chance, reference = 1.0 / len(LETTERS), "uniform"
        elif qtype == "closed":
            chance, reference = 0.5, "uniform"
        else:
            prior = _argmax(train["answers"]) if train else None
            chance = g["answers"].get(prior, 0) / g["n"] if prior else 0.0
            reference = "prior"
        scored = {k: v for k, v in base.items() if v is not None}
        # on a tie the heuristic (by name) is named, the learned baseline last
        best_name = max(sorted(scored, key=lambda k: (k == "learned_text", k)),
                        key=lambda k: scored[k]) if scored else None
        best = scored.get(best_name, 0.0) if best_name else 0.0
        excess = 100.0 * (best - chance)
        n_best = lr["scored"] if best_name == "learned_text" and lr else g["n"]
        low, high = wilson(best * n_best, n_best)
        clear = low * 100.0 > 100.0 * chance + margin  # the excess is not sampling noise
        if excess <= margin or not clear:
            verdict = "ok"
        elif excess > fail_pp:
            verdict = "fail"
        else:
            verdict = "warn"
        yes = g["answers"].get("yes", 0) + g["answers"].get("no", 0)
        groups.append({
            "config": config, "split": split, "task": task, "question_type": qtype,
            "n": g["n"], "chance": round(chance, 4), "reference": reference,
            "answer_entropy_bits": round(entropy_bits(g["answers"]), 4),
            "max_entropy_bits": round(math.log2(len(g["answers"])) if g["answers"] else 0.0, 4),
            "distinct_answers": len(g["answers"]),
            "yes_rate": round(g["answers"].get("yes", 0) / yes, 4) if qtype == "closed" and yes else None,
            "baselines": {k: (round(v, 4) if v is not None else None) for k, v in base.items()},
            "best_baseline": best_name,
            **({"learned_text": {"scored": lr["scored"], "train": lr["train"]}} if lr else {}),
            "interval": [round(low, 4), round(high, 4)],
            "excess_pp": round(excess, 2),
            "within_margin": excess <= margin,
            "verdict": verdict,
        })
    worst = "ok"
    for g in groups:
        if g["task"] in conf["ignore"]:
            g["decides"], g["note"] = False, str(conf["ignore"][g["task"]])
            continue
        g["decides"] = bool(
            (g["split"] in conf["splits"] if conf["splits"] else g["split"] != "train")
            and (g["config"] in conf["configs"] if conf["configs"] else True)
            and (g["n"] >= int(conf["min_questions"]) or g["verdict"] == "fail"))
        if not g["decides"]:
            continue
        if g["verdict"] == "fail" or (g["verdict"] == "warn" and worst == "ok"):
            worst = g["verdict"]
    return {"margin_pp": margin, "fail_pp": fail_pp, "min_questions": int(conf["min_questions"]),
            "on": conf["on"], "chance": dict(conf["chance"]), "configs": conf["configs"],
            "splits": conf["splits"], "ignore": dict(conf["ignore"]),
            "learn_from": dict(conf["learn_from"]), "learned": learned is not None, "verdict": worst,
            "groups": groups}


def summary_lines(result: Mapping, splits: Iterable[str] = ("test",)) -> list[str]:
    """A short text table of the audited groups (for the build summary): the best baseline,
    and the learned text-only one beside it (``-`` where it was not run)."""
    wanted = set(splits)
    lines = [f"shortcut audit (blind baselines vs chance; margin {result['margin_pp']:g} pp): "
             f"{result['verdict']}"]
    for g in result["groups"]:
        if g["split"] not in wanted:
            continue
        best = g["best_baseline"] or "-"
        acc = g["baselines"].get(best) if g["best_baseline"] else None
        learned = g["baselines"].get("learned_text")
        low, high = g["interval"]
        lines.append(
            f"  {g['config']:<9} {g['split']:<10} {g['task']:<28} {g['question_type']:<15} "
            f"n={g['n']:<7} chance {100 * g['chance']:5.1f}%  best {best:<20} "
            f"{100 * (acc or 0):5.1f}% [{100 * low:4.1f}-{100 * high:5.1f}]  "
            f"{g['excess_pp']:+6.1f} pp  {g['verdict']:<4}  learned "
            + (f"{100 * learned:5.1f}%" if learned is not None else "    -")
            + ("" if g.get("decides", True) else "  (not deciding" + (
                ": " + g["note"].split(":")[0] if g.get("note") else "") + ")"))
    return lines
