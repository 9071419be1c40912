"""The learned baseline's per-shard samples on disk: written by the worker that wrote a QA
shard (:func:`write`), read by the launcher's audit (:func:`reader`).

What a sample is, and why the workers draw them, is :mod:`pipeline.qa.learned_keys`'s;
where one is stored is :func:`pipeline.schema.layout.learned_keys_path`'s (beside the
unit's receipt, under ``.radvqa/learned-keys``).
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from pipeline.engine.units import UnitRef
from pipeline.io import shards
from pipeline.qa import learned_keys
from pipeline.qa.audit import SEP
from pipeline.qa.learned import shard_sample
from pipeline.schema.layout import LEARNED_KEYS_DIR, learned_keys_path


def write(output: str, ref: UnitRef, tables: Mapping, files: Mapping[str, Mapping],
          audit: Mapping | None) -> None:
    """A sample of each audited QA shard the unit has just written (``tables``, by config;
    ``files``: their receipts by path; ``audit``: the unit's partial audit counts, whose
    keys name the audited configs).  A shard kept as it is (a receipt, not a table) has
    none written: its earlier one stands while it names the shard's sha256."""
    audited = {key.split(SEP, 1)[0] for key in audit or ()}
    for config, table in tables.items():
        if config in audited and isinstance(table, pa.Table):
            path = learned_keys_path(ref.shard(config))
            try:  # the shard's last sample (sample_bytes)
                earlier = shards.read_bytes(output, path)
            except OSError:
                earlier = None
            shards.write_bytes(output, path, sample_bytes(
                table, config, files[ref.shard(config)]["sha256"], earlier))


def sample_bytes(table, config: str, sha256: str, earlier: bytes | None = None) -> bytes:
    """The sample file of a QA shard (``table``, its file's ``sha256``): ``earlier``, the
    shard's last one, restamped when it was drawn from the same key columns (a shard written
    again after a wording edit, :func:`pipeline.qa.learned_keys.restamped`), else drawn."""
    columns = learned_keys.columns_digest(table, config)
    same = learned_keys.restamped(earlier, columns, sha256)
    return same if same is not None else shard_sample(table, config, sha256, columns)


def reader(output: str, files: Mapping[str, Mapping], audited: set[str]):
    """``sampled(config, rel)`` for :func:`pipeline.qa.learned.learned_from_shards`: the
    worker's sample of an audited shard, or ``None`` (missing, unreadable, or of other
    bytes than the shard's: drawn on the launcher).  Samples of shards this build does not
    audit (an earlier build's, a killed worker's temporary file) are deleted first."""
    wanted = {learned_keys_path(rel) for rel in audited}
    stale = [p for p in shards.match(output, f"{LEARNED_KEYS_DIR}/**")
             if p[len(output):].lstrip("/") not in wanted]
    if stale:
        shards.delete(stale)

    def sampled(config: str, rel: str):
        try:
            data = shards.read_bytes(output, learned_keys_path(rel))
        except OSError:  # none (a killed worker): drawn on the launcher
            return None
        return learned_keys.decode(data, config, files[rel]["sha256"])
    return sampled
