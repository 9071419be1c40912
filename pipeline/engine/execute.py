"""Running one work unit on a worker: extract its pixel rows, render its questions.

The contract is :mod:`pipeline.engine.units`'s.  :func:`extract_unit` reuses what the
plan says is stored (every file checked first: its stat receipt, else its sha256,
:mod:`pipeline.io.kept_files`) and extracts the rest through the
kind; :func:`render_unit` renders the unit's questions from the records and writes its
text shards, dead-letter part and receipt.  :func:`process_unit` does both in one call.
The Beam shell (:mod:`pipeline.beam.transforms`) only calls these.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.collector import collector_paused
from pipeline.core.heap import keep_freed_memory
from pipeline.engine import kept_text, learned_samples, qa_blocks
from pipeline.engine.dead_letters import dead_letter, internal_error, jsonl, sort_dead, stage_counts
from pipeline.engine.state import ProgressMarker
from pipeline.engine.units import BuildContext, PlannedCase, UnitRef, plan_digest, read_plan
from pipeline.errors import CaseError
from pipeline.io import kept_files, shards
from pipeline.qa import stored_rows
from pipeline.qa.balance import Rules
from pipeline.schema import kernels, pyarrays
from pipeline.schema.records import FileReceipt

_FROZEN = [0]  # depth of the running unit calls (process_unit calls the other two)


def _gc_frozen(fn):
    """Run ``fn`` with everything alive before it frozen out of the garbage collector
    (``gc.freeze``; thawed after) and the cycle collector off meanwhile (on again after, if
    it was).  A unit allocates ~100K objects a 10K-image unit, and each of the few full
    collections they trigger would otherwise walk every object of the worker too: measured
    0.6 CPU s per 10K 224 px images, for nothing (142 objects freed); with the worker's
    objects frozen, the collections still walked the unit's own: 0.6-0.7 CPU s per 16K
    224 px images (of 7.6-8.5 s), for nothing again.  A unit's cyclic garbage (few objects)
    waits for the first collection after it.  The freeze is process-wide: a unit that
    starts while another thread's unit holds it runs unfrozen (never less correct).  The
    Beam shell calls these functions; nothing else about them changes."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if _FROZEN[0]:
            return fn(*args, **kwargs)
        _system_arrow_pool()
        keep_freed_memory()  # (core/heap: 9-16K page faults a 1.5 mm slices unit, ~1-4K)
        _FROZEN[0] += 1
        gc.freeze()
        try:
            with collector_paused():
                return fn(*args, **kwargs)
        finally:
            gc.unfreeze()
            _FROZEN[0] -= 1
    return run


def _system_arrow_pool() -> None:
    """Arrow's allocations from the C library's ``malloc`` (unless ``$ARROW_DEFAULT_MEMORY_POOL``
    chooses): a 224 px unit builds and writes ~150 MB buffers, and with pyarrow's default
    (mimalloc) the units of 10K images took 2.5-5.1 s of kernel time instead of 2.5 s, and
    0.3 GB more peak RSS (measured side by side).  Buffers already allocated keep their pool."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _read_receipt(output: str, rel: str) -> dict | None:
    try:
        return json.loads(shards.read_bytes(output, rel))
    except (OSError, ValueError):
        return None


@dataclass
class Extracted:
    """A unit after extraction: its report (small) and, when fused with rendering, its
    pixel rows in memory (``payload``: config → Arrow table)."""

    report: dict
    dead: list[dict]
    payload: dict | None = None
    done: dict | None = None  # the verified complete receipt of a ``done`` unit
    extras: dict | None = None  # case key -> planned question choices
    records: list | None = None  # kept from the candidates pass (run_in_process)


def read_stored(output: str, plan: Sequence[PlannedCase], kind, split: str):
    """Rows of the stored cases of ``plan``: ``(tables per config, stored keys)``.

    Each stored file is read once, its sha256 checked; a file that is missing or does not
    match leaves its cases to be extracted again.
    """
    wanted: dict[tuple[str, str, str], set[str]] = {}
    for pc in plan:
        if pc.stored:
            for config, (path, sha) in pc.stored.items():
                wanted.setdefault((config, path, sha), set()).add(kind.case_key(pc.case))
    tables: dict[str, list[pa.Table]] = {}
    ok: dict[str, set[str]] = {}
    for (config, path, sha), wanted_keys in sorted(wanted.items()):
        try:
            data = shards.read_bytes(output, path)
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            continue
        col = kind.key_column[config]
        table = _read(data, kind.stored_columns.get(config))
        table = kernels.filter(table, kernels.is_in(table[col], pyarrays.array(sorted(wanted_keys), pa.string())))
        if "split" in table.column_names:
            table = table.set_column(table.schema.get_field_index("split"), "split",
                                     pyarrays.array([split] * table.num_rows, pa.string()))
        tables.setdefault(config, []).append(table)
        found = set(table[col].to_pylist())
        ok.setdefault(config, set()).update(found & wanted_keys)
    # A case is stored only if every one of its configs was found.
    stored_keys = set()
    for pc in plan:
        if pc.stored:
            k = kind.case_key(pc.case)
            if all(k in ok.get(c, ()) for c in pc.stored):
                stored_keys.add(k)
    # a case with one config's file changed is extracted again, every config: its rows
    # found in the others' files are dropped (else written twice)
    lost = pyarrays.array(sorted(set().union(*ok.values()) - stored_keys), pa.string())
    if len(lost):
        tables = {config: [kernels.filter(t, kernels.invert(kernels.is_in(t[kind.key_column[config]], lost)))
                           for t in parts]
            for config, parts in tables.items()}
    return tables, stored_keys


@_gc_frozen
def extract_unit(ref: UnitRef, ctx: BuildContext, kind, plan=None) -> Extracted:
    """Extract one unit (see the module docstring); writes its pixel shards and the extract
    receipt unless they are verified as kept.  ``plan``: its planned cases, else its file's."""
    plan = read_plan(ctx.output, ref, kind) if plan is None else plan
    digest = plan_digest(plan, kind)
    if ref.mode == "done":
        receipt = _read_receipt(ctx.output, ref.receipt)
        if (receipt and receipt.get("planned") == digest and receipt.get("qa_fp") == ctx.qa_fp
                and kept_files.all_unchanged(ctx.output, receipt["files"], receipt.get("stat"),
                                             ctx.extras.get("verify_shards", False))):
            return Extracted(receipt, [], done=receipt)
    if ref.mode in ("keep", "done") and kind.pixel_configs:
        receipt = _read_receipt(ctx.output, ref.extract_receipt)
        if (receipt and receipt.get("planned") == digest
                and kept_files.all_unchanged(ctx.output, receipt["pixel_files"],
                                             receipt.get("stat"), ctx.extras.get("verify_shards", False))):
            return Extracted(receipt | {"kept": True,
                                        "reuse": {"stored_cases": 0, "extracted_cases": 0}}, [])
    kept = kept_text.extracted(ref, ctx, kind, plan, digest) if ref.mode == "build" else None
    if kept is not None:  # a stored text shard kept as it is: its pixels never read
        extras = {kind.case_key(pc.case): pc.extra for pc in plan if pc.extra}
        return Extracted(kept[0], [], kept[1], extras=extras or None)
    return _build_unit(ref, ctx, kind, plan, digest)


def _build_unit(ref, ctx, kind, plan, digest) -> Extracted:
    plan = rechecked(plan, kind, ctx)
    stored_tables, stored_keys = read_stored(ctx.output, plan, kind, ref.split)
    marker = ProgressMarker(ctx.output, ref.unit_id)
    rows: dict[str, list[dict]] = {c: [] for c in kind.payload_configs}
    dead: list[dict] = []
    by_stage: dict[str, Counter] = {"read": Counter(), "extract": Counter()}
    cases: dict[str, list[str]] = {}
    notes: Counter = Counter()
    n_stored = 0
    todo = []
    for pc in plan:
        key = kind.case_key(pc.case)
        if key in stored_keys:
            cases[key] = pc.receipt(pc.content)
            n_stored += 1
        else:
            todo.append(pc)
    # a kind may extract the unit's cases in one pass, its payload tables built as it goes
    batch = kind.extract_cases([pc.case for pc in todo], ref.split, ctx, marker) \
        if kind.extract_cases is not None else None
    fresh_tables, outcomes = batch if batch is not None else (
        None, (_extract_one(kind, pc.case, ref.split, ctx, marker, n) for n, pc in enumerate(todo)))
    for pc, result in zip(todo, outcomes):
        key = kind.case_key(pc.case)
        if isinstance(result, BaseException):
            err = result if isinstance(result, CaseError) else internal_error("extract", result)
            dead.append(dead_letter(key, kind.case_source(pc.case), err, ref.unit_id))
            by_stage.setdefault(err.stage, Counter())[err.reason] += 1
            continue
        for config, config_rows in result.rows.items():
            rows[config].extend(config_rows)
        cases[key] = pc.receipt(result.content)
        for name, values in sorted(result.notes.items()):
            notes[name] += len(values)
    payload = {}
    for config in kind.payload_configs:
        parts = stored_tables.get(config, [])
        fresh = fresh_tables[config] if fresh_tables is not None else kind.table(config, rows[config])
        table = pa.concat_tables([*(t.select(fresh.schema.names).cast(fresh.schema) for t in parts),
                                  fresh]) if parts else fresh
        payload[config] = kind.sort_table(config, table)
    files = {}
    for config in kind.pixel_configs:
        receipt = shards.write_table(ctx.output, ref.shard(config), payload[config])
        files[receipt.path] = receipt.as_dict()
    n_read_rejected = sum(by_stage["read"].values())
    report = {
        "unit": ref.unit_id,
        "split": ref.split,
        "kind": ctx.kind,
        "planned": digest,
        "cases": dict(sorted(cases.items())),
        "pixel_files": files,
        "counts": {
            "read": stage_counts(len(plan), by_stage["read"]),
            "extract": stage_counts(len(plan) - n_read_rejected, by_stage["extract"]),
        },
        "notes": dict(sorted(notes.items())),
        "reuse": {"stored_cases": n_stored, "extracted_cases": len(plan) - n_stored},
        "dead_letters": len(dead),
    }
    shards.write_bytes(ctx.output, ref.dead_part("extract"), jsonl(sort_dead(dead)))
    if kind.pixel_configs:
        report["stat"] = kept_files.identities(ctx.output, files)  # (io/kept_files)
        shards.write_json(ctx.output, ref.extract_receipt, report, compact=True)
    extras = {kind.case_key(pc.case): pc.extra for pc in plan if pc.extra}
    return Extracted(report, dead, payload, extras=extras or None)


def rechecked(plan: Sequence[PlannedCase], kind, ctx) -> Sequence[PlannedCase]:
    """``plan`` with the stored rows of each ``recheck`` case (its fingerprint missed by its
    files' modification times alone) kept only if its files still hold the content digest
    the rows were extracted from (``kind.content_digest``: the files hashed, never decoded;
    a TotalSegmentator case at 1.5 mm, 118 files, 32 MB: 0.026 s of CPU, its extraction
    ~1.1 s); else the case is extracted again.  Its receipt then records the new
    fingerprint, so the next build trusts the files' stat again.  Hashed on
    ``ctx.extras["recheck_threads"]`` threads (the build's workers: hashlib and reads release
    the GIL): a copied input's regenerate in the launcher's process uses every core."""
    todo = [n for n, pc in enumerate(plan) if pc.recheck and pc.stored]
    if not todo:
        return plan

    def same(pc: PlannedCase) -> bool:
        try:
            return kind.content_digest(pc.case, ctx) == pc.content
        except Exception:  # unreadable now: extracting it says why
            return False

    threads = min(len(todo), max(1, int(ctx.extras.get("recheck_threads", 1))))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            kept = list(pool.map(same, (plan[n] for n in todo)))
    else:
        kept = [same(plan[n]) for n in todo]
    out = list(plan)
    for n, ok in zip(todo, kept):
        if not ok:
            out[n] = out[n]._replace(stored=None)
    return out


def _extract_one(kind, case, split: str, ctx, marker, done: int):
    """One case extracted by ``kind.extract_case``: its :class:`CaseResult`, or the exception
    that rejects it (a :class:`CaseError`; anything else becomes an internal error)."""
    marker(done)
    try:
        return kind.extract_case(case, split, ctx)
    except Exception as exc:  # a bug or an unforeseen input: never crash the build
        return exc


def read_payload(output: str, report: Mapping, kind) -> dict[str, pa.Table]:
    """A unit's pixel tables without their pixel columns (the records' source)."""
    out = {}
    for rel in {**report["pixel_files"], **report.get("kept_text", {})}:  # kept_text: tree
        config = rel.split("/", 1)[0]
        out[config] = _read(shards.read_bytes(output, rel), exclude=kind.heavy_columns)
    return out


def read_pixels(output: str, report: Mapping, config: str, key_column: str, pixel_column: str,
                wanted) -> dict[str, bytes]:
    """``{key: bytes}`` of the pixel column of a unit's shard, for the ``wanted`` keys only."""
    wanted = sorted(set(wanted))
    out: dict[str, bytes] = {}
    if not wanted:
        return out
    for rel in report["pixel_files"]:
        if rel.split("/", 1)[0] != config:
            continue
        table = _read(shards.read_bytes(output, rel), [key_column, pixel_column])
        table = kernels.filter(table, kernels.is_in(table[key_column], pyarrays.array(wanted, pa.string())))
        for key, value in zip(table[key_column].to_pylist(), table[pixel_column].to_pylist()):
            out[key] = value["bytes"] if isinstance(value, dict) else value
    return out


def _read(data: bytes, columns=None, exclude=()) -> pa.Table:
    """A shard's table (``columns``, else all but ``exclude``) from its bytes: the same
    table as ``pq.read_table`` gives, without decoding the image columns a regenerate does
    not need (0.06-0.12 s vs 0.02 s for radvuqa's 113 MB of pixel shards, measured)."""
    pf = pq.ParquetFile(io.BytesIO(data))
    if columns is None:
        columns = [c for c in pf.schema_arrow.names if c not in exclude]
    return pf.read(columns=columns)


def unit_candidates(ref: UnitRef, report: Mapping, ctx: BuildContext, kind,
                    payload: Mapping[str, pa.Table] | None = None, records=None) -> list[tuple]:
    """Balancing candidates of a unit's questions (small tuples); ``payload``: the unit's
    tables without pixels when the caller has them (else read from its shards), or
    ``records``, the records made from them."""
    if records is None:
        records = kind.records(payload or read_payload(ctx.output, report, kind), ref.split, ctx)
    with stored_rows.using(qa_blocks.row_store(ref, ctx, record=False)):
        out = kind.candidates(records, ctx)
    return out + qa_blocks.unit_candidate(ref, report, kind)


@_gc_frozen
def render_unit(ref: UnitRef, extracted: Extracted, ctx: BuildContext, kind,
                rules=None, blocks: qa_blocks.Blocks | None = None,
                behind=None) -> tuple[dict, list[dict]]:
    """Render a unit's questions; writes its text shards, dead letters and receipt (and the
    finished rows of its families, ``blocks``: :mod:`pipeline.engine.qa_blocks`).
    ``behind`` (:class:`pipeline.engine.in_process.Behind`): the text shards, their
    learned-baseline samples and the receipt are written by its thread while the caller
    goes on; the receipt returned is complete once ``behind.join()`` has returned."""
    if extracted.done is not None:
        return extracted.done, []
    report = extracted.report
    payload = extracted.payload
    if payload is None:
        payload = read_payload(ctx.output, report, kind)
    records = kind.records(payload, ref.split, ctx) if extracted.records is None else extracted.records
    if extracted.extras:
        for r in records:
            r["assign"] = extracted.extras.get(r["case_key"])
    rules = rules or Rules()
    blocks = blocks or qa_blocks.for_unit(extracted, ctx, kind, rules)
    with stored_rows.using(qa_blocks.row_store(ref, ctx, record=True)) as store:
        if blocks is None:
            tables, info, dead = kind.render(ref, records, payload, ctx, rules, report)
        else:
            tables, info, dead = kind.render(ref, records, payload, blocks.context(ctx), rules, report,
                                             blocks=blocks.read(ref.unit_id, kind.schemas["qa"]))
    qa_blocks.write_row_store(ctx.output, store)
    if blocks is not None and info.get("_blocks") is not None:
        blocks.write(ref.unit_id, tables["qa"], info["_blocks"])
    info.pop("_blocks", None)
    dead = [d | {"unit": ref.unit_id} for d in dead]
    shards.write_bytes(ctx.output, ref.dead_part("qa"), jsonl(sort_dead(dead)))
    rejected = Counter(d["reason"] for d in dead)
    full = {k: v for k, v in report.items() if k != "kept"} | {
        "files": {},  # below, once the shards are written
        "qa_fp": ctx.qa_fp,
        "counts": dict(report["counts"]) | {"qa": stage_counts(info.pop("records"), rejected)},
        "dead_letters": report["dead_letters"] + len(dead),
        "kept": bool(report.get("kept")),
        "run": ctx.extras.get("run_id"),
    } | info

    def write() -> None:
        files = dict(report["pixel_files"])
        for config, table in tables.items():
            # a FileReceipt: a stored shard kept as it is (its inputs did not change)
            receipt = table if isinstance(table, FileReceipt) else shards.write_table(
                ctx.output, ref.shard(config), table)
            files[receipt.path] = receipt.as_dict()
        learned_samples.write(ctx.output, ref, tables, files, info.get("audit"))  # the audit's
        full["files"] = dict(sorted(files.items()))
        full["stat"] = kept_files.identities(ctx.output, files)  # the next build trusts these
        shards.write_json(ctx.output, ref.receipt, full, compact=True)
    if behind is None:
        write()
    else:
        behind.run(write, sum(t.nbytes for t in tables.values() if not isinstance(t, FileReceipt)))
    return full, dead


@_gc_frozen
def process_unit(ref: UnitRef, ctx: BuildContext, kind, plan=None,
                 behind=None) -> tuple[dict, list[dict]]:
    """Extract and render in one call (kinds without corpus-wide balancing); ``behind`` as
    for :func:`render_unit`."""
    extracted = extract_unit(ref, ctx, kind, plan)
    report, dead = render_unit(ref, extracted, ctx, kind, behind=behind)
    return report, extracted.dead + dead
