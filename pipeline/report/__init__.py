"""The corpus report: ``OUTPUT/report/index.html``, one self-contained page.

:func:`write_report` reads only the corpus (through :class:`pipeline.io.corpus.Corpus`)
— ``manifest.json``, the Parquet configs shard by shard with just the columns each
statistic needs, and the dead-letter file for its *reasons* — and writes a page with
inline CSS, every image inline as a base64 PNG ``data:`` URI, and no JavaScript.

What it never does:

* show a source path, file name or dead-letter message: ``dead_letters/`` is
  operator-only, the report is part of the corpus (:mod:`~pipeline.report.dead_letters`);
* load every image: statistics read metadata columns (:mod:`~pipeline.report.stats`);
  pixels are read only for the gallery, from the head of the first non-empty shard of
  each split of the image-bearing config (:mod:`~pipeline.report.gallery`).  Memory is
  bounded by one shard's metadata columns, whatever the corpus size.

Determinism: the same corpus gives the same bytes.  No timestamps; every listing is
sorted, ties broken by name; figures are drawn once on a fixed layout
(:mod:`~pipeline.report.drawing`) and kept in a cache that never changes the output
(:mod:`~pipeline.report.chart_cache`); gallery PNGs are encoded by Pillow without
metadata (:mod:`~pipeline.report.views`).

Modules: ``stats`` (statistics), ``charts`` (charts as data and their cache keys),
``drawing`` (matplotlib, on a cache miss only), ``chart_cache``, ``gallery`` (the
gallery's rows and questions), ``views`` (images with boxes drawn), ``html``
(building blocks), ``sections``, ``audit``, ``dead_letters`` and ``gallery_html``
(the page's sections), ``contents`` (corpus kinds and display orders).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.io.corpus import Corpus
from pipeline.report import alignment_cache
from pipeline.report.audit import audit_section
from pipeline.report.chart_cache import ChartCache, Plots
from pipeline.report.contents import QA_CONFIGS, corpus_kind
from pipeline.report.dead_letters import count_dead_letters, dead_letters_section
from pipeline.report.gallery import gallery_pool
from pipeline.report.gallery_html import gallery_section
from pipeline.report.html import CSS, esc
from pipeline.report.sections import (
    build_section,
    counts_section,
    distributions_section,
    header_section,
)
from pipeline.report.stats import Stats, scan_images, scan_qa, scan_volumes
from pipeline.schema.layout import REPORT

__all__ = ["REPORT", "Prepared", "prepare_report", "render_report", "write_report"]


def render_report(corpus_dir: str, log=None, cache: ChartCache | None = None,
                  prepared: Prepared | None = None, shards_verified: bool = False) -> str:
    """The report's HTML for the corpus at ``corpus_dir``.

    Reads the corpus; writes nothing but, when given a ``cache``, the charts and gallery
    views it had to draw (and, with ``shards_verified``, the alignment statistics:
    :mod:`~pipeline.report.alignment_cache`).  ``prepared``: its statistics, scanned
    beforehand by :func:`prepare_report` (used when they are of the same shards).
    """
    log = log or (lambda msg: None)
    corpus = Corpus(corpus_dir)
    manifest = corpus.manifest
    kind = corpus_kind(manifest, corpus.configs)
    qa_configs = [c for c in QA_CONFIGS if c in corpus.configs]
    if prepared is not None and prepared.matches(corpus, kind):
        stats, pool = prepared.stats, prepared.pool
    else:
        stats, pool = _scan(corpus, kind, qa_configs, log, shards_verified and cache is not None)
    plots = Plots(cache)
    name = (manifest.get("recipe") or {}).get("name", "?")
    body = [
        header_section(manifest, kind),
        '<nav><a href="#build">Build</a><a href="#counts">Counts</a><a href="#distributions">'
        'Distributions</a><a href="#audit">Shortcut audit</a><a href="#dead-letters">Dead letters</a>'
        '<a href="#gallery">Gallery</a></nav>',
        build_section(manifest),
        counts_section(corpus, stats, kind, plots, qa_configs),
        distributions_section(stats, kind, plots, qa_configs),
        audit_section(manifest),
        dead_letters_section(manifest, count_dead_letters(corpus)),
        gallery_section(pool, kind, log, cache),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>radvqa report — {esc(name)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _scan(corpus: Corpus, kind: str, qa_configs: list[str], log,
          trusted: bool = False) -> tuple[Stats, object]:
    """The statistics of every config (and the gallery's pool, its questions collected);
    ``trusted``: a tree's alignment statistics may come from :mod:`~pipeline.report.alignment_cache`."""
    stats = Stats()
    pool = gallery_pool(corpus, kind)
    for config in qa_configs:
        scan_qa(corpus, config, stats, log, pool if pool and config == pool.qa_config else None)
    if "images" in corpus.configs:
        scan_images(corpus, stats)
    if "alignment" in corpus.configs:
        alignment_cache.scan(corpus, stats, trusted=trusted)
    if "volumes" in corpus.configs:
        scan_volumes(corpus, stats)
    log("  statistics done")
    return stats, pool


@dataclass
class Prepared:
    """What :func:`prepare_report` did ahead: the statistics of ``configs``' shards."""

    kind: str
    configs: dict
    stats: Stats
    pool: object

    def matches(self, corpus: Corpus, kind: str) -> bool:
        return kind == self.kind and corpus.configs == self.configs


def prepare_report(corpus_dir: str, manifest: dict, log=None) -> Prepared:
    """The report's work that needs the shards but not the whole manifest, done ahead (the
    launcher runs it while a process of its pool fits the learned baseline's largest
    group): the statistics, and the counts' and distributions' charts drawn into the
    chart cache.  ``manifest``: the one the build will write, without its audit yet (its
    ``files`` list the shards).  :func:`write_report` given the result scans nothing
    again and finds the charts in the cache: the same page."""
    log = log or (lambda msg: None)
    corpus = Corpus(corpus_dir)
    vars(corpus)["manifest"] = manifest  # (a cached_property: this manifest, not the file's)
    kind = corpus_kind(manifest, corpus.configs)
    qa_configs = [c for c in QA_CONFIGS if c in corpus.configs]
    stats, pool = _scan(corpus, kind, qa_configs, log, trusted=True)  # shards just written
    plots = Plots(ChartCache(corpus, log))
    counts_section(corpus, stats, kind, plots, qa_configs)
    distributions_section(stats, kind, plots, qa_configs)
    return Prepared(kind, corpus.configs, stats, pool)


def write_report(corpus_dir: str, log=None, prepared: Prepared | None = None,
                 shards_verified: bool = False) -> str:
    """Write ``corpus_dir/report/index.html`` from the corpus alone; return its path.

    Parameters
    ----------
    corpus_dir
        A built corpus (local folder or a Beam filesystem URL) with its ``manifest.json``.
    log
        Optional ``callable(str)`` for progress lines.
    shards_verified
        The caller (a build) has just written or verified every shard the manifest lists:
        statistics remembered under their sha256 may be used (never for a corpus alone).
    prepared
        :func:`prepare_report`'s result, when the launcher made it ahead.
    """
    started = time.monotonic()
    log = log or (lambda msg: None)
    corpus = Corpus(corpus_dir)
    cache = ChartCache(corpus, log)
    page = render_report(corpus_dir, log, cache, prepared, shards_verified).encode("utf-8")
    path = corpus.write(REPORT, page)
    stale = cache.prune()
    log(f"  charts: {cache.hits} from the cache, {cache.misses} drawn, {len(stale)} stale removed")
    log(f"  wrote {len(page) / 1e6:.2f} MB in {time.monotonic() - started:.1f} s")
    return path
