"""3D-RAD-style volume-level question generators, for the ``volumes`` kind.

Records are volume facts (see :func:`pipeline.kinds.volumes.volume_record`):
``volume_id, case_key, patient_key, split, study_order, modality, structures``
(``label, volume_ml, mean_hu``), ``lesions`` (:func:`pipeline.core.volume_facts.lesion_facts`),
``findings`` (the recipe's finding labels) with ``present`` and ``history``
(presence in the patient's earlier studies, oldest first).

Generators may return a list: one question per target (e.g. per finding).
Numeric answers carry ``value``, ``unit`` and ``tolerance``.  Existence
questions carry ``balance = (finding, u)`` for the exact, shard-independent
yes/no balancing of :func:`pipeline.core.volume_facts.balance_thresholds`.
"""

from __future__ import annotations

from pipeline.core.volume_facts import (
    HU_TOLERANCE,
    TEMPORAL_CLASSES,
    VOLUME_TOLERANCE,
    temporal_label,
)
from pipeline.qa.generators.common import MODALITY_NAMES, shuffled

APPEARANCES = ("hypodense", "hyperdense", "isodense", "calcified")


def _kind(pools, label: str) -> str:
    """The lesion's kind word (tumor, nodule, cyst …) without its organ."""
    return pools.display(label).split()[-1]


def _unique_kind_lesions(record, pools):
    kinds = [_kind(pools, les["label"]) for les in record["lesions"]]
    return [les for les in record["lesions"] if kinds.count(_kind(pools, les["label"])) == 1]


def _base(record) -> dict:
    return {"modality_name": MODALITY_NAMES.get(record["modality"], record["modality"])}


def gen_anomaly_presence(record, family, pools, gen, settings):
    abnormal = bool(record["lesions"])
    ask_normal = bool(gen.integers(2))  # polarity coin keeps yes/no at 50 %
    return {"context": _base(record) | {"ask_normal": ask_normal},
            "answer": "yes" if abnormal != ask_normal else "no", "subtask": "presence"}


def gen_anomaly_which(record, family, pools, gen, settings):
    """Which abnormality is present.  Options are the recipe's findings absent from this
    volume (two to four options: a volume with several findings offers fewer), so every
    option is the answer of some other volume.  Findings no volume has (the former
    ``extra_findings``) are never offered: never correct, a blind model learned to skip
    them (56 % against 25 % on a 60-patient sample).  Balanced (``options``): the
    distractors become the lesions of other volumes by quota."""
    if not record["lesions"]:
        return None
    target = record["lesions"][gen.integers(len(record["lesions"]))]
    present = {les["label"] for les in record["lesions"]}
    present_words = {w for p in present for w in pools.display(p).split()}

    def unrelated(names):
        return sorted(p for p in names if not set(p.split()) & present_words - {"left", "right"})

    pool = unrelated({pools.display(f) for f in record["findings"] if f not in present})
    picks = []
    while len(picks) < 3 and pool:
        picks.append(pool.pop(gen.integers(len(pool))))
    if not picks:
        return None
    return {"context": _base(record), "correct": pools.display(target["label"]),
            "distractors": picks, "subtask": "which", "label": target["label"],
            "pool": "lesions", "exclude": sorted(present)}


def gen_observation_location(record, family, pools, gen, settings):
    """Which organ holds the lesion, asked of volumes with exactly one lesion.  The
    question never names the lesion's kind: "tumor" or "nodule" would give the organ away."""
    if len(record["lesions"]) != 1 or not record["lesions"][0]["organ"]:
        return None
    les = record["lesions"][0]
    return {"context": _base(record), "answer": pools.display(les["organ"]), "subtask": "location"}


def gen_observation_appearance(record, family, pools, gen, settings):
    lesions = [les for les in _unique_kind_lesions(record, pools) if les["density"]]
    if not lesions:
        return None
    les = lesions[gen.integers(len(lesions))]
    wrong = shuffled(gen, [a for a in APPEARANCES if a != les["density"]])
    return {"context": _base(record) | {"kind": _kind(pools, les["label"]),
                                        "organ": pools.display(les["organ"])},
            "correct": les["density"], "distractors": wrong, "subtask": "appearance"}


def gen_computation(record, family, pools, gen, settings):
    """Up to four numeric questions: organ volume, lesion size, lesion diameter, mean HU."""
    out = []
    organs = [s for s in record["structures"] if not pools.is_lesion(s["label"])]
    if organs:
        s = organs[gen.integers(len(organs))]
        v = s["volume_ml"]
        out.append({"context": _base(record) | {"structure": pools.display(s["label"]), "quantity": "volume"},
                    "answer": f"{v:.1f} mL", "value": v, "unit": "mL",
                    "tolerance": round(VOLUME_TOLERANCE * v, 3), "subtask": "volume"})
        s = organs[gen.integers(len(organs))]
        out.append({"context": _base(record) | {"structure": pools.display(s["label"]), "quantity": "attenuation"},
                    "answer": f"{s['mean_hu']:.0f} HU", "value": s["mean_hu"], "unit": "HU",
                    "tolerance": HU_TOLERANCE, "subtask": "mean_hu"})
    lesions = [les for les in _unique_kind_lesions(record, pools) if les["organ"]]
    if lesions:
        les = lesions[gen.integers(len(lesions))]
        ctx = _base(record) | {"structure": f"{_kind(pools, les['label'])} in the {pools.display(les['organ'])}"}
        step = max(record["spacing_mm"][:2])
        out.append({"context": ctx | {"quantity": "size"},
                    "answer": f"{les['long_mm']:.1f} x {les['short_mm']:.1f} mm", "value": les["long_mm"],
                    "unit": "mm", "tolerance": round(step, 3), "subtask": "lesion_size"})
        out.append({"context": ctx | {"quantity": "diameter"},
                    "answer": f"{les['max_diameter_mm']:.1f} mm", "value": les["max_diameter_mm"],
                    "unit": "mm", "tolerance": round(max(record["spacing_mm"]), 3), "subtask": "diameter"})
    return out or None


def gen_existence3d(record, family, pools, gen, settings):
    out = []
    for finding in record["findings"]:
        present = finding in record["present"]
        out.append({"context": _base(record) | {"finding": pools.display(finding)},
                    "answer": "yes" if present else "no", "subtask": finding})
    return out


def _temporal(record, family, pools, gen, settings, longitudinal: bool):
    if not record["history_orders"]:
        return None
    out = []
    for finding in record["findings"]:
        seq = [*record["history"][finding], int(finding in record["present"])]
        label = temporal_label(seq)
        ctx = _base(record) | {"finding": pools.display(finding),
                               "sequence": "[" + ", ".join(str(x) for x in seq[:-1]) + "]",
                               "n_prior": len(seq) - 1}
        out.append({"context": ctx, "correct": label,
                    "distractors": shuffled(gen, [c for c in TEMPORAL_CLASSES if c != label]),
                    "subtask": finding})
    return out or None


def gen_static_temporal(record, family, pools, gen, settings):
    return _temporal(record, family, pools, gen, settings, longitudinal=False)


def gen_longitudinal_temporal(record, family, pools, gen, settings):
    return _temporal(record, family, pools, gen, settings, longitudinal=True)


GENERATORS = {
    "anomaly_presence": gen_anomaly_presence,
    "anomaly_which": gen_anomaly_which,
    "observation_location": gen_observation_location,
    "observation_appearance": gen_observation_appearance,
    "computation": gen_computation,
    "existence3d": gen_existence3d,
    "static_temporal": gen_static_temporal,
    "longitudinal_temporal": gen_longitudinal_temporal,
}
