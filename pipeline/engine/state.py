"""Build state under ``OUTPUT/.radvqa``: what an earlier build left that this one can reuse.

* ``units/<unit>.json`` — a unit's complete receipt (its cases with fingerprints and
  content digests — and, for a kind with ``content_digest``, the fingerprint without
  modification times — every file it wrote with sha256, counts, audit counts);
  ``units/<unit>.extract.json`` — written as soon as a unit's pixel shards are, so an
  interrupted build keeps them.
* ``previous/`` — stored shards moved aside before a build that would overwrite them
  while another unit still needs their rows (a change of splits or shard size), with
  ``previous/sources.json`` describing them.  Deleted when the build is finalised.
* ``build.json`` — the arguments of the last build (recipe, input, seed, layout), which
  ``radvqa regenerate`` repeats.  Operator-side state: never part of the corpus.

:class:`StoredIndex` maps a case key to where its rows are stored and under which
fingerprint; the launcher plans reuse from it, the workers verify every file's sha256
before they trust it.  Only the launcher imports this module.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.io import shards
from pipeline.schema.layout import PROGRESS_DIR, STATE_DIR, UNITS_DIR

PREVIOUS_DIR = f"{STATE_DIR}/previous"
PREVIOUS_SOURCES = f"{PREVIOUS_DIR}/sources.json"
BUILD_FILE = f"{STATE_DIR}/build.json"


@dataclass(frozen=True)
class Stored:
    fp: str
    content: str
    locations: Mapping[str, tuple[str, str]]  # config -> (relative path, sha256)
    loose: str = ""  # the fingerprint without modification times, when recorded


def _match(output: str, pattern: str) -> list[str]:
    return shards.match(output, pattern)


def rel_path(output: str, path: str) -> str:
    return path[len(output):].lstrip("/")


def load_receipts(output: str) -> dict[str, dict]:
    """Every receipt under ``.radvqa/units`` by file name (``<unit>.json``, ``<unit>.extract.json``)."""
    out = {}
    for path in _match(output, f"{UNITS_DIR}/*.json"):
        rel = rel_path(output, path)
        try:
            out[rel.rsplit("/", 1)[1]] = json.loads(shards.read_bytes(output, rel))
        except (OSError, ValueError):
            continue  # an unreadable receipt is simply not reused
    return out


def sources_of(receipt: Mapping, configs: Iterable[str]) -> tuple[dict, dict] | None:
    """``(cases, locations)`` of a receipt for the kind's stored configs, or None."""
    files = dict(receipt.get("pixel_files") or {}) | dict(receipt.get("files") or {})
    locations = {}
    for config in configs:
        match = [(p, f["sha256"]) for p, f in files.items() if p.startswith(config + "/")]
        if len(match) != 1:
            return None
        locations[config] = match[0]
    return dict(receipt.get("cases") or {}), locations


class StoredIndex:
    """Case key → :class:`Stored`, from receipts and moved-aside shards."""

    def __init__(self, entries: Iterable[tuple[Mapping, Mapping]] = ()):
        self._by_key: dict[str, Stored] = {}
        for cases, locations in entries:
            for key, (fp, content, *loose) in cases.items():
                self._by_key.setdefault(key, Stored(fp, content, dict(locations), *loose[:1]))

    @classmethod
    def load(cls, output: str, receipts: Mapping[str, dict], configs) -> StoredIndex:
        if not configs:
            return cls()
        entries = []
        # complete receipts first: they also cover units whose extract receipt is stale
        ordered = sorted(receipts.items(), key=lambda kv: (kv[0].endswith(".extract.json"), kv[0]))
        for name, receipt in ordered:
            if name == "benchmark.json":
                continue
            got = sources_of(receipt, configs)
            if got:
                entries.append(got)
        try:
            moved = json.loads(shards.read_bytes(output, PREVIOUS_SOURCES))
        except (OSError, ValueError):
            moved = []
        for item in moved:
            entries.append((item["cases"], {c: tuple(v) for c, v in item["locations"].items()}))
        return cls(entries)

    def lookup(self, key: str, fp: str) -> Stored | None:
        s = self._by_key.get(key)
        return s if s is not None and s.fp == fp else None

    def lookup_loose(self, key: str, loose: str) -> Stored | None:
        """The stored case ``key`` when its recorded fingerprint without modification times
        is ``loose`` (and it has a content digest): valid if its files still hold it."""
        s = self._by_key.get(key)
        return s if s is not None and loose and s.loose == loose and s.content else None

    def __len__(self) -> int:
        return len(self._by_key)


def move_aside(output: str, paths: Iterable[str], index_entries: list[dict]) -> dict[str, str]:
    """Move stored shards to ``.radvqa/previous/`` (rename) and record them; returns
    ``{old relative path: new relative path}``."""
    moved = {}
    for rel in sorted(set(paths)):
        new = f"{PREVIOUS_DIR}/{rel}"
        src, dst = shards.join(output, rel), shards.join(output, new)
        if not shards.path_exists(src):
            continue
        if "://" not in dst:
            os.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        if shards.path_exists(dst):
            shards.delete([dst])
        shards.rename(src, dst)
        moved[rel] = new
    try:
        existing = json.loads(shards.read_bytes(output, PREVIOUS_SOURCES))
    except (OSError, ValueError):
        existing = []
    for entry in index_entries:
        locations = {c: [moved.get(p, p), sha] for c, (p, sha) in entry["locations"].items()}
        if any(p in moved for p, _ in entry["locations"].values()):
            existing.append({"cases": entry["cases"], "locations": locations})
    shards.write_json(output, PREVIOUS_SOURCES, existing)
    return moved


def delete_tree(output: str, rel: str) -> None:
    """Delete a state folder (plan, previous) if present."""
    path = shards.join(output, rel)
    if shards.path_exists(path):
        shards.delete([path])


def write_build_args(output: str, args: Mapping) -> None:
    shards.write_json(output, BUILD_FILE, dict(args))


def read_build_args(output: str) -> dict:
    try:
        return json.loads(shards.read_bytes(output, BUILD_FILE))
    except OSError as err:
        raise FileNotFoundError(
            f"--output: {output} holds no earlier build ({BUILD_FILE} not found); run "
            "`radvqa build` first") from err


#: Seconds between two progress markers of one unit (a marker is one small write).
PROGRESS_EVERY_S = 1.0


class ProgressMarker:
    """Writes ``.radvqa/progress/<unit>`` (cases of the unit extracted so far) at most every
    :data:`PROGRESS_EVERY_S` seconds, for the launcher's progress line.  Build state only:
    never in the manifest, and no output byte depends on it."""

    def __init__(self, output: str, unit_id: str):
        self._output, self._path = output, f"{PROGRESS_DIR}/{unit_id}"
        self._last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            try:
                shards.write_bytes(self._output, self._path, str(done).encode())
            except OSError:  # progress is a courtesy: never fail a unit over it
                pass
