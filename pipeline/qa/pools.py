"""Distractor pools: regions → structures (display names, synonyms, parents, pairs)
and region → pathologies; a physiology table (what each structure does); constrained,
seeded distractor sampling.

Rules for multiple-choice options (:meth:`Pools.distractors`):

* drawn from the answer's anatomical region (its ``neighbors`` only as a
  fallback), or from explicit ``candidates`` — for labels the pools do not
  know, the other labels of the same case's label table;
* never the answer, never one of its synonyms, parents or children (a lesion's
  organ is its parent), never two options with the same display text;
* candidates are sorted before the seeded draw, so the result depends on the
  generator's seed only, never on set or dict order.

A physiology table (``distractor_pools/physiology.yaml``, schema
``schemas/physiology.schema.json``) listed among a recipe's pools adds *function labels*
``function:<entry>``: :meth:`Pools.display` gives the entry's ``function_short``, and two
function labels are :meth:`Pools.related` when they share their main ``system`` or one's
main system is among the other's ``other_systems``, so the options of a physiology
question come from pairwise distinct systems other than the answer's: entries of one
system can overlap in meaning ("supplies blood to the arm", "supplies right arm and
head") and are never offered together, nor is the thyroid's function beside the
pancreas's (which serves the endocrine system too).  Two entries that merely share an
*other* system (the pancreas and the kidney, both partly endocrine) may meet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pipeline.config.checked import load_checked
from pipeline.errors import ConfigError

#: Prefix of the labels that stand for a physiology entry (see the module docstring).
FUNCTION_PREFIX = "function:"


@dataclass(frozen=True)
class Structure:
    label: str
    region: str
    display: str
    synonyms: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    pair: str | None = None
    lesion: bool = False

    @cached_property
    def names(self) -> frozenset[str]:
        """Every text that denotes this structure (lower case)."""
        return frozenset(n.lower() for n in (self.label, self.display, *self.synonyms))


@dataclass(frozen=True)
class Pools:
    """Loaded, validated pools (picklable: plain tuples and dicts)."""

    structures: dict
    regions: dict  # region -> (display, neighbors tuple, pathologies tuple)
    sources: tuple[str, ...] = ()
    functions: dict = None  # physiology entry -> (systems tuple, function_short)
    function_of: dict = None  # class name -> physiology entry

    def function_label(self, label: str) -> str | None:
        """The function label (``function:<entry>``) of structure ``label``, or ``None``."""
        entry = (self.function_of or {}).get(label)
        return None if entry is None else FUNCTION_PREFIX + entry

    def option_group(self, label: str) -> str:
        """The group of answers that share one distractor slot (:func:`pipeline.qa.balance.
        cap_answers`): a function label's first body system, any other label itself."""
        if label.startswith(FUNCTION_PREFIX):
            return "system:" + self.functions[label[len(FUNCTION_PREFIX):]][0][0]
        return label

    def function_labels(self) -> list[str]:
        """Every function label of the physiology table, sorted."""
        return sorted(FUNCTION_PREFIX + e for e in (self.functions or {}) if self.functions[e][1])

    def known(self, label: str) -> bool:
        return label in self.structures

    def display(self, label: str) -> str:
        if label.startswith(FUNCTION_PREFIX):
            return self.functions[label[len(FUNCTION_PREFIX):]][1]
        s = self.structures.get(label)
        return s.display if s else label.replace("_", " ").strip()

    def region_of(self, label: str) -> str | None:
        s = self.structures.get(label)
        return s.region if s else None

    def region_display(self, region: str) -> str:
        return self.regions[region][0]

    def pathologies(self, region: str) -> tuple[str, ...]:
        return self.regions[region][2]

    def is_lesion(self, label: str) -> bool:
        s = self.structures.get(label)
        return bool(s and s.lesion)

    def laterality_pair(self, label: str) -> str | None:
        s = self.structures.get(label)
        return s.pair if s else None

    def _names(self, label: str) -> frozenset[str]:
        s = self.structures.get(label)
        return s.names if s else frozenset({label.lower(), self.display(label).lower()})

    def _parents(self, label: str) -> frozenset[str]:
        s = self.structures.get(label)
        return frozenset(p.lower() for p in s.parents) if s else frozenset()

    def _memo(self, name: str) -> dict:
        # Per-instance memo tables beside the (frozen) fields: pools are read-only once
        # loaded, so answers never go stale; they are rebuilt after unpickling.
        return self.__dict__.setdefault(name, {})

    def related(self, a: str, b: str) -> bool:
        """Same thing, synonyms, or parent/child (either way)."""
        memo = self._memo("_related")
        key = (a, b) if a <= b else (b, a)
        hit = memo.get(key)
        if hit is None and a.startswith(FUNCTION_PREFIX) and b.startswith(FUNCTION_PREFIX):
            sa = self.functions[a[len(FUNCTION_PREFIX):]][0]
            sb = self.functions[b[len(FUNCTION_PREFIX):]][0]
            hit = memo[key] = sa[0] == sb[0] or sa[0] in sb[1:] or sb[0] in sa[1:]
        if hit is None:
            na, nb = self._names(a), self._names(b)
            hit = memo[key] = bool(na & nb or self._parents(a) & nb or self._parents(b) & na)
        return hit

    def region_members(self, region: str) -> list[str]:
        memo = self._memo("_members")
        if region not in memo:
            memo[region] = tuple(sorted(label for label, s in self.structures.items()
                                        if s.region == region))
        return list(memo[region])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def distractors(
        self,
        answer: str,
        k: int,
        gen,
        *,
        candidates: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
    ) -> list[str]:
        """``k`` labels to offer beside ``answer`` (see module docstring).

        Returns fewer than ``k`` when the pool cannot supply them; callers skip
        the question then.
        """
        excluded = set(exclude) | {answer}
        if candidates is not None:
            tiers = [sorted(set(candidates))]
        else:
            region = self.region_of(answer)
            if region is None:
                return []
            tiers = [self.region_members(region)]
            tiers += [self.region_members(n) for n in self.regions[region][1]]
        known = self._universe()
        near = self._clashes(answer, related_only=True)
        chosen: list[str] = []
        for tier in tiers:
            pool = [c for c in tier if c not in excluded
                    and not (c in near if c in known else self.related(answer, c))]
            new = list(chosen)  # what the pool has not been filtered against yet
            while len(chosen) < k:
                for x in new:  # the same filter against every chosen label, once per label
                    bad = self._clashes(x)
                    pool = [c for c in pool
                            if not (c in bad if c in known else self._clash(c, x))]
                if not pool:
                    break
                chosen.append(pool[int(gen.integers(len(pool)))])
                new = chosen[-1:]
            if len(chosen) >= k:
                break
        return chosen[:k]

    def _clash(self, c: str, x: str) -> bool:
        """May ``c`` not be offered beside ``x``: the same label, related (:meth:`related`),
        or shown with the same text."""
        return c == x or self.related(c, x) or self.display(c).lower() == self.display(x).lower()

    def _universe(self) -> frozenset[str]:
        """The labels whose clashes :meth:`_clashes` tabulates: every structure and every
        function label with a display text."""
        memo = self._memo("_all_labels")
        if "all" not in memo:
            memo["all"] = frozenset(self.structures) | frozenset(self.function_labels())
        return memo["all"]

    def _clashes(self, x: str, related_only: bool = False) -> frozenset[str]:
        """The labels of :meth:`_universe` that clash with ``x`` (:meth:`_clash`), or with
        ``related_only`` those :meth:`related` to it: computed once per label, so drawing
        options is set lookups (the pairwise tests took a third of question generation)."""
        memo = self._memo("_near_sets" if related_only else "_clash_sets")
        hit = memo.get(x)
        if hit is None:
            test = (lambda c: self.related(x, c)) if related_only else (lambda c: self._clash(c, x))
            hit = memo[x] = frozenset(c for c in self._universe() if test(c))
        return hit


def load_pools(paths: Iterable[str | Path]) -> Pools:
    """Load and validate pool YAML files; a label may be defined only once."""
    structures: dict[str, Structure] = {}
    regions: dict[str, tuple] = {}
    sources = []
    groups: set[str] = set()
    functions: dict[str, tuple] = {}
    function_of: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        # parsed and validated unless unchanged; a physiology table has ``functions``
        data = load_checked(path, lambda d: "physiology" if "functions" in d else "distractor_pool")
        if "functions" in data:  # a physiology table
            sources.append(path.name)
            for entry, f in data["functions"].items():
                if entry in functions:
                    raise ConfigError(f"{path}: functions.{entry}: defined twice")
                functions[entry] = ((f["system"], *f.get("other_systems", ())), f.get("function_short"))
            for name, entry in data["classes"].items():
                if entry not in data["functions"]:
                    raise ConfigError(f"{path}: classes.{name}: no function entry {entry!r}")
                function_of[name] = entry
            continue
        sources.append(path.name)
        groups.update((data.get("groups") or {}).keys())
        for region, spec in data["regions"].items():
            if region in regions:
                raise ConfigError(f"{path}: regions.{region}: defined twice")
            regions[region] = (
                spec["display"], tuple(spec.get("neighbors", ())), tuple(spec.get("pathologies", ())),
            )
            for label, s in spec["structures"].items():
                where = f"{path}: regions.{region}.structures.{label}"
                if label in structures:
                    raise ConfigError(f"{where}: label already defined in region {structures[label].region}")
                structures[label] = Structure(
                    label=label, region=region, display=s["display"],
                    synonyms=tuple(s.get("synonyms", ())), parents=tuple(s.get("parents", ())),
                    pair=s.get("pair"), lesion=bool(s.get("lesion", False)),
                )
        for region, (_, neighbors, _) in regions.items():
            for n in neighbors:
                if n not in regions:
                    raise ConfigError(f"{path}: regions.{region}.neighbors: unknown region {n!r}")
    names = groups | set(structures) | {s.display for s in structures.values()}
    for label, s in structures.items():
        where = f"{', '.join(sources)}: regions.{s.region}.structures.{label}"
        if s.pair and s.pair not in structures:
            raise ConfigError(f"{where}.pair: unknown label {s.pair!r}")
        unknown = [p for p in s.parents if p not in names]
        if unknown:
            raise ConfigError(f"{where}.parents: {unknown} is neither a group, a label nor a display name")
    return Pools(structures=structures, regions=regions, sources=tuple(sources),
                 functions=functions or None, function_of=function_of or None)
