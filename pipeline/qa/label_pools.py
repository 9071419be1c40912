"""Label pools of labelled 2D trees (``distractor_pools/radimagenet.yaml``): regions and labels
per modality, display names, abnormal flags, synonyms.

Questions (nine per image plus a caption; template families under
``templates/radimagenet``) draw their options from :class:`LabelPools`: anatomy options
from the other regions of the same modality, pathology options from the same region,
never a synonym of the answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.checked import load_checked
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class LabelPools:
    """Regions and labels per modality, display names, abnormal flags, synonyms."""

    modalities: dict  # modality -> {"display", "metadata", "regions": {region: {"display", "aliases", "labels"}}}
    normal_label: str = "normal"
    normal_display: str = "no pathology seen"
    overrides: dict = field(default_factory=dict)
    synonyms: dict = field(default_factory=dict)  # label -> frozenset of its group
    added: tuple = ()  # (modality, region, label) found in the tree, not in the pools

    # Pools protocol used by the shared samplers -------------------------------
    def known(self, label: str) -> bool:
        return any(label in r["labels"] for m in self.modalities.values() for r in m["regions"].values())

    def display(self, label: str) -> str:
        if label == self.normal_label:
            return self.normal_display
        return self.overrides.get(label) or label.replace("_", " ").strip()

    def related(self, a: str, b: str) -> bool:
        return a == b or b in self.synonyms.get(a, ()) or self.display(a).lower() == self.display(b).lower()

    # Label facts --------------------------------------------------------------
    def is_abnormal(self, label: str) -> bool:
        return label != self.normal_label

    def modality_display(self, modality: str) -> str:
        return self.modalities[modality]["display"]

    def modality_metadata(self, modality: str) -> str:
        return self.modalities[modality]["metadata"]

    def region_display(self, modality: str, region: str) -> str:
        return self.modalities[modality]["regions"][region]["display"]

    def regions(self, modality: str) -> list[str]:
        return sorted(self.modalities[modality]["regions"])

    def labels(self, modality: str, region: str) -> list[str]:
        return sorted(self.modalities[modality]["regions"][region]["labels"])

    def resolve_region(self, modality: str, folder: str) -> str:
        """Region id for a folder name (id, display or alias, case-insensitive)."""
        wanted = folder.lower().replace(" ", "_")
        for rid, r in self.modalities.get(modality, {}).get("regions", {}).items():
            names = {rid.lower(), r["display"].lower().replace(" ", "_")}
            names |= {a.lower().replace(" ", "_") for a in r.get("aliases", ())}
            if wanted in names:
                return rid
        return folder

    def with_observed(self, triples: Iterable[tuple[str, str, str]]) -> LabelPools:
        """Pools extended by the (modality, region, label) triples found in a tree."""
        mods = {m: {**v, "regions": {r: {**rv, "labels": set(rv["labels"])} for r, rv in v["regions"].items()}}
                for m, v in self.modalities.items()}
        added = []
        for modality, region, label in sorted(set(triples)):
            mod = mods.setdefault(modality, {"display": modality, "metadata": modality.lower(),
                                             "regions": {}})
            reg = mod["regions"].setdefault(
                region, {"display": region.replace("_", " ").strip(), "aliases": (), "labels": set()})
            if label not in reg["labels"]:
                reg["labels"].add(label)
                added.append((modality, region, label))
        for mod in mods.values():
            for reg in mod["regions"].values():
                reg["labels"] = tuple(sorted(reg["labels"] | {self.normal_label}))
        return LabelPools(mods, self.normal_label, self.normal_display, self.overrides,
                          self.synonyms, tuple(added))

    def draw(self, answer: str, candidates: list[str], k: int, gen) -> list[str]:
        """``k`` of ``candidates`` (sorted first), never the answer or its synonyms."""
        pool = sorted(c for c in set(candidates) if not self.related(answer, c))
        out: list[str] = []
        while len(out) < k and pool:
            pick = pool.pop(gen.integers(len(pool)))
            if all(not self.related(pick, x) for x in out):
                out.append(pick)
        return out


def load_label_pools(paths: Iterable[str | Path]) -> LabelPools:
    modalities: dict = {}
    overrides: dict = {}
    synonyms: dict = defaultdict(set)
    normal = ("normal", "no pathology seen")
    for path in paths:
        # parsed and validated unless unchanged since the last build (config/checked): the
        # RadImageNet pool's YAML took 0.023 s of CPU of every regenerate (measured)
        data = load_checked(Path(path), "label_pool")
        normal = (data.get("normal_label", normal[0]), data.get("normal_display", normal[1]))
        for m, spec in data["modalities"].items():
            mod = modalities.setdefault(m, {"display": spec["display"], "metadata": spec["metadata"],
                                            "images": spec.get("images"), "regions": {}})
            for rid, r in spec["regions"].items():
                if rid in mod["regions"]:
                    raise ConfigError(f"{path}: modalities.{m}.regions.{rid}: defined twice")
                mod["regions"][rid] = {
                    "display": r["display"], "aliases": tuple(r.get("aliases", ())),
                    "images": r.get("images"),
                    "labels": {name: (v or {}).get("images") for name, v in r["labels"].items()},
                }
        overrides.update(data.get("display_overrides") or {})
        for group in data.get("synonym_groups") or []:
            for label in group:
                synonyms[label] |= set(group) - {label}
    for m in modalities.values():
        for r in m["regions"].values():
            r["counts"] = dict(r["labels"])
            r["labels"] = tuple(sorted(set(r["labels"]) | {normal[0]}))
    return LabelPools(modalities, normal[0], normal[1], overrides,
                      {k: frozenset(v) for k, v in synonyms.items()})

