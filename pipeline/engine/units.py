"""Work units: the contract between the launcher and the workers, for every corpus kind.

Contract (changing it changes how corpora are rebuilt, never their bytes):

* A *unit* is the cases of one output shard — ``<config>/<split>-SSSSS-of-NNNNN.parquet``
  for every config of the corpus — sorted by case key.  Planning is a pure function of
  the case keys, the splits and the shard size (:func:`pipeline.core.keys.plan_shards`), so
  the same inputs give the same units whatever the runner or the worker count.
* The launcher writes each unit's *plan* — its cases, their fingerprints, and for each
  case an earlier build already extracted, where its rows are stored — to
  ``.radvqa/plan/<unit>.jsonl``; Beam only carries small :class:`UnitRef` descriptors.
  Plans name source files, so they are transient: the launcher deletes them when the
  build is finalised.
* A worker *extracts* a unit: the rows of the kind's pixel configs, for each case either
  extracted from its input files or copied from a stored shard (bytes passed through,
  never re-decoded; the stored file's sha256 is checked first).  It then *renders* the
  unit's questions from the records (pixel rows without their pixel columns) and writes
  the text configs and the unit's receipt ``.radvqa/units/<unit>.json``.
* A case's *fingerprint* (:func:`case_fingerprint`) is the kind and its extraction
  version and settings, the case as planned (key, patient, study order, layout) and the
  size and modification time of each of its files.  A stored case is reused only under
  the same fingerprint; a unit whose cases and fingerprints are those of its last
  receipt keeps its pixel shards (``keep``), and also its text shards when the question
  fingerprint is unchanged (``done``: resume).  Workers verify every reused file's
  sha256 and fall back to extracting when it does not match.
* Dead letters: each unit writes its own to ``dead_letters/units/<unit>.<stage>.jsonl``
  (the operator-only folder); the launcher merges them.
"""

from __future__ import annotations

import hashlib
import io
import json
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import keys
from pipeline.errors import CaseError
from pipeline.io import shards

STATE_DIR = ".radvqa"
UNITS_DIR = f"{STATE_DIR}/units"
PLAN_DIR = f"{STATE_DIR}/plan"
DEAD_UNITS_DIR = "dead_letters/units"
DEAD_LETTERS_FILE = "dead_letters/dead_letters.jsonl"
MODES = ("build", "keep", "done")


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class UnitRef:
    """What Beam carries for one unit: its identity, size and the launcher's proposal.

    ``mode``: ``build`` (extract what is not stored, write everything), ``keep`` (the
    pixel shards already hold exactly these cases: verify them, render the questions),
    ``done`` (the last receipt is complete for this plan: verify, skip).
    """

    split: str
    index: int
    count: int
    n_cases: int
    mode: str = "build"

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"UnitRef index {self.index} outside 0..{self.count - 1}")
        if self.mode not in MODES:
            raise ValueError(f"UnitRef.mode must be one of {MODES}, got {self.mode!r}")

    @property
    def unit_id(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"

    @property
    def plan(self) -> str:
        return f"{PLAN_DIR}/{self.unit_id}.jsonl"

    @property
    def receipt(self) -> str:
        return f"{UNITS_DIR}/{self.unit_id}.json"

    @property
    def extract_receipt(self) -> str:
        return f"{UNITS_DIR}/{self.unit_id}.extract.json"

    def shard(self, config: str) -> str:
        return f"{config}/{keys.shard_name(self.split, self.index, self.count)}"

    def dead_part(self, stage: str) -> str:
        return f"{DEAD_UNITS_DIR}/{self.unit_id}.{stage}.jsonl"


@dataclass(frozen=True)
class PlannedCase:
    """One case of a unit's plan: the kind's case object, its fingerprint, and where an
    earlier build stored its rows (``{config: (relative path, sha256)}``) if it did."""

    case: object
    fp: str
    stored: Mapping[str, tuple[str, str]] | None = None
    content: str = ""  # content digest recorded when the stored rows were extracted
    extra: Mapping | None = None  # planned question choices (the tree kind), not fingerprinted


def plan_split_shards(items: Iterable, split_of, fractions: Sequence[str], per_shard: int, *,
                      group_of=None, order=None) -> list[tuple[str, int, int, list]]:
    """Range-partition each split's items into shards: ``[(split, index, count, items)]``.

    ``group_of(item)`` keeps items of one group (a patient) in one shard; groups are
    partitioned by their sorted keys.  Items of a shard are sorted by ``order(item)``
    (default: ``item.key``).
    """
    order = order or (lambda item: item.key)
    group_of = group_of or (lambda item: item.key)
    by_split: dict[str, dict[str, list]] = {name: {} for name in fractions}
    for item in items:
        by_split[split_of(item)].setdefault(group_of(item), []).append(item)
    out = []
    for split in fractions:
        groups = by_split[split]
        parts = keys.plan_shards(groups, per_shard)
        for index, part in enumerate(parts):
            members = sorted((i for g in part for i in groups[g]), key=order)
            out.append((split, index, len(parts), members))
    return out


def case_fingerprint(kind_name: str, version: str, settings_digest: str, case_json,
                     identity: Sequence) -> str:
    return keys.digest(kind_name, version, settings_digest,
                       _sorted_json(case_json), json.dumps(list(identity)))


#: ``json.dumps(value, sort_keys=True)`` without building an encoder per call (the
#: launcher serialises every case of the input, 750K for a RadImageNet tree).
_sorted_json = json.JSONEncoder(sort_keys=True).encode


# ------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class BuildContext:
    """Everything a worker needs; validated on the launcher and pickled to workers."""

    kind: str
    output: str
    input_root: str
    settings: object  # the kind's extraction settings
    families: Mapping
    pools: object
    seed: int
    qa_settings: Mapping = field(default_factory=dict)
    qa_fp: str = ""
    extras: Mapping = field(default_factory=dict)


# ------------------------------------------------------------------------- plan files


def write_plan(output: str, ref: UnitRef, cases: Sequence[PlannedCase], kind) -> None:
    lines = []
    for pc in cases:
        stored = {c: list(v) for c, v in sorted(pc.stored.items())} if pc.stored else None
        lines.append(_sorted_json({"case": kind.case_json(pc.case), "fp": pc.fp, "stored": stored,
                                   "content": pc.content, "extra": pc.extra}))
    shards.write_bytes(output, ref.plan, ("\n".join(lines) + "\n").encode("utf-8"))


def read_plan(output: str, ref: UnitRef, kind) -> list[PlannedCase]:
    out = []
    for line in shards.read_bytes(output, ref.plan).decode("utf-8").splitlines():
        if not line:
            continue
        d = json.loads(line)
        stored = {c: tuple(v) for c, v in d["stored"].items()} if d["stored"] else None
        out.append(PlannedCase(kind.case_from_json(d["case"]), d["fp"], stored, d["content"],
                               d.get("extra")))
    return out


# ---------------------------------------------------------------------- dead letters


def dead_letter(case_key: str, source: str, err: CaseError, unit: str = "") -> dict:
    """A dead-letter record: the one place a source path (relative to the input) appears."""
    return {
        "case_key": case_key,
        "source": err.path or source,
        "stage": err.stage,
        "reason": err.reason,
        "error_type": type(err.__cause__).__name__ if err.__cause__ else "CaseError",
        "message": err.message,
        "unit": unit,
    }


def internal_error(stage: str, exc: Exception) -> CaseError:
    """A CaseError for an unforeseen exception: never crash the build on one case."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].name}:{tb[-1].lineno}" if tb else ""
    err = CaseError(stage, f"internal.{type(exc).__name__}", f"{type(exc).__name__}: {exc}{where}")
    err.__cause__ = exc
    return err


def stage_counts(inputs: int, rejected: Counter) -> dict:
    n = sum(rejected.values())
    return {"inputs": inputs, "accepted": inputs - n, "rejected": n,
            "rejected_by_reason": dict(sorted(rejected.items()))}


def jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode()


def sort_dead(letters: Iterable[dict]) -> list[dict]:
    return sorted(letters, key=lambda d: (d["stage"], d["case_key"], d["source"], d["reason"],
                                          d["message"]))


# ------------------------------------------------------------------------- execution


def _verified(output: str, files: Mapping[str, Mapping]) -> bool:
    """Every file exists with the recorded sha256."""
    for rel, info in files.items():
        try:
            data = shards.read_bytes(output, rel)
        except OSError:
            return False
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            return False
    return True


def _read_receipt(output: str, rel: str) -> dict | None:
    try:
        return json.loads(shards.read_bytes(output, rel))
    except (OSError, ValueError):
        return None


def _plan_matches(receipt: Mapping, plan: Sequence[PlannedCase], kind) -> bool:
    planned = {kind.case_key(pc.case): pc.fp for pc in plan}
    return receipt.get("planned") == keys.digest(json.dumps(sorted(planned.items())))


def plan_digest(plan: Sequence[PlannedCase], kind) -> str:
    return keys.digest(json.dumps(sorted((kind.case_key(pc.case), pc.fp) for pc in plan)))


@dataclass(frozen=True)
class CaseResult:
    """What a kind's ``extract_case`` returns: rows per payload config, the content
    digest of the case's inputs, and notes (e.g. empty masks) counted in the report."""

    rows: dict
    content: str
    notes: dict = field(default_factory=dict)


@dataclass
class Extracted:
    """A unit after extraction: its report (small) and, when fused with rendering, its
    pixel rows in memory (``payload``: config → Arrow table)."""

    report: dict
    dead: list[dict]
    payload: dict | None = None
    done: dict | None = None  # the verified complete receipt of a ``done`` unit
    extras: dict | None = None  # case key -> planned question choices


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
        table = pq.read_table(io.BytesIO(data), columns=kind.stored_columns.get(config))
        mask = pa.compute.is_in(table[col], value_set=pa.array(sorted(wanted_keys), pa.string()))
        table = table.filter(mask)
        if "split" in table.column_names:
            table = table.set_column(table.schema.get_field_index("split"), "split",
                                     pa.array([split] * table.num_rows, pa.string()))
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
    return tables, stored_keys


def extract_unit(ref: UnitRef, ctx: BuildContext, kind) -> Extracted:
    """Extract one unit (see the module docstring); writes its pixel shards and the
    extract receipt unless they are verified as kept."""
    plan = read_plan(ctx.output, ref, kind)
    digest = plan_digest(plan, kind)
    if ref.mode == "done":
        receipt = _read_receipt(ctx.output, ref.receipt)
        if (receipt and receipt.get("planned") == digest and receipt.get("qa_fp") == ctx.qa_fp
                and _verified(ctx.output, receipt["files"])):
            return Extracted(receipt, [], done=receipt)
    if ref.mode in ("keep", "done") and kind.pixel_configs:
        receipt = _read_receipt(ctx.output, ref.extract_receipt)
        if (receipt and receipt.get("planned") == digest
                and _verified(ctx.output, receipt["pixel_files"])):
            return Extracted(receipt | {"kept": True,
                                        "reuse": {"stored_cases": 0, "extracted_cases": 0}}, [])
    return _build_unit(ref, ctx, kind, plan, digest)


def _build_unit(ref, ctx, kind, plan, digest) -> Extracted:
    stored_tables, stored_keys = read_stored(ctx.output, plan, kind, ref.split)
    rows: dict[str, list[dict]] = {c: [] for c in kind.payload_configs}
    dead: list[dict] = []
    by_stage: dict[str, Counter] = {"read": Counter(), "extract": Counter()}
    cases: dict[str, list[str]] = {}
    notes: Counter = Counter()
    n_stored = 0
    for pc in plan:
        key = kind.case_key(pc.case)
        if key in stored_keys:
            cases[key] = [pc.fp, pc.content]
            n_stored += 1
            continue
        try:
            result = kind.extract_case(pc.case, ref.split, ctx)
        except CaseError as err:
            dead.append(dead_letter(key, kind.case_source(pc.case), err, ref.unit_id))
            by_stage.setdefault(err.stage, Counter())[err.reason] += 1
            continue
        except Exception as exc:  # a bug or an unforeseen input: never crash the build
            err = internal_error("extract", exc)
            dead.append(dead_letter(key, kind.case_source(pc.case), err, ref.unit_id))
            by_stage["extract"][err.reason] += 1
            continue
        for config, config_rows in result.rows.items():
            rows[config].extend(config_rows)
        cases[key] = [pc.fp, result.content]
        for name, values in sorted(result.notes.items()):
            notes[name] += len(values)
    payload = {}
    for config in kind.payload_configs:
        parts = stored_tables.get(config, [])
        fresh = kind.table(config, rows[config])
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
        shards.write_json(ctx.output, ref.extract_receipt, report)
    extras = {kind.case_key(pc.case): pc.extra for pc in plan if pc.extra}
    return Extracted(report, dead, payload, extras=extras or None)


def read_payload(output: str, report: Mapping, kind) -> dict[str, pa.Table]:
    """A unit's pixel tables without their pixel columns (the records' source)."""
    out = {}
    for rel in report["pixel_files"]:
        config = rel.split("/", 1)[0]
        table = pq.read_table(io.BytesIO(shards.read_bytes(output, rel)))
        out[config] = table.drop_columns([c for c in kind.heavy_columns if c in table.column_names])
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
        table = pq.read_table(io.BytesIO(shards.read_bytes(output, rel)),
                              columns=[key_column, pixel_column])
        table = table.filter(pa.compute.is_in(table[key_column], value_set=pa.array(wanted)))
        for key, value in zip(table[key_column].to_pylist(), table[pixel_column].to_pylist()):
            out[key] = value["bytes"] if isinstance(value, dict) else value
    return out


def unit_candidates(ref: UnitRef, report: Mapping, ctx: BuildContext, kind) -> list[tuple]:
    """Balancing candidates of a unit's questions (small tuples)."""
    records = kind.records(read_payload(ctx.output, report, kind), ref.split, ctx)
    return kind.candidates(records, ctx)


def render_unit(ref: UnitRef, extracted: Extracted, ctx: BuildContext, kind,
                rules=None) -> tuple[dict, list[dict]]:
    """Render a unit's questions; writes its text shards, dead letters and receipt."""
    if extracted.done is not None:
        return extracted.done, []
    report = extracted.report
    payload = extracted.payload
    if payload is None:
        payload = read_payload(ctx.output, report, kind)
    records = kind.records(payload, ref.split, ctx)
    if extracted.extras:
        for r in records:
            r["assign"] = extracted.extras.get(r["case_key"])
    from pipeline.qa.balance import Rules

    tables, info, dead = kind.render(ref, records, payload, ctx, rules or Rules(), report)
    files = dict(report["pixel_files"])
    for config, table in tables.items():
        receipt = shards.write_table(ctx.output, ref.shard(config), table)
        files[receipt.path] = receipt.as_dict()
    dead = [d | {"unit": ref.unit_id} for d in dead]
    shards.write_bytes(ctx.output, ref.dead_part("qa"), jsonl(sort_dead(dead)))
    rejected = Counter(d["reason"] for d in dead)
    full = {k: v for k, v in report.items() if k != "kept"} | {
        "files": dict(sorted(files.items())),
        "qa_fp": ctx.qa_fp,
        "counts": dict(report["counts"]) | {"qa": stage_counts(info.pop("records"), rejected)},
        "dead_letters": report["dead_letters"] + len(dead),
        "kept": bool(report.get("kept")),
        "run": ctx.extras.get("run_id"),
    } | info
    shards.write_json(ctx.output, ref.receipt, full)
    return full, dead


def process_unit(ref: UnitRef, ctx: BuildContext, kind) -> tuple[dict, list[dict]]:
    """Extract and render in one call (kinds without corpus-wide balancing)."""
    extracted = extract_unit(ref, ctx, kind)
    report, dead = render_unit(ref, extracted, ctx, kind)
    return report, extracted.dead + dead
