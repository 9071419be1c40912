"""The corpus-kind contract: what the launcher and the workers expect of a kind.

:class:`Kind` declares every member the launcher (:mod:`pipeline.launch.build`), the unit
engine (:mod:`pipeline.engine.units`) and the Beam shell (:mod:`pipeline.beam.transforms`)
use.  :class:`BaseKind` gives the optional members their defaults, so callers use plain
attribute access; :class:`VolumeKind` is what the two volume-based kinds (``slices``,
``volumes``) share: cases planned as :class:`~pipeline.inputs.discovery.CaseSource`
objects, the phantom sample, question rendering with dead letters, and their ``ood``
rows read back from the stored pixels.  The registry of kinds is
:mod:`pipeline.kinds.registry`; kind modules import this module, never the registry.

Members are called on the launcher (``prepare`` … ``manifest_extras``, in build order)
or on a worker (``extract_case`` … ``render``, per unit).  A kind's settings object is
fingerprinted by its ``repr`` (:meth:`BaseKind.settings_digest`): renaming its class or a
field changes every case fingerprint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from pipeline.config.recipes import Recipe, pool_paths, template_paths
from pipeline.core import keys
from pipeline.engine import ood
from pipeline.engine.dead_letters import dead_letter, internal_error
from pipeline.engine.units import BuildContext, UnitRef, plan_split_shards
from pipeline.errors import CaseError, ConfigError
from pipeline.inputs import sample
from pipeline.inputs.discovery import CaseSource, Rejected, discover_cases
from pipeline.inputs.layouts import ctrate, get_layout
from pipeline.inputs.meta_table import resolve_splits
from pipeline.inputs.tree import InputTree
from pipeline.qa.balance import Rules, apply
from pipeline.qa.candidates import question_candidates
from pipeline.qa.generators import GENERATORS
from pipeline.qa.pools import load_pools
from pipeline.qa.questions import questions_for
from pipeline.qa.templates import load_families
from pipeline.schema import pyarrays
from pipeline.schema.layout import STATE_DIR
from pipeline.schema.records import CaseResult

#: ``[(split, index, count, cases)]``: the units of a build, as :meth:`Kind.plan` returns them.
Planned = list[tuple[str, int, int, list]]


@runtime_checkable
class Kind(Protocol):
    """A corpus kind (``source.kind`` in a recipe), as the launcher and the workers use it."""

    name: str
    """The kind's name: ``source.kind``, the manifest's ``kind``, part of every fingerprint."""
    version: str
    """Extraction version: part of every case fingerprint (bump it when extraction changes)."""
    configs: tuple[str, ...]
    """Every output config, the default (card, report) first; stale shards of others go."""
    pixel_configs: tuple[str, ...]
    """Configs written at extraction and reused by regeneration (an extract receipt each)."""
    payload_configs: tuple[str, ...]
    """Configs whose rows ``extract_case`` returns (tables built with ``table``)."""
    stored_configs: tuple[str, ...]
    """Configs a stored case's rows are copied from on a rebuild (the stored index)."""
    text_configs: tuple[str, ...]
    """Configs written when a unit's questions are rendered."""
    key_column: Mapping[str, str]
    """Per stored config, the column holding the case key (rows copied per case)."""
    stored_columns: Mapping[str, list[str]]
    """Per stored config, the columns read back when copying (absent: all of them)."""
    heavy_columns: frozenset[str]
    """Pixel columns dropped from a payload before it becomes records."""
    schemas: Mapping[str, pa.Schema]
    """Per config, its Arrow schema (the dataset card's features)."""
    balanced: bool
    """Whether closed answers are balanced corpus-wide (extract, balance, then render)."""
    case_noun: str
    """What a case is called in the launcher's messages (``found no …``)."""
    audit_defaults: Mapping[str, Any]
    """Defaults of the recipe's ``audit`` section for this kind (the recipe's win)."""
    qa_blocks: bool
    """Whether ``render`` takes stored finished rows of whole families (``blocks``) and
    gives its families' counts (info ``_blocks``): :mod:`pipeline.engine.qa_blocks`."""
    finish: Callable[[BuildContext, list[dict]], dict | None] | None
    """Run once on a worker after every unit's receipt (the tree's benchmark), or ``None``."""
    finish_input: Callable[[dict], dict] | None
    """What ``finish`` needs of a unit's receipt, taken where the unit ran (a receipt of a
    10K-image unit is ~2 MB, passed to the finishing worker), or ``None``: all of it."""

    def prepare(self, recipe: Recipe) -> dict:
        """Launcher, first: validated settings, families, pools and shard size (``prep``)."""
        ...

    def sample_input(self, output: str, recipe: Recipe, log: Callable[[str], None]) -> str:
        """Launcher, without ``--input``: write (or reuse) the built-in sample; its folder."""
        ...

    def discover(self, root: InputTree, recipe: Recipe, key: str, seed: int, layout: str,
                 prep: dict) -> tuple[list, list[dict], dict]:
        """Launcher: ``(cases sorted by key, discovery dead letters, stats)`` of the input."""
        ...

    def plan(self, cases: list, recipe: Recipe, seed: int, prep: dict) -> Planned:
        """Launcher: the cases partitioned into units, ``[(split, index, count, cases)]``."""
        ...

    def before_run(self, output: str, recipe: Recipe, seed: int,
                   units: list[tuple[UnitRef, list]], cases: list, prep: dict) -> dict:
        """Launcher, before each attempt: context extras (``case_extras``: per-case choices)."""
        ...

    def manifest_extras(self, output: str, receipts: list[dict],
                        extras: Mapping) -> tuple[dict, list[str], list[str]]:
        """Launcher, last: ``(manifest fields, dataset card lines, summary lines)``."""
        ...

    def case_key(self, case: Any) -> str:
        """A case's key (pseudonymous, unique, the sort order of a unit)."""
        ...

    def case_source(self, case: Any) -> str:
        """A case's source path relative to the input (dead letters only)."""
        ...

    def case_json(self, case: Any) -> Any:
        """A case as JSON for its unit's plan file (launcher → worker)."""
        ...

    def case_from_json(self, data: Any) -> Any:
        """Worker: the case back from its plan-file JSON."""
        ...

    def case_paths(self, case: Any) -> list[str]:
        """Input files whose stat identity fingerprints the case (and are fetched to extract it)."""
        ...

    def settings_digest(self, settings: Any) -> str:
        """Launcher: the digest of the extraction settings in every case fingerprint."""
        ...

    def extract_case(self, case: Any, split: str, ctx: BuildContext) -> CaseResult:
        """Worker: one case's rows per payload config; raises CaseError for bad data."""
        ...

    def table(self, config: str, rows: list[dict]) -> pa.Table:
        """Worker: a payload config's freshly extracted rows as an Arrow table."""
        ...

    extract_cases: Callable[..., tuple[dict[str, pa.Table], list] | None] | None
    """Worker, optional (``None``): ``extract_cases(cases, split, ctx, progress)`` extracts a
    unit's cases in one pass: ``(payload tables per config, one outcome per case)`` — a
    :class:`CaseResult` (its ``rows`` already in the tables) or the exception that rejects
    the case — or ``None`` to leave them to :meth:`extract_case` one by one; ``progress(n)``
    after ``n`` cases."""

    content_digest: Callable[[Any, BuildContext], str | None] | None
    """Worker, optional: the content digest :meth:`extract_case` would record for a case,
    from its files' bytes alone (``None``: cannot tell); checks a case whose files' times
    alone changed (:func:`pipeline.engine.execute.rechecked`)."""

    def sort_table(self, config: str, table: pa.Table) -> pa.Table:
        """Worker: a unit's payload table (fresh and stored rows) in its shard order."""
        ...

    def records(self, payload: Mapping[str, pa.Table], split: str,
                ctx: BuildContext | None = None) -> list[dict]:
        """Worker: question-generation records from a unit's payload (no pixel columns)."""
        ...

    def candidates(self, records: list[dict], ctx: BuildContext) -> list[tuple]:
        """Worker, balanced kinds: a unit's balancing candidates (small tuples)."""
        ...

    def render(self, ref: UnitRef, records: list[dict], payload: Mapping[str, pa.Table],
               ctx: BuildContext, rules: Rules,
               report: Mapping) -> tuple[dict[str, pa.Table], dict, list[dict]]:
        """Worker: a unit's text tables per config, its receipt fields and dead letters."""
        ...


class BaseKind:
    """Defaults of :class:`Kind`'s optional members; a kind subclasses this and declares
    the rest."""

    stored_columns: ClassVar[Mapping[str, list[str]]] = {}
    audit_defaults: ClassVar[Mapping[str, Any]] = {}
    balanced = False
    qa_blocks = False
    finish = None
    finish_input = None
    extract_cases = None
    content_digest = None  # (case, ctx) -> a case's content digest from its bytes (VolumeKind)
    keep_configs: ClassVar[tuple[str, ...]] = ()  # engine/kept_text.py
    schemas: ClassVar[Mapping[str, pa.Schema]]

    def keep_digest(self, ctx) -> str | None:
        """What the ``keep_configs`` shards are made from besides the unit's plan."""
        return None

    def before_run(self, output, recipe, seed, units, cases, prep) -> dict:
        return {}

    def manifest_extras(self, output, receipts, extras) -> tuple[dict, list[str], list[str]]:
        return {}, [], []

    def case_key(self, case) -> str:
        return case.key

    def case_source(self, case) -> str:
        return case.source

    def settings_digest(self, settings) -> str:
        return keys.digest(repr(settings))

    def table(self, config: str, rows: list[dict]) -> pa.Table:
        return pyarrays.table(rows, self.schemas[config])

    def candidates(self, records: list[dict], ctx) -> list[tuple]:
        return []


class VolumeKind(BaseKind):
    """What the two volume-based kinds (``slices``, ``volumes``) share.

    Cases are planned :class:`~pipeline.inputs.discovery.CaseSource` objects (case folders
    of a volume layout); the sample is a phantom written by :mod:`pipeline.inputs.sample`;
    questions come from :func:`pipeline.qa.questions.questions_for`, balanced corpus-wide;
    the ``ood`` rows of the ``ood.split`` units are made from the stored pixels of
    :attr:`ood_source`.
    """

    case_noun = "case folders"
    balanced = True
    text_configs = ("qa", "ood")
    ood_source: ClassVar[ood.OodSource]
    sample_folder: ClassVar[str]  # under OUTPUT/.radvqa
    sample_patients: ClassVar[int]  # default of the recipe's source.sample_patients
    shard_size: ClassVar[tuple[str, int]]  # the recipe's shards.<field> and its default

    # -- launcher ----------------------------------------------------------------------
    def read_settings(self, recipe: Recipe):
        """The kind's extraction settings from the recipe; raises ValueError when invalid."""
        raise NotImplementedError

    def prepare(self, recipe: Recipe) -> dict:
        try:
            settings = self.read_settings(recipe)
        except ValueError as err:
            raise ConfigError(f"{recipe.path}: {err}") from err
        families, pools = load_questions(recipe)
        field, default = self.shard_size
        return {"settings": settings, "families": families, "pools": pools,
                "per_shard": int(recipe.section("shards").get(field, default))}

    def write_sample(self, root: str, n_patients: int) -> None:
        """Write the phantom sample of ``n_patients`` patients under ``root``."""
        raise NotImplementedError

    def sample_input(self, output: str, recipe: Recipe, log) -> str:
        n = int(recipe.section("source").get("sample_patients", self.sample_patients))
        return phantom_input(output, self.sample_folder, f"{sample.SAMPLE_VERSION}:{n}", log,
                             lambda root: self.write_sample(root, n_patients=n))

    def discover(self, root, recipe, key: str, seed: int, layout: str, prep: dict):
        cases, rejects = discover_volume_cases(root, key, layout)
        stats = self.discover_stats(cases)
        _, note = self.patient_splits(cases, recipe, seed)
        return cases, rejects, stats | ({"meta_split": note} if note else {})

    def discover_stats(self, cases: list[CaseSource]) -> dict:
        """Discovery stats for the manifest's counts (none by default)."""
        return {}

    def patient_splits(self, cases: list[CaseSource], recipe: Recipe, seed: int
                       ) -> tuple[dict[str, str], dict]:
        """``({patient key: split}, note)``: the ``meta.csv`` split when the recipe's
        ``splits.use_meta_split`` is on (default) and the table gives one, else the keyed
        hash of the patient (:func:`pipeline.inputs.meta_table.resolve_splits`)."""
        splits = recipe.section("splits")
        fractions = splits["fractions"]
        return resolve_splits(cases, list(fractions),
                              lambda patient: keys.assign_split(patient, fractions, seed),
                              bool(splits.get("use_meta_split", True)))

    def plan(self, cases, recipe, seed: int, prep: dict) -> Planned:
        chosen, _ = self.patient_splits(cases, recipe, seed)
        return plan_split_shards(cases, lambda c: chosen[c.patient_key],
                                 list(recipe.section("splits")["fractions"]), prep["per_shard"])

    # -- cases -------------------------------------------------------------------------
    def case_json(self, case: CaseSource) -> dict:
        return dataclasses.asdict(case)

    def case_from_json(self, data) -> CaseSource:
        return CaseSource(**{**data, "files": tuple(tuple(f) for f in data["files"])})

    def case_paths(self, case: CaseSource) -> list[str]:
        """Input files and folders whose stat identity fingerprints the case (its layout's
        ``fingerprint_paths``)."""
        return get_layout(case.layout).fingerprint_paths(case)

    def content_digest(self, case: CaseSource, ctx) -> str | None:
        """The content digest :meth:`extract_case` records for ``case`` from its files'
        bytes alone (hashed, never decoded: its layout's ``content_digests``), or ``None``
        when its layout has none."""
        layout = get_layout(case.layout)
        digests = getattr(layout, "content_digests", None)
        if digests is None:
            return None
        with InputTree(ctx.input_root).local(self.case_paths(case)) as root:
            return keys.digest(*digests(case, root))

    # -- questions ---------------------------------------------------------------------
    def candidates(self, records: list[dict], ctx) -> list[tuple]:
        return question_candidates(records, ctx)

    def questions(self, records: list[dict], ctx, rules: Rules) -> tuple[list, list[dict]]:
        """``([(record, its balanced question rows)], dead letters)``: a record whose
        questions fail gets a dead letter instead of rows."""
        made, dead = [], []
        for record in records:
            try:
                rows = [row for row in (apply(r, rules, ctx.families, ctx.pools)
                                        for r in questions_for(record, ctx)) if row is not None]
            except CaseError as err:  # e.g. a template that fails on this record's facts
                dead.append(dead_letter(record["case_key"], record["case_key"], err))
                continue
            except Exception as exc:  # noqa: BLE001 — a bug: this record's letter says so
                dead.append(dead_letter(record["case_key"], record["case_key"],
                                        internal_error("qa", exc)))
                continue
            made.append((record, rows))
        return made, dead

    def ood_tables(self, ref: UnitRef, records: list[dict], ctx, report: Mapping) -> tuple[dict, dict]:
        """``({"ood": table}, {"ood_inputs": digest})`` for a unit of the recipe's
        ``ood.split``, else ``({}, {})``; the table is the stored shard's
        :class:`~pipeline.schema.records.FileReceipt` when its inputs did not change
        (:func:`pipeline.engine.ood.ood_output`)."""
        table, inputs = ood.ood_output(self.ood_source, ref, records, ctx, report)
        return ({}, {}) if table is None else ({"ood": table}, {"ood_inputs": inputs})


# ------------------------------------------------------------ shared launcher helpers


def load_questions(recipe: Recipe, pools_loader=None):
    """Template families (filtered by the recipe's ``questions.families``) and pools,
    validated on the launcher."""
    families = {}
    for path in template_paths(recipe):
        families.update(load_families(path, generators=GENERATORS))
    wanted = recipe.section("questions").get("families")
    if wanted:
        missing = sorted(set(wanted) - set(families))
        if missing:
            raise ConfigError(
                f"{recipe.path}: questions.families: {missing} not found among {sorted(families)}")
        families = {k: families[k] for k in wanted}
    pools = (pools_loader or load_pools)(pool_paths(recipe))
    return families, pools


def discover_volume_cases(root, key: str, layout: str) -> tuple[list[CaseSource], list[dict]]:
    """Cases of a volume input folder and its planned rejects (dead-letter records).

    A CT-RATE input (``layout`` ``ct-rate``, or ``auto`` and a label table at its root) is
    discovered as a whole (:func:`pipeline.inputs.layouts.ctrate.discover`), else folder by folder."""
    tree = root if isinstance(root, InputTree) else InputTree(root)
    if layout == ctrate.LAYOUT.name or (layout == "auto" and tree.exists() and ctrate.is_root(tree)):
        found, skipped = ctrate.discover(tree, key)
        cases = sorted((CaseSource(**c) for c in found), key=lambda c: c.key)
        rejected = [Rejected(*r) for r in skipped]
    else:
        cases, rejected = discover_cases(root, pseudonym_key=key, layout=layout)
    rejects = [{"case_key": keys.pseudonym(key, "case", r.source), "source": r.source,
                "stage": "discover", "reason": r.reason, "error_type": "CaseError",
                "message": r.message, "unit": ""} for r in rejected]
    return cases, rejects


def phantom_input(output: str, folder: str, version: str, log,
                  write: Callable[[str], None]) -> str:
    """Write (or reuse) built-in sample inputs under ``OUTPUT/.radvqa/<folder>``."""
    if "://" in output:
        raise ConfigError("--input is required when --output is not a local folder")
    root = os.path.join(output, STATE_DIR, folder)
    stamp = os.path.join(root, ".radvqa-sample")
    if os.path.isfile(stamp) and open(stamp).read() == version:
        return root
    log(f"writing the built-in sample inputs to {root}")
    write(root)
    with open(stamp, "w") as f:
        f.write(version)
    return root

