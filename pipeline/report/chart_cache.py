"""The report's chart cache: PNGs by :meth:`~pipeline.report.charts.Chart.key`.

:func:`pipeline.report.write_report` keeps the PNG of every chart (and gallery view)
under ``OUTPUT/.radvqa/report-cache/<key>.png`` (build state, never published) and
deletes the entries the new report no longer uses; a chart whose key is there is
copied, without importing matplotlib.  The cache never changes the output: a stored
chart holds the bytes the same drawing produced.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.io.corpus import Corpus
from pipeline.report.charts import Chart
from pipeline.schema.layout import REPORT_CACHE_DIR

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ChartCache:
    """Chart PNGs by :meth:`Chart.key` under ``OUTPUT/.radvqa/report-cache/<key>.png``.

    A hit needs neither matplotlib nor drawing.  Entries are written atomically (temporary
    name, then rename) and read back only when whole (PNG signature and ``IEND``), so a
    killed write is a miss, never a broken chart.  :meth:`prune` deletes every entry the
    current report did not use: a corpus folder keeps only its current charts.  A cache that
    cannot be read or written costs time, never the report.
    """

    def __init__(self, corpus: Corpus, log: Callable[[str], None] | None = None):
        self.corpus = corpus
        self.log = log or (lambda msg: None)
        self.used: set[str] = set()
        self.hits = 0
        self.misses = 0
        self._stored: set[str] | None = None

    def _names(self) -> set[str]:
        if self._stored is None:  # one listing per report, not one existence check per chart
            try:
                self._stored = set(self.corpus.listdir(REPORT_CACHE_DIR))
            except OSError as err:
                self.log(f"  report cache: cannot list {REPORT_CACHE_DIR}: {err}")
                self._stored = set()
        return self._stored

    def get(self, key: str) -> bytes | None:
        self.used.add(key)
        name = f"{key}.png"
        if name not in self._names():
            self.misses += 1
            return None
        try:
            data = self.corpus.read_bytes(f"{REPORT_CACHE_DIR}/{name}")
        except OSError:
            data = b""
        if not (data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)):
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, key: str, png: bytes) -> None:
        self.used.add(key)
        try:
            self.corpus.write(f"{REPORT_CACHE_DIR}/{key}.png", png)
        except OSError as err:
            self.log(f"  report cache: cannot store {key}.png: {err}")
            return
        self._names().add(f"{key}.png")

    def prune(self) -> list[str]:
        """Delete every cache file the charts rendered since construction did not use."""
        keep = {f"{key}.png" for key in self.used}
        stale = sorted(n for n in self._names() if n not in keep)
        if stale:
            try:
                self.corpus.delete([f"{REPORT_CACHE_DIR}/{n}" for n in stale])
            except OSError as err:
                self.log(f"  report cache: cannot delete stale entries: {err}")
                return []
            self._stored = self._names() - set(stale)
        return stale


class Plots:
    """Chart PNGs: from the cache when a chart's key is stored there, else drawn (and stored)."""

    def __init__(self, cache: ChartCache | None = None):
        self.cache = cache

    def render(self, chart: Chart) -> bytes:
        if self.cache is None:
            return _draw(chart)
        key = chart.key()
        png = self.cache.get(key)
        if png is None:
            png = _draw(chart)
            self.cache.put(key, png)
        return png


def _draw(chart: Chart) -> bytes:
    """``chart`` drawn by :func:`pipeline.report.drawing.render_chart`."""
    # matplotlib: 0.5-1.2 s to import (measured), needed only when a chart is not in the cache
    from pipeline.report.drawing import render_chart

    return render_chart(chart)
