"""A unit's finished QA rows of each template family, kept between builds as blocks.

:mod:`pipeline.qa.stored_rows` keeps a family's *generated* rows per record; with them
alone a regenerate after one template edit still reads every family's rows back, balances
them and words the balanced ones again — Python work per row of the whole corpus, for
the one family that changed (radvuqa, 60 patients, 68K rows: 7 of the regenerate's 10 s).

A family's finished rows in a unit (what the unit's ``qa`` shard holds of it, after
balancing) depend on the family's digest (:func:`pipeline.qa.stored_rows.family_digests`:
the family, pools, seed, question settings, QA version and code), the unit's records and
the family's corpus-wide balancing rules.  Every rule is keyed by its family
(:mod:`pipeline.qa.balance`: an ``answers`` group and an ``options`` pool start with the
family's name), so a family's rules are a function of its own candidates over the corpus:
of its digest and every unit's records.  A unit's records are made from its pixel shards
(:func:`unit_digest`: their sha256, the split; a volume record's temporal history is its
patient's other studies, all in its unit, and its findings list comes from the question
settings, in the family digest); the corpus's are the digest of every unit's
(:attr:`pipeline.qa.balance.Rules.corpus`, from the ``("unit", …)`` candidates each unit
reports).  So a block named by :func:`block_key` holds the rows this build
would render — and a family whose block is current for every unit is neither generated,
balanced nor worded again: its blocks are read and merged with the other families' rows
(:class:`Blocks`).

Blocks are Arrow IPC files (``.radvqa/rows/<unit>.<family>.<key>.qa.arrow``, uncompressed:
with LZ4, reading the sample's 77 small blocks took 12 ms of CPU against 1 ms, and 57K rows
took 2.5x the CPU to write and 4x to read, for files 1.6x smaller), the family's rows in the
unit's ``qa`` schema, with their task counts and audit counts in the schema metadata: read
with pyarrow's IPC reader, never unpickled (``.radvqa/`` travels with a corpus folder; blocks
an earlier version wrote with LZ4 read as they are).  A unit whose questions gave dead letters writes none (its rows
are not every record's), and a record's dead letter drops its rows from the blocks read.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa

from pipeline.core import keys
from pipeline.engine.units import BuildContext, UnitRef
from pipeline.io import shards
from pipeline.qa import stored_rows
from pipeline.qa.balance import corpus_digest
from pipeline.qa.stored_rows import code_digest
from pipeline.schema import kernels, pyarrays
from pipeline.schema.layout import ROWS_DIR

SUFFIX = ".qa.arrow"
#: Smaller local blocks are read, not memory-mapped: mapping the sample's 77 small blocks
#: cost ~10 ms of CPU more than reading them (measured).
MAP_MIN_BYTES = 1 << 20
_META = b"radvqa.block"
#: the modules that turn a family's balanced rows into a unit's qa table
_CODE = ("engine/qa_blocks.py", "engine/execute.py", "kinds/base.py", "kinds/slices.py",
         "kinds/volumes.py")


@functools.cache
def _code() -> str:
    root = Path(__file__).resolve().parent.parent
    return keys.digest(code_digest(), keys.source_digest([root / p for p in _CODE], root=root,
                                                         dists=("pyarrow",)))


class Unreadable(Exception):
    """A stored block went missing or cannot be read (the run renders every family)."""


def unit_digest(ref, report: Mapping) -> str:
    """What a unit's records are made from: its pixel shards (sha256) and its split."""
    pixels = sorted((rel, info["sha256"]) for rel, info in report["pixel_files"].items())
    return keys.digest(ref.unit_id, ref.split, json.dumps(pixels))


def block_key(family_digest: str, corpus: str) -> str:
    """Everything a family's finished rows in a unit depend on (the unit's records are
    among the corpus's)."""
    return keys.digest(_code(), family_digest, corpus)[:16]


def block_name(unit: str, family: str, key: str) -> str:
    return f"{unit}.{family}.{key}{SUFFIX}"


class Blocks:
    """The stored blocks of a build whose corpus digest is ``corpus`` (``digests``: the
    families' digests).  :attr:`reused`: the families whose block is current for every one
    of ``units`` (the units rendered): they are read, not rendered."""

    def __init__(self, output: str, digests: Mapping[str, str], corpus: str,
                 units: Iterable[str] = ()):
        self.output, self.corpus = output, corpus
        self.keys = {f: block_key(d, corpus) for f, d in digests.items()}
        units = list(units)
        # the stored blocks' names, listed once (None: not listed, Beam's per-unit writers)
        self.names = {p.rsplit("/", 1)[1] for p in shards.match(output, f"{ROWS_DIR}/*{SUFFIX}")} if units else None
        self.reused = frozenset(f for f, k in self.keys.items()
                                if units and all(block_name(u, f, k) in self.names for u in units))

    def context(self, ctx):
        """``ctx`` with only the families to render; its ``qa_fp`` (the key of the
        in-process memo of generated rows, pipeline.qa.questions) marked as such."""
        if not self.reused:
            return ctx
        return dataclasses.replace(
            ctx, families={f: v for f, v in ctx.families.items() if f not in self.reused},
            qa_fp=keys.digest(ctx.qa_fp, "without", *sorted(self.reused)) if ctx.qa_fp else "")

    def read(self, unit: str, schema: pa.Schema) -> list[tuple[pa.Table, dict]]:
        """``[(table, {"tasks", "audit"})]`` of the unit's reused families; raises
        :class:`Unreadable` when a block is missing or unreadable."""
        out = []
        for f in sorted(self.reused):
            name = block_name(unit, f, self.keys[f])
            try:
                table = pa.ipc.open_file(self._source(name)).read_all()
                table.validate(full=True)  # offsets in bounds: the folder may come from elsewhere
                meta = json.loads(table.schema.metadata[_META])
                ok = table.schema.remove_metadata() == schema.remove_metadata()
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as err:
                raise Unreadable(name) from err
            if not ok:
                raise Unreadable(f"{name}: another schema")
            out.append((table.replace_schema_metadata(schema.metadata), meta))
        return out

    def _source(self, name: str):
        """A block's bytes: a local file of :data:`MAP_MIN_BYTES` memory-mapped (its pages read as the table's
        columns are, not copied into a ``bytes`` first: a 10K-image unit's blocks, 29 MB,
        0.013-0.03 -> 0.002 s of CPU to open, measured; a block written again later is a
        new file, renamed over it, and the mapped one stays whole), a remote one read."""
        path = shards.join(self.output, f"{ROWS_DIR}/{name}")
        if "://" in path or os.path.getsize(path) < MAP_MIN_BYTES:
            return pa.py_buffer(shards.read_bytes(self.output, f"{ROWS_DIR}/{name}"))
        return pa.memory_map(path)

    def write(self, unit: str, table: pa.Table, meta: Mapping[str, Mapping]) -> None:
        """Write the unit's blocks of the families in ``meta`` (``{family: {"tasks",
        "audit"}}``) from its finished ``qa`` table, and delete its blocks under other keys."""
        families = table["family"]
        for f in sorted(meta):
            if f not in self.keys:
                continue
            part = kernels.filter(table, kernels.equal(families, pyarrays.scalar(f, pa.string())))
            part = part.replace_schema_metadata(
                (part.schema.metadata or {}) | {_META: json.dumps(meta[f], sort_keys=True)})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, part.schema) as writer:
                writer.write_table(part)
            shards.write_bytes(self.output, f"{ROWS_DIR}/{block_name(unit, f, self.keys[f])}",
                               sink.getvalue().to_pybytes())
        current = {block_name(unit, f, k) for f, k in self.keys.items()}
        if self.names is None:
            listed = shards.match(self.output, f"{ROWS_DIR}/{unit}.*{SUFFIX}")
        else:  # the listing made for this run (only this unit's writer adds blocks of it)
            listed = [shards.join(self.output, f"{ROWS_DIR}/{n}") for n in sorted(self.names)
                      if n.startswith(unit + ".") and n.endswith(SUFFIX)]
        stale = [p for p in listed if p.rsplit("/", 1)[1] not in current]
        if stale:
            shards.delete(stale)


def merged(table: pa.Table, blocks, kept_ids, id_column: str, recount) -> tuple[pa.Table, list]:
    """A unit's ``qa`` table: ``table`` (the rows rendered now, sorted by ``qa_id``) with the
    ``(block, counts)`` read for the unit, sorted by ``qa_id``; and the blocks' counts.
    ``kept_ids`` are the ids (``id_column``) of the records that gave rows, ``None`` when
    every record did: a record dead-lettered here has no rows in any family, so its rows
    leave the blocks too, and ``recount(block)`` counts what is left."""
    if not blocks:
        return table, []
    kept = None if kept_ids is None else pyarrays.array(sorted(kept_ids), pa.string())
    tables, parts = [table], []
    for block, counts in blocks:
        if kept is not None:
            block = kernels.filter(block, kernels.is_in(block[id_column], kept))
            counts = recount(block)
        tables.append(block)
        parts.append(counts)
    return kernels.sort_by(pa.concat_tables(tables), "qa_id").combine_chunks(), parts


def corpus_of(refs_reports: Iterable[tuple]) -> str:
    """The corpus digest the units' ``("unit", …)`` candidates give, from their reports."""
    return corpus_digest((ref.unit_id, unit_digest(ref, report)) for ref, report in refs_reports)


def for_run(extracted, ctx, kind) -> Blocks | None:
    """The blocks usable by an in-process run (:func:`pipeline.engine.in_process.run_in_process`):
    ``extracted`` is every unit's ``(ref, Extracted)``, whose reports give the corpus digest
    its candidates will; ``None`` for a kind without blocks or with planned per-case
    choices (``Extracted.extras``, not part of the digest)."""
    digests = ctx.extras.get("qa_families")
    if not kind.qa_blocks or not digests or any(ex.extras for _, ex in extracted):
        return None
    return Blocks(ctx.output, digests, corpus_of((ref, ex.report) for ref, ex in extracted),
                  [ref.unit_id for ref, ex in extracted if ex.done is None])


def for_unit(extracted, ctx, kind, rules) -> Blocks | None:
    """Blocks to write for a unit rendered without stored ones (e.g. on Beam's runners):
    when the kind keeps them and the rules name the corpus."""
    digests = ctx.extras.get("qa_families")
    if kind.qa_blocks and rules.corpus and digests and not extracted.extras:
        return Blocks(ctx.output, digests, rules.corpus)
    return None


def unit_candidate(ref, report: Mapping, kind) -> list[tuple]:
    """``[("unit", unit id, its records' digest)]`` for a kind with blocks (every unit's
    make the rules' corpus digest, :func:`pipeline.qa.balance.rules_from`), else ``[]``."""
    return [("unit", ref.unit_id, unit_digest(ref, report))] if kind.qa_blocks else []


def row_store(ref: UnitRef, ctx: BuildContext, record: bool) -> stored_rows.RowStore | None:
    """The unit's generated rows an earlier build stored (:mod:`pipeline.qa.stored_rows`);
    ``None`` when the launcher gave no family digests."""
    digests = ctx.extras.get("qa_families")
    if not digests:
        return None
    names = [p.rsplit("/", 1)[1] for p in shards.match(ctx.output, f"{ROWS_DIR}/{ref.unit_id}.*.json.gz")]
    return stored_rows.RowStore(
        ref.unit_id, digests, names,
        lambda name: json.loads(gzip.decompress(shards.read_bytes(ctx.output, f"{ROWS_DIR}/{name}"))),
        record)


def write_row_store(output: str, store: stored_rows.RowStore | None) -> None:
    """Write a unit's row store's new files, delete its stale ones (for the next build:
    only edited families are generated again)."""
    if store is None:
        return
    write, stale = store.dump()
    for name, data in write.items():
        shards.write_bytes(output, f"{ROWS_DIR}/{name}", gzip.compress(data, 1, mtime=0))
    if stale:
        shards.delete([shards.join(output, f"{ROWS_DIR}/{name}") for name in stale])
