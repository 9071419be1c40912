"""Charts drawn with matplotlib: :func:`render_chart` turns a :class:`~pipeline.report.charts.Chart`
into PNG bytes.

Imported only on a chart cache miss (matplotlib takes 0.5-1.2 s to import, measured): a
report whose charts are all cached never imports this module.  Determinism: each figure is
drawn once by the Agg canvas with the default style, :data:`~pipeline.report.charts.CHART_RC`,
fixed size and dpi, on a layout computed from its measured labels (:func:`_arrange`), and
encoded by Pillow without metadata.  Any change here that can change a chart's pixels needs a
bump of :data:`~pipeline.report.charts.CHART_VERSION`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation
from PIL import Image

from pipeline.core.collector import collector_paused
from pipeline.report.charts import CHART_KINDS, CHART_RC, DPI, PAD_PT, PALETTE, Chart


def render_chart(chart: Chart) -> bytes:
    """Draw ``chart`` once on a fixed layout and encode it as PNG (RGB, no metadata).

    The figure uses the default style, :data:`~pipeline.report.charts.CHART_RC` and the Agg
    canvas; axes are placed by :func:`_arrange` from the measured sizes of their labels, so no
    layout engine draws the figure a second time.
    """
    with collector_paused(), matplotlib.style.context("default"), matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=tuple(chart.spec["size"]), dpi=DPI)
        canvas = FigureCanvasAgg(fig)
        grid = DRAW[chart.kind](fig, chart.spec)
        _arrange(fig, canvas.get_renderer(), grid)
        canvas.draw()
        img = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Grid:
    """Axes of a figure on a ``rows`` × ``cols`` grid, with an optional figure title and x label."""

    axes: list  # (Axes, row, column)
    rows: int = 1
    cols: int = 1
    header: object = None  # Text above every panel
    footer: object = None  # Text below every panel


def _arrange(fig, renderer, grid: Grid) -> None:
    """Place ``grid``'s axes: equal panels, each column and row as wide as its labels need.

    What each panel needs outside its frame (tick labels, axis labels, title, a legend placed
    right of the axes) is measured with the canvas's renderer; the measurements stay cached
    for the single draw that follows.  Numeric ticks depend on a panel's size, so the panels
    are measured again where they were placed, until nothing moves (at most three passes).
    Sizes in pixels.
    """
    width, height = fig.bbox.width, fig.bbox.height
    pt = fig.dpi / 72.0
    pad = PAD_PT * pt
    head = foot = pad
    if grid.header is not None:
        head += grid.header.get_window_extent(renderer).height + pad
        grid.header.set_y(1.0 - pad / height)
    if grid.footer is not None:
        foot += grid.footer.get_window_extent(renderer).height + pad
        grid.footer.set_y(pad / height)
    placed = None
    for _ in range(3):
        need = [tuple(round(v, 2) for v in _outside(ax, renderer, pt, width / grid.cols))
                for ax, _, _ in grid.axes]
        if need == placed:
            return
        placed = need
        left, right = [0.0] * grid.cols, [0.0] * grid.cols
        top, bottom = [0.0] * grid.rows, [0.0] * grid.rows
        for (_, r, c), (lo, ro, bo, to, _) in zip(grid.axes, need):
            left[c], right[c] = max(left[c], lo), max(right[c], ro)
            bottom[r], top[r] = max(bottom[r], bo), max(top[r], to)
        panel_w = (width - 2 * pad - sum(left) - sum(right) - (grid.cols - 1) * pad) / grid.cols
        for (_, _, c), n in zip(grid.axes, need):  # a title wider than its panel widens the margins
            extra = (n[4] - panel_w) / 2
            left[c], right[c] = max(left[c], extra), max(right[c], extra)
        panel_w = max(1.0, (width - 2 * pad - sum(left) - sum(right) - (grid.cols - 1) * pad) / grid.cols)
        panel_h = max(1.0, (height - head - foot - sum(top) - sum(bottom) - (grid.rows - 1) * pad)
                      / grid.rows)
        for ax, r, c in grid.axes:
            x0 = pad + sum(left[:c]) + sum(right[:c]) + c * (panel_w + pad) + left[c]
            y1 = height - head - sum(top[:r]) - sum(bottom[:r]) - r * (panel_h + pad) - top[r]
            ax.set_position([x0 / width, (y1 - panel_h) / height, panel_w / width, panel_h / height])


def _outside(ax, renderer, pt: float, cell_w: float) -> tuple[float, float, float, float, float]:
    """Pixels ``ax`` needs left, right, below and above its frame, and its title's width."""
    rc = matplotlib.rcParams

    def size(text):
        if not text.get_visible() or not text.get_text():
            return 0.0, 0.0
        box = text.get_window_extent(renderer)
        return box.width, box.height

    def tick_labels(axis, ends_only: bool):
        lo, hi = sorted(axis.get_view_interval())
        eps = (hi - lo) * 1e-9
        axis.get_majorticklabels()  # sets the labels of the current ticks
        shown = [t.label1 for t in axis.get_major_ticks()
                 if lo - eps <= t.get_loc() <= hi + eps and t.label1.get_visible() and t.label1.get_text()]
        return [size(t) for t in (shown[:1] + shown[-1:] if ends_only and shown else shown)]

    # x tick labels share one line height: only the outermost ones (overhang) need measuring
    ys, xs = tick_labels(ax.yaxis, False), tick_labels(ax.xaxis, True)
    left = max((w for w, _ in ys), default=0.0)
    if left:
        left += (rc["ytick.major.size"] + rc["ytick.major.pad"]) * pt
    label_w, _ = size(ax.yaxis.label)
    if label_w:
        left += label_w + rc["axes.labelpad"] * pt
    bottom = max((h for _, h in xs), default=0.0)
    if bottom:
        bottom += (rc["xtick.major.size"] + rc["xtick.major.pad"]) * pt
    _, label_h = size(ax.xaxis.label)
    if label_h:
        bottom += label_h + rc["axes.labelpad"] * pt
    overhang = max((w for w, _ in xs), default=0.0) / 2  # end tick labels are centred on the ends
    left, right = max(left, overhang), overhang
    title_w, title_h = size(ax.title)
    top = title_h + rc["axes.titlepad"] * pt if title_h else 0.0
    legend = ax.get_legend()
    if legend is not None:  # placed at x = 1.01 (axes fraction) + borderaxespad, centre left
        right = max(right, 0.01 * cell_w + legend.borderaxespad * legend.prop.get_size_in_points() * pt
                    + legend.get_window_extent(renderer).width)
    return left, right, bottom, top, title_w


def _draw_barh(fig, spec) -> Grid:
    ax = fig.add_subplot()
    n = len(spec["labels"])
    values = spec["values"][::-1]
    bars = ax.barh(range(n), values, color=PALETTE[0])
    ax.set_yticks(range(n), spec["labels"][::-1])
    ax.bar_label(bars, labels=[spec["fmt"].format(v) for v in values], padding=3, fontsize=8)
    ax.set_title(spec["title"])
    ax.set_xlabel(spec["xlabel"])
    ax.margins(x=0.12)
    return Grid([(ax, 0, 0)])


def _draw_stacked(fig, spec) -> Grid:
    ax = fig.add_subplot()
    n = len(spec["categories"])
    left = np.zeros(n)
    for i, (name, values) in enumerate(spec["series"]):
        vals = np.asarray(values, float)[::-1]
        ax.barh(range(n), vals, left=left, label=name, color=PALETTE[i % len(PALETTE)])
        left += vals
    ax.set_yticks(range(n), spec["categories"][::-1])
    ax.set_title(spec["title"])
    ax.set_xlabel(spec["xlabel"])
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return Grid([(ax, 0, 0)])


def _draw_shares(fig, spec) -> Grid:
    grid = Grid([], cols=len(spec["panels"]))
    for idx, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(1, len(spec["panels"]), idx + 1)
        n = len(panel["names"])
        left = np.zeros(n)
        for i, (name, vals) in enumerate(panel["parts"]):
            v = np.asarray(vals, float)[::-1]
            ax.barh(range(n), v, left=left, color=PALETTE[i % 8], label=name)
            left += v
        ax.set_yticks(range(n), panel["names"][::-1])
        ax.set_xlim(0, 100)
        ax.axvline(panel["uniform"], color="#222", lw=0.9, ls="--")
        ax.set_title(panel["title"])
        ax.set_xlabel(spec["xlabel"])
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        grid.axes.append((ax, 0, idx))
    return grid


def _draw_answers(fig, spec) -> Grid:
    cols = spec["cols"]
    rows = math.ceil(len(spec["panels"]) / cols)
    grid = Grid([], rows=rows, cols=cols)
    for idx, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(rows, cols, idx + 1)
        if "note" in panel:
            ax.text(0.5, 0.5, panel["note"], ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            n = len(panel["labels"])
            ax.barh(range(n), panel["shares"][::-1], color=PALETTE[0])
            ax.set_yticks(range(n), panel["labels"][::-1], fontsize=7.5)
            ax.set_xlim(0, 100)
            ax.tick_params(axis="x", labelsize=7.5)
        ax.set_title(panel["title"], fontsize=8.5)
        grid.axes.append((ax, idx // cols, idx % cols))
    grid.footer = fig.supxlabel(spec["xlabel"], fontsize=8.5, va="bottom")
    return grid


def _draw_hist(fig, spec) -> Grid:
    grid = Grid([], cols=len(spec["panels"]))
    grid.header = fig.suptitle(spec["title"], fontsize=10, va="top")
    for idx, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(1, len(spec["panels"]), idx + 1)
        ax.stairs(panel["counts"], panel["edges"], fill=True, color=PALETTE[0])
        if panel["log_x"]:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(UnicodeLogFormatter())
            ax.xaxis.set_minor_formatter(UnicodeLogFormatter())
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel("boxes")
        ax.set_title(panel["title"], fontsize=9)
        grid.axes.append((ax, 0, idx))
    return grid


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class UnicodeLogFormatter(LogFormatterSciNotation):
    """Matplotlib's log-axis tick labels (``10^k``, ``c×10^k``) written as plain Unicode.

    The labels are the default formatter's; only their mathtext markup is rewritten, which
    spares building matplotlib's mathtext parser (a large share of a cold chart's time).
    """

    def __call__(self, x, pos=None):
        label = super().__call__(x, pos)
        m = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
        if not m:
            return label
        body = m.group(1).replace(r"\times", "×")
        return re.sub(r"\^\{(-?\d+)\}", lambda e: e.group(1).translate(_SUPERSCRIPT), body)


def _draw_scatter(fig, spec) -> Grid:
    ax = fig.add_subplot()
    points = spec["points"]
    total = max(1, sum(n for _, _, n in points))
    ax.scatter([p[0] for p in points], [p[1] for p in points],
               s=[20 + 600 * n / total for _, _, n in points], alpha=0.6, color=PALETTE[0],
               edgecolors="#1f3b5a")
    for x, y, n in points[:6]:
        ax.annotate(f"{x:g}×{y:g} ({n:,})", (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    ax.set_xlabel(spec["xlabel"])
    ax.set_ylabel(spec["ylabel"])
    ax.set_title(spec["title"])
    ax.margins(0.25)
    return Grid([(ax, 0, 0)])


DRAW: dict[str, Callable] = {"barh": _draw_barh, "stacked": _draw_stacked, "shares": _draw_shares,
                             "answers": _draw_answers, "hist": _draw_hist, "scatter": _draw_scatter}
if set(DRAW) != set(CHART_KINDS):  # a chart kind without a drawing (or the reverse)
    raise RuntimeError(f"report drawing: kinds {sorted(DRAW)} != CHART_KINDS {sorted(CHART_KINDS)}")
