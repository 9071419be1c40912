"""The report's dead-letter section: rejections by stage and reason, never a source path.

``dead_letters/`` is operator-only; the report is part of the corpus.  Only a
record's ``stage``, ``reason`` and ``error_type`` are read, and a text that does not
look like a reason code (it could carry a path or free text) is withheld.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from pipeline.io.corpus import Corpus
from pipeline.report.contents import STAGE_ORDER
from pipeline.report.html import fmt_count, table

_REASON = re.compile(r"^[A-Za-z0-9_.:\- ]{1,80}$")
FIELDS = ("stage", "reason", "error_type")


def safe_reason(reason) -> str:
    """A reason code, or a placeholder when the text could carry a path or free text."""
    text = "" if reason is None else str(reason)
    return text if _REASON.match(text) and "/" not in text else "(withheld: not a reason code)"


def count_dead_letters(corpus: Corpus) -> Counter | None:
    """(stage, reason, error type) -> count from the dead-letter file; None when it is absent.

    Only these three fields are read: source paths and messages never reach the report.
    """
    if not corpus.has_dead_letters():
        return None
    counts: Counter = Counter()
    for values in corpus.read_dead_letters(FIELDS):
        if values is None:
            counts[("?", "(unparsable line)", "?")] += 1
            continue
        counts[tuple(safe_reason(v) for v in values)] += 1
    return counts


def dead_letters_section(manifest: Mapping, letters: Counter | None) -> str:
    out = ['<section id="dead-letters"><h2>Dead letters</h2>',
           '<p class="note">Rejected inputs by stage and reason. Reasons and counts only: the '
           "dead-letter file itself (with source paths and messages) is for the operator and is "
           "never shown here.</p>"]
    rows = []
    for stage, c in sorted(manifest.get("counts", {}).items(), key=lambda kv: (STAGE_ORDER.get(kv[0], 9), kv[0])):
        for reason, n in sorted(c.get("rejected_by_reason", {}).items()):
            rows.append([stage, safe_reason(reason), fmt_count(n)])
    out.append("<h3>From the manifest</h3>")
    out.append(table(["stage", "reason", "rejected"], rows, numeric=(2,)) if rows
               else "<p>No rejections recorded in the manifest.</p>")
    out.append("<h3>From the dead-letter file</h3>")
    if letters is None:
        out.append("<p>No dead-letter file in this corpus.</p>")
    elif not letters:
        out.append("<p>The dead-letter file is empty: nothing was rejected.</p>")
    else:
        rows = [[s, r, e, fmt_count(n)] for (s, r, e), n in sorted(
            letters.items(), key=lambda kv: (STAGE_ORDER.get(kv[0][0], 9), kv[0]))]
        out.append(table(["stage", "reason", "error type", "records"], rows, numeric=(3,)))
        total_manifest = sum(sum(c.get("rejected_by_reason", {}).values())
                             for c in manifest.get("counts", {}).values())
        total_file = sum(letters.values())
        if total_manifest != total_file:
            out.append(f'<p class="note">The file holds {total_file:,} records, the manifest counts '
                       f"{total_manifest:,} rejections.</p>")
    out.append("</section>")
    return "\n".join(out)
