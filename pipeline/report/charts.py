"""Charts as plain data: each chart of the report is first reduced to a :class:`Chart`.

A chart's ``spec`` holds everything its drawing shows (values, labels as shown,
titles, figure size in inches); :meth:`Chart.key`, its sha256, also covers
:data:`CHART_VERSION`, the drawing constants and the matplotlib, Pillow and numpy
versions, so the report's cache (:mod:`pipeline.report.chart_cache`) can serve a
chart without importing matplotlib.  The drawing itself is
:mod:`pipeline.report.drawing`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.core.keys import installed_version
from pipeline.report.stats import AnswerStats, top_items

# Part of every chart's cache key: bump it with any change to the drawing code
# (pipeline.report.drawing) that can change a chart's pixels (the specs, the constants below,
# DPI and the library versions are hashed anyway).  A forgotten bump serves charts drawn by the
# old code.
CHART_VERSION = 2
CHART_RC = {"font.size": 9, "axes.titlesize": 10, "font.family": "DejaVu Sans"}
CHART_LIBRARIES = ("matplotlib", "Pillow", "numpy")
DPI = 100
PAD_PT = 4.0  # around the figure and between panels, in points
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6",
           "#9d755d", "#bab0ac", "#eeca3b"]
#: The kinds of chart, each drawn by ``pipeline.report.drawing.DRAW[kind]``.
CHART_KINDS = ("answers", "barh", "hist", "scatter", "shares", "stacked")
TOP_ANSWERS = 8


@dataclass(frozen=True)
class Chart:
    """One chart as plain data: ``kind`` names its drawing function (one of
    :data:`CHART_KINDS`); ``spec`` holds everything that function draws (values, labels as
    shown, titles, figure size in inches), JSON-serialisable.

    The spec is the whole input of the drawing: :meth:`key` hashes it, so a value drawn but
    left out of it would let a cached chart go stale.
    """

    kind: str
    spec: dict

    def __post_init__(self):
        if self.kind not in CHART_KINDS:
            raise ValueError(f"chart: kind {self.kind!r} is not one of {sorted(CHART_KINDS)}")

    def key(self) -> str:
        """sha256 of the chart version, the drawing libraries' versions, the drawing constants
        (DPI, rc, padding, palette) and the spec."""
        payload = {"chart": CHART_VERSION, "libraries": library_versions(), "dpi": DPI,
                   "rc": CHART_RC, "pad_pt": PAD_PT, "palette": PALETTE, "kind": self.kind,
                   "spec": self.spec}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that draw and encode charts (no import needed)."""
    return {dist: installed_version(dist) for dist in CHART_LIBRARIES}


def clip_text(text, n: int) -> str:
    """``text`` cut to ``n`` characters, the last one an ellipsis when cut."""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _short(text, n: int = 32) -> str:
    """Shortened text for a plot label; ``$`` escaped so corpus text never turns into mathtext."""
    return clip_text(text, n).replace("$", r"\$")


def _plain(value):
    """A number as a JSON-ready Python int or float (numpy scalars included)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def barh_chart(rows: list[tuple[str, float]], title: str, xlabel: str, fmt: str = "{:,.0f}") -> Chart:
    return Chart("barh", {"size": [9, 0.8 + 0.24 * max(1, len(rows))],
                          "labels": [_short(r[0], 48) for r in rows],
                          "values": [_plain(r[1]) for r in rows],
                          "title": title, "xlabel": xlabel, "fmt": fmt})




def stacked_chart(categories: list[str], series: list[tuple[str, list[float]]], title: str,
                  xlabel: str) -> Chart:
    return Chart("stacked", {"size": [9, 1.0 + 0.28 * max(1, len(categories))],
                             "categories": [_short(c, 48) for c in categories],
                             "series": [[_short(name, 24), [_plain(v) for v in values]]
                                        for name, values in series],
                             "title": title, "xlabel": xlabel})




def shares_chart(yes_rows: list[tuple[str, float, float]], mc_rows: list[tuple[str, list[float]]],
                 letters: list[str], config: str) -> Chart:
    """Closed questions: yes/no share per task; multiple choice: share of each correct letter."""
    panels = []
    if yes_rows:
        panels.append({"names": [_short(r[0], 30) for r in yes_rows],
                       "parts": [["yes", [_plain(r[1]) for r in yes_rows]],
                                 ["no", [_plain(r[2]) for r in yes_rows]]],
                       "uniform": 50, "title": f"{config}: closed, yes / no share"})
    if mc_rows:
        panels.append({"names": [_short(r[0], 30) for r in mc_rows],
                       "parts": [[x, [_plain(r[1][i]) for r in mc_rows]] for i, x in enumerate(letters)],
                       "uniform": 100.0 / max(1, len(letters)),
                       "title": f"{config}: multiple choice, correct letter share"})
    return Chart("shares", {"size": [10, 1.3 + 0.3 * max(len(yes_rows), len(mc_rows))],
                            "panels": panels, "xlabel": "% of questions (dashed: uniform)"})




def answers_chart(groups: list[tuple[str, AnswerStats]]) -> Chart:
    """One small panel per (task, question type): the top answers' shares, or a note when the
    group's answers are open-ended (more distinct answers than half its questions)."""
    panels = []
    for name, st in groups:
        top = top_items(st.answers, TOP_ANSWERS)
        distinct = len(st.answers)
        panel = {"title": f"{_short(name, 38)} (n={st.n:,})"}
        if st.n >= 20 and distinct > 0.5 * st.n:
            panel["note"] = (f"open-ended:\n{distinct:,}{'+' if st.pruned else ''} distinct "
                             f"answers\namong {st.n:,}")
        else:
            panel["labels"] = [_short(a, 22) for a, _ in top]
            panel["shares"] = [100.0 * n / max(1, st.n) for _, n in top]
        panels.append(panel)
    return Chart("answers", {"size": [10, 2.1 * math.ceil(len(groups) / 3)], "cols": 3, "panels": panels,
                             "xlabel": "% of the group's questions (top answers)"})




def hist_chart(panels: list[tuple[np.ndarray, np.ndarray, str, str, bool]], title: str) -> Chart:
    """Histogram panels from precomputed ``(counts, edges, xlabel, title, log_x)``, each cut to
    its occupied range."""
    out = []
    for counts, edges, xlabel, sub, log_x in panels:
        nonzero = np.flatnonzero(counts)
        if nonzero.size:
            first, last = int(nonzero[0]), int(nonzero[-1]) + 1
            counts, edges = counts[first:last], edges[first:last + 1]
        out.append({"counts": [_plain(c) for c in counts], "edges": [_plain(e) for e in edges],
                    "xlabel": xlabel, "title": sub, "log_x": bool(log_x)})
    return Chart("hist", {"size": [9, 3.0], "title": title, "panels": out})




def scatter_chart(points: Counter, title: str, xlabel: str, ylabel: str) -> Chart:
    items = sorted(points.items(), key=lambda kv: (-kv[1], kv[0]))
    return Chart("scatter", {"size": [6, 4.2],
                             "points": [[_plain(x), _plain(y), _plain(n)] for (x, y), n in items],
                             "title": title, "xlabel": xlabel, "ylabel": ylabel})


