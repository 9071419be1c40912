"""Generated question rows kept between builds, per record and template family.

A template edit changes the rows of one family; the others would be generated again,
identically, for every record of the corpus — twice when the corpus is larger than the
in-process memo of :func:`pipeline.qa.questions.questions_for`.  A family's rows of a
record depend on nothing but the record, the family, the pools, the seed, the question
settings and the code (:func:`family_digests`; never on which other families run), so
the rows an earlier build generated for a family whose digest is unchanged are the rows
this build would generate.  The engine keeps each unit's rows, one file per family named
by its digest, under ``.radvqa/rows/`` (build state; :mod:`pipeline.engine.execute`) and
hands them to :func:`pipeline.qa.questions.questions_for` through :func:`using`; only the
families whose digest changed are generated, and only their files are written again.  Only rows that JSON gives back exactly (plain
``str``/``int``/``float``/``bool``/``None``, lists, dicts with string keys) are kept; a
record with any other value is generated again each time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.config.checked import json_exact
from pipeline.core import keys

_PIPELINE = Path(__file__).resolve().parent.parent
_LOCAL = threading.local()


@functools.cache
def code_digest() -> str:
    """The source that generates rows — every module of ``qa`` (generators, templates,
    pools, balancing marks) and of ``core`` (keys, geometry) — and Jinja's version."""
    paths = sorted((_PIPELINE / "qa").rglob("*.py")) + sorted((_PIPELINE / "core").glob("*.py"))
    return keys.source_digest(paths, root=_PIPELINE, dists=("jinja2",))


def family_digests(families: Mapping, pools, seed: int, settings: Mapping | None,
                   version: object = "") -> dict[str, str]:
    """``{family: digest}`` of everything a family's rows depend on besides the record:
    the family (its fields, template text included), the pools, seed, question settings,
    ``version`` (the QA stage's) and :func:`code_digest`.  Contents are compared in a
    canonical form (:func:`_canonical`): pools loaded from the config cache list their
    entries in another order than freshly parsed ones, and draw the same rows."""
    common = keys.digest(code_digest(), _json(pools), seed, _json(settings or {}), version)
    return {name: keys.digest(common, _json(family)) for name, family in sorted(families.items())}


def _json(obj) -> str:
    return json.dumps(_canonical(obj), sort_keys=True, ensure_ascii=False)


def _canonical(obj):
    """``obj`` as JSON-able data, independent of dict and set order (dataclasses by field)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [type(obj).__name__, {f.name: _canonical(getattr(obj, f.name))
                                     for f in dataclasses.fields(obj)}]
    if isinstance(obj, Mapping):
        items = [[_canonical(k), _canonical(v)] for k, v in obj.items()]
        return ["dict", sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))]
    if isinstance(obj, (set, frozenset)):
        return ["set", sorted((_canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))]
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return [type(obj).__name__, repr(obj)]


def file_name(unit: str, family: str, digest: str, marks: bool = False) -> str:
    """``<unit>.<family>.<digest, 16 hex>.json.gz``: one family's rows of one unit
    (gzipped JSON: a tenth of the disk); ``….marks.json.gz`` (``marks``): ``[split, balance
    mark, answer text]`` of its balanced rows, all the balancing pass needs."""
    return f"{unit}.{family}.{digest[:16]}.{'marks.' if marks else ''}json.gz"


def marks_of(rows: Iterable[Mapping]) -> list[list]:
    """``[split, balance mark, answer text]`` of the balanced rows among ``rows``: all the
    balancing candidates need of a row."""
    return [[r["split"], r["balance"], r["answer_text"]] for r in rows if r.get("balance")]


def _texts(rows: list[dict]) -> tuple[str, str]:
    """A family's rows of a record and their marks, as the JSON texts its two files hold."""
    return (json.dumps(rows, ensure_ascii=False, separators=(",", ":")),
            json.dumps(marks_of(rows), ensure_ascii=False, separators=(",", ":")))


class RowStore:
    """One unit's stored rows, one file per family (:func:`file_name`): a family's file is
    used when its name carries the family's current digest (``names``: the unit's stored
    file names; ``load(name)``: its parsed content ``{record digest: rows}``, read on first
    use).  :meth:`rows` takes stored rows and records what the unit generates;
    :meth:`dump` gives the files to write (the families generated again) and those to
    delete (their files under an old digest, and families gone)."""

    def __init__(self, unit: str, digests: Mapping[str, str], names: Iterable[str], load,
                 record: bool = True):
        self.unit, self.digests, self.record = unit, dict(digests), record
        self._names = set(names)
        self._load = load
        self.valid = {f for f, d in self.digests.items()
                      if {file_name(unit, f, d), file_name(unit, f, d, True)} <= self._names}
        self._loaded: dict[tuple[str, bool], dict] = {}
        self._new: dict[str, dict[str, tuple[str, str]]] = {}  # family -> record -> JSON (rows, marks)
        self._dirty: set[str] = set()  # valid families a record had to be generated for
        self.generated = self.reused = 0  # (record, family) pairs generated / taken

    def _stored(self, family: str, marks: bool = False) -> dict:
        if (family, marks) not in self._loaded:
            try:
                data = self._load(file_name(self.unit, family, self.digests[family], marks))
            except (OSError, ValueError, EOFError, zlib.error):  # unreadable: generated again
                data = None
            self._loaded[family, marks] = data if isinstance(data, dict) else {}
        return self._loaded[family, marks]

    def marks(self, record_digest: str, families: Mapping, generate) -> list[list]:
        """``[split, balance mark, answer text]`` of the record's balanced rows of
        ``families`` (the balancing candidates' source): from the small marks files where
        the family's files are current, from ``generate(missing families)`` for the rest."""
        out, missing = [], {}
        for f, fam in families.items():
            found = self._stored(f, True).get(record_digest) if f in self.valid else None
            if isinstance(found, list):
                out += found
            else:
                missing[f] = fam
        if missing:
            out += marks_of(generate(missing))
        return out

    def rows(self, record_digest: str, families: Mapping, generate) -> list[dict]:
        """The rows of ``families`` for a record: stored ones where the family's file is
        current, ``generate(missing families)`` for the rest; sorted by ``qa_id``, as
        :func:`~pipeline.qa.questions.generate_questions` sorts them."""
        have = {}
        for f in families:
            if f in self.valid:
                found = self._stored(f).get(record_digest)
                if isinstance(found, list):
                    have[f] = found
        missing = {f: fam for f, fam in families.items() if f not in have}
        rows = generate(missing) if missing else []
        rows += [dict(r) for f in families if f in have for r in have[f]]
        rows.sort(key=lambda r: r["qa_id"])
        self.generated += len(missing)
        self.reused += len(have)
        self._dirty.update(f for f in missing if f in self.valid)
        self._keep(record_digest, missing, rows)
        return rows

    def keep(self, record_digest: str, families: Mapping, rows: list[dict]) -> None:
        """Remember a record's rows got elsewhere (the in-process memo) for the families
        whose file is not current."""
        self._keep(record_digest, [f for f in families if f not in self.valid], rows)

    def _keep(self, record_digest: str, families, rows: list[dict]) -> None:
        # as JSON text at once, so nothing that later changes the row dicts reaches the
        # store; a family's rows of a record are kept only when JSON-exact
        if not self.record or not families:
            return
        by: dict[str, list] = {f: [] for f in families}
        for r in rows:
            if r["family"] in by:
                by[r["family"]].append(r)
        for f, frows in by.items():
            if json_exact(frows):
                self._new.setdefault(f, {})[record_digest] = _texts(frows)

    def dump(self) -> tuple[dict[str, bytes], list[str]]:
        """``({file name: content} to write, [file names] to delete)``."""
        write = {}
        for f in sorted((set(self._new) - self.valid) | self._dirty):
            texts = {r: _texts(rows) for r, rows in self._stored(f).items()} if f in self.valid else {}
            texts |= self._new.get(f, {})
            for n, marks in ((0, False), (1, True)):
                body = ",".join(f"{json.dumps(r)}:{t[n]}" for r, t in sorted(texts.items()))
                write[file_name(self.unit, f, self.digests[f], marks)] = ("{" + body + "}").encode("utf-8")
        keep = {file_name(self.unit, f, d, m) for f, d in self.digests.items() for m in (False, True)}
        return write, sorted(n for n in self._names if n not in keep)


def current() -> RowStore | None:
    """The store of the unit this thread is running, if any."""
    return getattr(_LOCAL, "store", None)


@contextlib.contextmanager
def using(store: RowStore | None):
    """Run a unit's question passes with ``store`` (this thread only)."""
    previous = current()
    _LOCAL.store = store
    try:
        yield store
    finally:
        _LOCAL.store = previous
