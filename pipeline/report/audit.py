"""The report's shortcut-audit section: the manifest's ``audit`` (by
:mod:`pipeline.qa.audit`) as a table of groups, failures first, with each blind
baseline explained."""

from __future__ import annotations

import math
from collections.abc import Mapping

from pipeline.io.corpus import split_key
from pipeline.report.contents import QTYPE_ORDER
from pipeline.report.html import esc, fmt_share, table

BASELINES = {  # as defined by pipeline.qa.audit: learned on train, scored on each split
    "question_majority": (
        "question majority",
        "for each exact question text, the answer most often given to it on train (texts unseen "
        "on train get the group's most frequent train answer): what a language model memorising "
        "the training questions would score, without looking at the image",
    ),
    "answer_position": (
        "answer position",
        "multiple choice: always the option letter most often correct on train",
    ),
    "frequent_option": (
        "frequent option",
        "multiple choice: the option whose text is offered most often on train",
    ),
    "longest_option": (
        "longest option",
        "multiple choice: the longest option text",
    ),
    "often_correct_option": (
        "often-correct option",
        "multiple choice: the option whose text is correct most often, relative to how often it "
        "is offered, on train",
    ),
    "learned_text": (
        "learned text-only",
        "a logistic regression trained on train that reads the question's words, word pairs and "
        "numbers (by position, as values and bins — a quoted box's coordinates, size and centre) "
        "and, for multiple choice, each option's text, position and the order of the options "
        "(never the image); it finds leaks nobody wrote a heuristic for. Open questions are "
        "compared with the answer prior; large groups are scored on a fixed hash-drawn sample "
        "(its interval is over that sample); train groups, which it learns from, show none",
    ),
}


def audit_section(manifest: Mapping) -> str:
    out = ['<section id="audit"><h2>Shortcut audit</h2>']
    audit = manifest.get("audit")
    if not isinstance(audit, Mapping):
        out.append('<p class="audit-missing"><b>The shortcut audit was not run for this corpus</b> '
                   "(the manifest has no <code>audit</code> entry). It measures how well blind "
                   "baselines — which never look at the image — answer the questions.</p></section>")
        return "\n".join(out)
    verdict = str(audit.get("verdict", "?"))
    margin = audit.get("margin_pp")
    out.append(f'<p>Overall verdict: <span class="{_verdict_class(verdict)}">&nbsp;{esc(verdict)}&nbsp;'
               f"</span> — margin {esc(margin)} percentage points above chance.</p>")
    fail_pp = audit.get("fail_pp")
    out.append(
        '<p class="note">Each row is one group of questions (config, split, task, question type). '
        "A baseline's accuracy is the share of the group's questions it answers correctly without "
        "ever looking at the image. <b>Chance</b> is the reference: <i>uniform</i> — one over the "
        "number of options for multiple choice, 1/2 for yes/no; <i>prior</i> — for open questions, "
        "the accuracy of always giving the group's most frequent train answer. <b>Excess</b> is the "
        "best baseline minus chance in percentage points: within the margin the group is "
        "<span class=\"v-ok\">ok</span>; above it <span class=\"v-warn\">warn</span>"
        + (f", or <span class=\"v-fail\">fail</span> when the excess passes {esc(fail_pp)} pp and the "
           "lower end of the best baseline's 95 % interval is above chance + margin" if fail_pp is not None
           else ", or <span class=\"v-fail\">fail</span>")
        + ". A model could score in a flagged group without using the image. Train rows are scored "
        "on the questions the baselines learned from; the overall verdict is taken over the other "
        "splits (listed first). Entropy is the answer distribution's entropy (bits) against its maximum for the "
        "number of distinct answers; the yes rate is for closed questions; a dash means the "
        "baseline does not apply to the question type.</p>")
    out.append("<dl class=\"meta\">" + "".join(
        f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in BASELINES.values()) + "</dl>")
    groups = [g for g in audit.get("groups") or [] if isinstance(g, Mapping)]
    if not groups:
        out.append("<p>The audit lists no groups.</p></section>")
        return "\n".join(out)
    extra = sorted({k for g in groups for k in (g.get("baselines") or {}) if k not in BASELINES})
    names = list(BASELINES) + extra
    severity = {"fail": 0, "warn": 1, "ok": 2}
    groups.sort(key=lambda g: (g.get("split") == "train", severity.get(str(g.get("verdict")), 3),
                               str(g.get("config")),
                               split_key(str(g.get("split"))), str(g.get("task")),
                               QTYPE_ORDER.get(g.get("question_type"), 9)))
    rows, classes = [], {}
    for r, g in enumerate(groups):
        base = g.get("baselines") or {}
        ent, mx = g.get("answer_entropy_bits"), g.get("max_entropy_bits")
        interval = g.get("interval")
        interval = (f"{_fmt_pct(interval[0])} – {_fmt_pct(interval[1])}"
                    if isinstance(interval, (list, tuple)) and len(interval) == 2 else "—")
        best = g.get("best_baseline")
        rows.append([g.get("config"), g.get("split"), g.get("task"), g.get("question_type"),
                     _fmt_int(g.get("n")), g.get("verdict"), _fmt_pp(g.get("excess_pp")),
                     _fmt_pct(g.get("chance")), g.get("reference"),
                     BASELINES[best][0] if best in BASELINES else (best or "—"), interval]
                    + [_fmt_pct(base.get(k)) for k in names]
                    + [f"{_fmt_num(ent)} / {_fmt_num(mx)}", _fmt_pct(g.get("yes_rate"))])
        classes[(r, 5)] = _verdict_class(str(g.get("verdict")))
        if best in names:
            classes[(r, 11 + names.index(best))] = "best"
    headers = (["config", "split", "task", "question type", "n", "verdict", "excess (pp)", "chance",
                "reference", "best baseline", "95 % interval (best)"]
               + [BASELINES[k][0] if k in BASELINES else k for k in names]
               + ["entropy (bits)", "yes rate"])
    numeric = [4, 6, 7, 10] + list(range(11, 11 + len(names) + 2))
    out.append('<div class="wide">' + table(headers, rows, numeric=numeric, classes=classes) + "</div>")
    out.append("</section>")
    return "\n".join(out)


def _verdict_class(verdict: str) -> str:
    return {"ok": "v-ok", "warn": "v-warn", "fail": "v-fail"}.get(verdict, "")


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt_pct(x) -> str:
    return fmt_share(x) if _is_num(x) else ("—" if x is None else str(x))


def _fmt_pp(x) -> str:
    return f"{float(x):+.1f}" if _is_num(x) else ("—" if x is None else str(x))


def _fmt_num(x) -> str:
    return f"{float(x):.2f}" if _is_num(x) else ("—" if x is None else str(x))


def _fmt_int(x) -> str:
    return f"{int(x):,}" if _is_num(x) else ("—" if x is None else str(x))
