"""A tree corpus's ``alignment`` statistics, remembered by its shards' sha256.

:func:`pipeline.report.stats.scan_alignment` reads every ``alignment`` shard's metadata
columns and the PNG headers of the first rows of each split: 0.3 s of CPU of a 2.9 s
regenerate of a 10K-image 224 px tree (measured), for numbers that a question template's
edit cannot change — those shards are kept byte for byte.  :func:`scan` keeps what it
added to the statistics in ``.radvqa/report-alignment-stats.json`` under a key of every
scanned shard's path and sha256 (as the manifest records them) and of the code that
scans (this module, ``stats.py``, ``core/imaging.py``, ``io/corpus.py``, the versions of
pyarrow, numpy and Pillow).
Any other shard, byte, shard list or code gives another key and the shards are scanned
again.  Only a build passes the digests (``write_report(..., shards_verified=True)``: it
has just written or verified every shard); ``radvqa report`` on a corpus alone always
scans, since its shards may have changed since their manifest was written.  The counts
are added back in the order the scan added them, so the report is the same bytes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pipeline.core import keys
from pipeline.io.corpus import Corpus
from pipeline.report.stats import Stats, scan_alignment
from pipeline.schema.layout import STATE_DIR

STATS_FILE = f"{STATE_DIR}/report-alignment-stats.json"
_PACKAGE = Path(__file__).resolve().parent.parent


@functools.cache
def _code() -> str:
    return keys.source_digest([_PACKAGE / p for p in ("report/alignment_cache.py", "report/stats.py",
                                                      "core/imaging.py", "io/corpus.py")],
                              root=_PACKAGE, dists=("pyarrow", "numpy", "Pillow"))


def stats_key(corpus: Corpus) -> str | None:
    """The key of the corpus's ``alignment`` shards (``None`` when one has no sha256)."""
    files = corpus.manifest.get("files") or {}
    shards = corpus.shards("alignment")
    if not all((files.get(rel) or {}).get("sha256") for rel in shards):
        return None
    return keys.digest(_code(), json.dumps([[rel, files[rel]["sha256"]] for rel in shards]),
                       json.dumps(corpus.first_shards("alignment")))


def scan(corpus: Corpus, stats: Stats, trusted: bool) -> None:
    """:func:`scan_alignment` into ``stats``; with ``trusted`` digests, its remembered
    result when the key is the same (see the module docstring)."""
    key = stats_key(corpus) if trusted else None
    if key is None:
        scan_alignment(corpus, stats)
        return
    try:
        stored = json.loads(corpus.read_bytes(STATS_FILE))
        record = stored["stats"] if stored.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        record = None
    if record is None:
        fresh = Stats()
        scan_alignment(corpus, fresh)
        record = {"images": [[list(k), n] for k, n in fresh.images.items()],
                  "pathologies": [[list(k), n] for k, n in fresh.pathologies.items()],
                  "abnormal": [[k, n] for k, n in fresh.abnormal.items()],
                  "sizes": [[list(k), n] for k, n in fresh.sizes.items()],
                  "size_rows": fresh.size_rows, "sizes_sampled": fresh.sizes_sampled}
        try:
            corpus.write(STATS_FILE, json.dumps({"key": key, "stats": record}).encode("utf-8"))
        except OSError:
            pass  # a cache that cannot be written costs time, never the report
    for name in ("images", "pathologies", "sizes"):
        counter = getattr(stats, name)
        for k, n in record[name]:
            counter[tuple(k)] += n
    for k, n in record["abnormal"]:
        stats.abnormal[k] += n
    stats.size_rows += record["size_rows"]
    stats.sizes_sampled = stats.sizes_sampled or record["sizes_sampled"]
