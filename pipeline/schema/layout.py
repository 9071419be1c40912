"""The corpus on disk: every output path and shard name, formatted and parsed here only.

A built corpus ``OUTPUT/`` holds::

    manifest.json                                   MANIFEST
    README.md                                       CARD (Hugging Face dataset card)
    <config>/<split>-SSSSS-of-NNNNN.parquet         shard_path(config, split, index, count)
    dead_letters/dead_letters.jsonl                 DEAD_LETTERS_FILE (operator-only)
    dead_letters/units/<unit>.<stage>.jsonl         per-unit parts, merged by the launcher
    report/index.html                               REPORT
    .radvqa/                                        STATE_DIR: build state, never published

Shard names follow the Hugging Face / TFDS convention: ``SSSSS`` is the zero-based
index and ``NNNNN`` the shard count, both five digits.  Changing anything here changes
the layout of every corpus: readers of older corpora (exports, report, regenerate)
depend on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MANIFEST = "manifest.json"
CARD = "README.md"
STATE_DIR = ".radvqa"
UNITS_DIR = f"{STATE_DIR}/units"
#: the tree kind's ``benchmark`` step's receipt (written after every unit, read by finalise)
BENCHMARK_RECEIPT = f"{UNITS_DIR}/benchmark.json"
PLAN_DIR = f"{STATE_DIR}/plan"
#: ``<unit>``: the number of the unit's cases extracted so far (build state, polled for progress)
PROGRESS_DIR = f"{STATE_DIR}/progress"
LAST_RUN = f"{STATE_DIR}/last_run.json"
REPORT_DIR = "report"
REPORT = f"{REPORT_DIR}/index.html"
REPORT_CACHE_DIR = f"{STATE_DIR}/report-cache"
#: the learned text-only baseline's results per group, by the digest of what decides them
LEARNED_CACHE = f"{STATE_DIR}/learned-cache.json"
#: ``<config>/<unit>.npz``: the learned baseline's sample of a QA shard, drawn by the worker
#: that wrote it (pipeline.qa.learned_keys)
LEARNED_KEYS_DIR = f"{STATE_DIR}/learned-keys"
#: the template and pool files a build validated, by content (pipeline.config.checked)
CONFIG_CACHE = f"{STATE_DIR}/config-cache.json"
#: ``<unit>.json``: a unit's generated question rows per record and family (pipeline.qa.stored_rows)
ROWS_DIR = f"{STATE_DIR}/rows"
DEAD_LETTERS_DIR = "dead_letters"
DEAD_UNITS_DIR = f"{DEAD_LETTERS_DIR}/units"
DEAD_LETTERS_FILE = f"{DEAD_LETTERS_DIR}/dead_letters.jsonl"
#: Folders of a corpus that are never exported or published as data.
PRIVATE_DIRS = (STATE_DIR, DEAD_LETTERS_DIR, REPORT_DIR)

_SHARD = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>[a-z]+)$")


@dataclass(frozen=True)
class ShardName:
    """One shard file ``<config>/<split>-SSSSS-of-NNNNN.<ext>``; ``config`` is ``""`` for a bare name."""

    config: str
    split: str
    index: int
    count: int
    ext: str = "parquet"

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} outside 0..{self.count - 1}")

    @property
    def unit_id(self) -> str:
        """``<split>-SSSSS-of-NNNNN``: the shard's name without config and extension."""
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

    @property
    def name(self) -> str:
        return f"{self.unit_id}.{self.ext}"

    @property
    def path(self) -> str:
        return f"{self.config}/{self.name}" if self.config else self.name


def shard_name(split: str, index: int, count: int, ext: str = "parquet") -> str:
    """``<split>-SSSSS-of-NNNNN.<ext>`` (Hugging Face / TFDS naming)."""
    return f"{split}-{index:05d}-of-{count:05d}.{ext}"


def shard_path(config: str, split: str, index: int, count: int, ext: str = "parquet") -> str:
    """``<config>/<split>-SSSSS-of-NNNNN.<ext>``, relative to the corpus root."""
    return f"{config}/{shard_name(split, index, count, ext)}"


def learned_keys_path(shard_rel: str) -> str:
    """Where the learned baseline's sample of the shard ``shard_rel`` is stored."""
    return f"{LEARNED_KEYS_DIR}/{shard_rel.rsplit('.', 1)[0]}.npz"


def parse_shard(rel: str) -> ShardName | None:
    """The shard a corpus-relative path names, or None when it is not a shard name.

    ``qa/train-00001-of-00004.parquet`` → ``ShardName("qa", "train", 1, 4)``; the config is
    everything before the last ``/`` (``""`` for a bare file name).
    """
    config, _, name = rel.rpartition("/")
    m = _SHARD.match(name)
    if m is None:
        return None
    index, count = int(m["index"]), int(m["count"])
    if not 0 <= index < count:
        return None
    return ShardName(config, m["split"], index, count, m["ext"])
