"""The optional ``meta.csv`` at the input root, and the splits it names.

TotalSegmentator v2's table is ``;``-separated with the columns
``image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp;pathology;
pathology_location`` (``,`` is accepted too).  Only four columns are read:

* ``image_id``: the case folder (required);
* ``patient_id``: the patient (default: the case is its own patient; v2 has no such column);
* ``study_order``: the order of a patient's studies (integer, default 0);
* ``split``: the official split (``train``/``val``/``test``; ``val`` means ``validation``).

Every other column (age, gender, institute, scanner, pathology …) is never read into a
:class:`MetaRow`, so it cannot reach the corpus; no recipe option maps one today.

Splits (:func:`resolve_splits`, when the recipe's ``splits.use_meta_split`` is on, the
default): a patient's split is the split the table gives its cases.  Patients never straddle
splits: when a patient's cases are given different splits, the patient goes to the split most
of its cases name, a tie going to the split that comes first in the recipe's
``splits.fractions`` (train, validation, test); a split the recipe does not define is ignored,
and a patient none of whose cases has a usable split is split by the keyed hash as without a
table.  The build says what it did in the manifest's ``counts.discover.meta_split`` and its
summary.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pipeline.errors import CaseError

META_TABLE = "meta.csv"
#: Split names as the table writes them → the corpus's split names.
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
#: How a patient whose cases the table puts in several splits is placed (for the manifest).
STRADDLE_RULE = ("the split most of the patient's cases name; a tie goes to the first in the "
                 "recipe's splits.fractions order")


@dataclass(frozen=True)
class MetaRow:
    """What the build reads of one row: patient id, study order, split (``""``: none)."""

    patient: str
    order: int = 0
    split: str = ""


def normalise_split(text: str) -> str:
    """A table's split value as a corpus split name (``val`` → ``validation``)."""
    value = text.strip().lower()
    return SPLIT_ALIASES.get(value, value)


def parse_meta_table(text: str) -> dict[str, MetaRow]:
    """``{case folder: MetaRow}`` from the text of a ``meta.csv``."""
    first = text.split("\n", 1)[0]
    dialect = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=dialect)
    if not reader.fieldnames or "image_id" not in reader.fieldnames:
        raise CaseError(
            "discover", "meta.missing_column",
            f"columns: found {reader.fieldnames}, expected an 'image_id' column",
            META_TABLE,
        )
    table = {}
    for line, row in enumerate(reader, start=2):
        case = (row.get("image_id") or "").strip()
        if not case:
            continue
        patient = (row.get("patient_id") or "").strip() or case
        order_text = (row.get("study_order") or "").strip()
        try:
            order = int(order_text) if order_text else 0
        except ValueError as err:
            raise CaseError(
                "discover", "meta.bad_value",
                f"line {line}: study_order: found {order_text!r}, expected an integer",
                META_TABLE,
            ) from err
        table[case] = MetaRow(patient, order, normalise_split(row.get("split") or ""))
    return table


def resolve_splits(cases: Iterable, splits: Sequence[str], hash_split: Callable[[str], str],
                   use_meta: bool = True) -> tuple[dict[str, str], dict]:
    """``({patient key: split}, note)`` of ``cases`` (objects with ``patient_key`` and the
    table's ``split``); ``splits``: the recipe's split names in order; ``hash_split(patient
    key)``: the split without a table.  ``note`` (empty when the table gives no split or
    ``use_meta`` is off) counts what the table decided, for the manifest."""
    votes: dict[str, Counter] = {}
    patients: list[str] = []
    for case in cases:
        if case.patient_key not in votes:
            votes[case.patient_key] = Counter()
            patients.append(case.patient_key)
        if use_meta and case.split:
            votes[case.patient_key][case.split] += 1
    chosen: dict[str, str] = {}
    note = Counter()
    for patient in sorted(patients):
        given = votes[patient]
        usable = {s: n for s, n in given.items() if s in splits}
        if given.keys() - usable.keys():
            note["cases_with_a_split_the_recipe_lacks"] += sum(
                n for s, n in given.items() if s not in usable)
        if not usable:
            chosen[patient] = hash_split(patient)
            note["patients_split_by_hash"] += 1
            continue
        best = max(usable.values())
        chosen[patient] = next(s for s in splits if usable.get(s) == best)
        note["patients_from_table"] += 1
        if len(usable) > 1:
            note["patients_in_several_splits"] += 1
            note["cases_moved"] += sum(n for s, n in usable.items() if s != chosen[patient])
    if not any(votes.values()):
        return chosen, {}
    return chosen, {"table": META_TABLE, "rule": STRADDLE_RULE, **dict(sorted(note.items()))}
