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
  build is finalised.  Units run in the launcher's own process (no Beam) take their plans
  from it in memory, the same values (``pipeline.launch.plan.plan_units``).
* A worker *extracts* a unit: the rows of the kind's pixel configs, for each case either
  extracted from its input files or copied from a stored shard (bytes passed through,
  never re-decoded; the stored file's sha256 is checked first).  It then *renders* the
  unit's questions from the records (pixel rows without their pixel columns) and writes
  the text configs and the unit's receipt ``.radvqa/units/<unit>.json``.
* A case's *fingerprint* (:func:`case_fingerprint`) is the kind and its extraction
  version and settings, the case as planned (key, patient, study order, layout) and the
  size and modification time of each of its files.  A stored case is reused only under
  the same fingerprint, or — for a kind with ``content_digest`` — under the same *loose*
  fingerprint (the same without modification times) when its files still hold the
  content digest its rows were extracted from (``recheck``: the worker hashes them); a
  unit whose cases and fingerprints are those of its last receipt keeps its pixel shards
  (``keep``), and also its text shards when the question fingerprint is unchanged
  (``done``: resume).  Workers verify every reused file's
  sha256 and fall back to extracting when it does not match.
* Dead letters: each unit writes its own to ``dead_letters/units/<unit>.<stage>.jsonl``
  (the operator-only folder); the launcher merges them (:mod:`pipeline.engine.dead_letters`).

This module holds the contract's data (:class:`UnitRef`, :class:`PlannedCase`,
:class:`BuildContext`), planning, the plan files, and how local workers share the units
(:func:`work_order`, :func:`claim`: each claims the next unit, largest first, when free); :mod:`pipeline.engine.execute` runs a
unit on a worker.  Paths and shard names are :mod:`pipeline.schema.layout`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

from pipeline.core import keys
from pipeline.io import shards
from pipeline.schema.layout import DEAD_UNITS_DIR, PLAN_DIR, UNITS_DIR, ShardName, shard_path

MODES = ("build", "keep", "done")


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class UnitRef:
    """What Beam carries for one unit: its identity, size and the launcher's proposal.

    ``mode``: ``build`` (extract what is not stored, write everything), ``keep`` (the
    pixel shards already hold exactly these cases: verify them, render the questions),
    ``done`` (the last receipt is complete for this plan: verify, skip).
    ``input_bytes``: the summed size of its cases' input files as the launcher stat'ed them
    (0: unknown), the work estimate :func:`work_order` sorts units by.
    """

    split: str
    index: int
    count: int
    n_cases: int
    mode: str = "build"
    input_bytes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"UnitRef index {self.index} outside 0..{self.count - 1}")
        if self.mode not in MODES:
            raise ValueError(f"UnitRef.mode must be one of {MODES}, got {self.mode!r}")

    @property
    def unit_id(self) -> str:
        """``<split>-SSSSS-of-NNNNN``: the unit's shards' name without config and extension."""
        return ShardName("", self.split, self.index, self.count).unit_id

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
        return shard_path(config, self.split, self.index, self.count)

    def dead_part(self, stage: str) -> str:
        return f"{DEAD_UNITS_DIR}/{self.unit_id}.{stage}.jsonl"


class PlannedCase(NamedTuple):
    """One case of a unit's plan: the kind's case object, its fingerprint, and where an
    earlier build stored its rows (``{config: (relative path, sha256)}``) if it did.
    A named tuple: the launcher plans one per case of the input (750K for a RadImageNet
    tree)."""

    case: object
    fp: str
    stored: Mapping[str, tuple[str, str]] | None = None
    content: str = ""  # content digest recorded when the stored rows were extracted
    extra: Mapping | None = None  # planned question choices (the tree kind), not fingerprinted
    # the fingerprint without the files' modification times (kinds with ``content_digest``)
    loose: str = ""
    # ``stored`` is valid only if the case's files still hold ``content`` (its fingerprint
    # missed by modification times alone): the worker hashes them first
    recheck: bool = False

    def receipt(self, content: str) -> list:
        """The case's entry in its unit's receipt (read back by ``state.StoredIndex``): its
        fingerprint, the content digest its rows came from and, when the kind records
        one, its fingerprint without modification times."""
        return [self.fp, content, *([self.loose] if self.loose else ())]


def plan_split_shards(items: Iterable, split_of, fractions: Sequence[str], per_shard: int, *,
                      group_of=None, order=None) -> list[tuple[str, int, int, list]]:
    """Range-partition each split's items into shards: ``[(split, index, count, items)]``.

    ``group_of(item)`` keeps items of one group (a patient) in one shard; groups are
    partitioned by their sorted keys.  Items of a shard are sorted by ``order(item)``
    (default: ``item.key``).
    """
    if group_of is None and order is None:
        return _plan_ungrouped(items, split_of, fractions, per_shard)
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


def _plan_ungrouped(items: Iterable, split_of, fractions: Sequence[str], per_shard: int):
    """:func:`plan_split_shards` of items that are their own groups, by key: each split's
    items sorted once and sliced where :func:`pipeline.core.keys.plan_shards` cuts its keys
    (no group lists, no sort per shard — a 750K-image tree).  Items sharing a key take the
    grouped path."""
    items = list(items)
    by_split: dict[str, list] = {name: [] for name in fractions}
    for item in items:
        by_split[split_of(item)].append(item)
    out = []
    for split in fractions:
        members = sorted(by_split[split], key=attrgetter("key"))
        case_keys = [i.key for i in members]
        parts = keys.plan_shards(case_keys, per_shard)
        if sum(map(len, parts)) != len(members):  # keys shared: one group each
            return plan_split_shards(items, split_of, fractions, per_shard,
                                     group_of=attrgetter("key"), order=attrgetter("key"))
        start = 0
        for index, part in enumerate(parts):
            out.append((split, index, len(parts), members[start:start + len(part)]))
            start += len(part)
    return out


def work_order(refs: Sequence[UnitRef]) -> list[UnitRef]:
    """``refs`` largest unit first: the order local workers claim them in (:func:`claim`),
    so the last units to start are the small ones.  A unit's work is the size of its input
    files when every unit knows it (a TotalSegmentator release's cases differ several-fold
    in slices; extraction time follows the bytes read), else its case count; an unchanged
    (``done``) unit only verifies its files and counts a tenth.  Deterministic: equal units
    keep their order."""
    by_bytes = bool(refs) and all(r.input_bytes > 0 for r in refs)
    weight = [(r.input_bytes if by_bytes else max(1, r.n_cases)) * (0.1 if r.mode == "done" else 1.0)
              for r in refs]
    return [refs[i] for i in sorted(range(len(refs)), key=lambda i: -weight[i])]


#: Prefix of the claims folders in the temporary folder: ``radvqa-claims-<launcher pid>-…``.
CLAIMS_PREFIX = "radvqa-claims-"


@contextlib.contextmanager
def claim_folder() -> Iterator[str]:
    """``with claim_folder() as claims:`` a new, empty folder for the claims of one pipeline
    run (:func:`claim`), removed when the block ends.  In this machine's temporary folder,
    where the local runner's workers run; named after the launcher's pid, so that folders
    a killed launcher left behind are removed by the next one."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(CLAIMS_PREFIX):].split("-", 1)[0] if name.startswith(CLAIMS_PREFIX) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{CLAIMS_PREFIX}{os.getpid()}-", dir=root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def claim(order: Sequence[UnitRef], folder: str) -> Iterator[UnitRef]:
    """The units of ``order`` that this caller claims first, one at a time, lazily.

    Every local worker runs this over the same ``order`` and the same (empty, local)
    ``folder``; a unit goes to the first caller to create ``folder/<its position>``
    (``O_CREAT | O_EXCL``: atomic, whatever the processes).  Each caller walks the whole
    list, so every unit is claimed exactly once; a caller claims the next unit only when
    asked for it — after the unit before is processed — so whichever worker is free takes
    it (work balancing without the runner's help).  Once the launcher has removed ``folder``
    (the run is over: a worker left behind by a failed attempt), claiming raises."""
    for position, ref in enumerate(order):
        try:
            os.close(os.open(os.path.join(folder, str(position)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise FileNotFoundError(f"claims folder {folder} is gone: its pipeline run is over, "
                                    "this worker claims nothing more") from None
        yield ref


def case_fingerprint(kind_name: str, version: str, settings_digest: str, case_json,
                     identity: Sequence) -> str:
    return keys.digest(kind_name, version, settings_digest,
                       _sorted_json(case_json), json.dumps(list(identity)))


def case_fingerprints(kind_name: str, version: str, settings_digest: str,
                      cases_json: Iterable, identities: Iterable[Sequence]) -> list[str]:
    """:func:`case_fingerprint` of every case (pairs of ``cases_json`` and ``identities``):
    the same digests, the kind's parts hashed once and each case's two parts added to a
    copy — the launcher fingerprints every case of the input, 750K for a RadImageNet tree."""
    head = hashlib.sha256()
    for part in (kind_name, version, settings_digest):
        keys.add_part(head, part)
    out = []
    for case_json, identity in zip(cases_json, identities):
        h = head.copy()
        keys.add_part(h, _sorted_json(case_json))
        keys.add_part(h, _sorted_json(list(identity)))
        out.append(h.hexdigest())
    return out


def _sorted_json_encoder():
    """``json.dumps(value, sort_keys=True)`` (same text) with Python's C encoder made once,
    not once a call as :meth:`json.JSONEncoder.encode` makes it: 2.5x faster on a case's
    short list, 1.7x on a plan line (measured) — the launcher serialises every case of the
    input twice, 750K for a RadImageNet tree.  Without the C encoder, the plain one."""
    plain = json.JSONEncoder(sort_keys=True)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    # markers None: no circular-reference check (plans and cases are trees of plain values)
    encoder = make(None, plain.default, json.encoder.encode_basestring_ascii, None,
                   plain.key_separator, plain.item_separator, True, False, True)

    def dumps(value) -> str:
        return "".join(encoder(value, 0))

    return dumps


_sorted_json = _sorted_json_encoder()


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
    """Write ``ref.plan``: one sorted-key JSON line per planned case, in plan order."""
    lines = []
    for pc in cases:
        stored = {c: list(v) for c, v in sorted(pc.stored.items())} if pc.stored else None
        line = {"case": kind.case_json(pc.case), "fp": pc.fp, "stored": stored,
                "content": pc.content, "extra": pc.extra}
        if pc.loose:
            line |= {"loose": pc.loose, "recheck": pc.recheck}
        lines.append(_sorted_json(line))
    shards.write_bytes(output, ref.plan, ("\n".join(lines) + "\n").encode("utf-8"))


def read_plan(output: str, ref: UnitRef, kind) -> list[PlannedCase]:
    """The planned cases :func:`write_plan` wrote for ``ref`` (on a worker)."""
    out = []
    for line in shards.read_bytes(output, ref.plan).decode("utf-8").splitlines():
        if not line:
            continue
        d = json.loads(line)
        stored = {c: tuple(v) for c, v in d["stored"].items()} if d["stored"] else None
        out.append(PlannedCase(kind.case_from_json(d["case"]), d["fp"], stored, d["content"],
                               d.get("extra"), d.get("loose", ""), d.get("recheck", False)))
    return out


def plan_digest(plan: Sequence[PlannedCase], kind) -> str:
    """The digest of a plan's case keys and fingerprints, recorded in the unit's receipts."""
    return keys.digest(json.dumps(sorted((kind.case_key(pc.case), pc.fp) for pc in plan)))
