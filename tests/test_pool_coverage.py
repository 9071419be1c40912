"""The TotalSegmentator pools cover every built-in class name.

``distractor_pools/totalsegmentator_classes.yaml`` holds TotalSegmentator v2's class
names (117 CT, 50 MR); ``totalsegmentator.yaml`` must give each of them a region, a
plain display name, its left/right pair and parents, and ``physiology.yaml`` a
function unless the name is listed in :data:`NO_FUNCTION` with a reason.

Each check is a function returning a list of problems, run on the built-in files
(expecting none) and on a broken copy (expecting the breakage to be named), so that
every check is shown able to fail.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config.resources import resource_dir
from pipeline.config.validation import validate
from pipeline.config.yaml_files import load_yaml
from pipeline.qa.pools import load_pools

POOLS_DIR = resource_dir("distractor_pools")
CLASSES = POOLS_DIR / "totalsegmentator_classes.yaml"
POOL = POOLS_DIR / "totalsegmentator.yaml"
PHYSIOLOGY = POOLS_DIR / "physiology.yaml"

#: class names without a physiology entry, on purpose
NO_FUNCTION = {
    "kidney_cyst_left": "a lesion, not a structure with a function",
    "kidney_cyst_right": "a lesion, not a structure with a function",
    "atrial_appendage_left": "no single well-established function (a pouch of the left atrium)",
}

#: (whole, part): classes of which one contains the other (CT and MR lists mix in one
#: pool), so neither may be offered as a wrong option beside the other
WHOLE_AND_PART = [
    *[("lung_left", f"lung_{lobe}_left") for lobe in ("upper_lobe", "lower_lobe")],
    *[("lung_right", f"lung_{lobe}_right") for lobe in ("upper_lobe", "middle_lobe", "lower_lobe")],
    *[("vertebrae", f"vertebrae_{level}") for level in
      [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]],
    ("sacrum", "vertebrae_S1"),
    ("heart", "atrial_appendage_left"),
    ("kidney_left", "kidney_cyst_left"),
    ("kidney_right", "kidney_cyst_right"),
]


def _classes(data=None) -> dict:
    data = load_yaml(CLASSES) if data is None else data
    validate(data, "structure_classes", str(CLASSES))
    return data


def _all_names(classes: dict) -> list[str]:
    return sorted(set(classes["ct"]) | set(classes["mr"]))


def _load_pool(tmp_path: Path, data: dict):
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_pools([path])


# --------------------------------------------------------------------------- checks


def class_list_problems(classes: dict) -> list[str]:
    out = []
    for modality, n in (("ct", 117), ("mr", 50)):
        names = classes[modality]
        if len(names) != n:
            out.append(f"{modality}: {len(names)} names, expected {n}")
        if len(set(names)) != len(names):
            out.append(f"{modality}: duplicate names")
    # label order (position + 1 = label value), spot-checked at both ends and in between
    for modality, position, name in (("ct", 1, "spleen"), ("ct", 26, "vertebrae_S1"), ("ct", 90, "brain"),
                                     ("ct", 117, "costal_cartilages"), ("mr", 1, "spleen"),
                                     ("mr", 19, "vertebrae"), ("mr", 50, "brain")):
        names = classes[modality]
        if len(names) < position or names[position - 1] != name:
            out.append(f"{modality}: label {position} is not {name}")
    return out


def coverage_problems(pools, names: list[str]) -> list[str]:
    out = []
    for name in names:
        if not pools.known(name):
            out.append(f"{name}: not in the pool")
            continue
        display = pools.display(name)
        if "_" in display or display != display.strip() or not display:
            out.append(f"{name}: display {display!r} is not plain text")
    seen: dict[str, str] = {}
    for name in names:
        if pools.known(name):
            other = seen.setdefault(pools.display(name).lower(), name)
            if other != name:
                out.append(f"{name}: same display name as {other}")
    return out


def _other_side(label: str) -> str | None:
    parts = label.split("_")
    for a, b in (("left", "right"), ("right", "left")):
        if a in parts:
            return "_".join(b if p == a else p for p in parts)
    return None


def pair_problems(pools) -> list[str]:
    out = []
    for label, s in sorted(pools.structures.items()):
        if s.pair is not None:
            other = pools.structures.get(s.pair)
            if other is None:
                out.append(f"{label}: pair {s.pair!r} is not a structure")
            elif other.pair != label:
                out.append(f"{label}: pair {s.pair!r} does not pair back (its pair: {other.pair!r})")
            if s.pair == label:
                out.append(f"{label}: paired with itself")
        mirror = _other_side(label)
        if mirror in pools.structures and s.pair != mirror:
            out.append(f"{label}: {mirror} exists but pair is {s.pair!r}")
    return out


def parent_problems(data: dict, pools) -> list[str]:
    groups = set(data.get("groups") or {})
    return [f"{label}: parent {p!r} is neither a group nor a structure"
            for label, s in sorted(pools.structures.items()) for p in s.parents
            if p not in groups and p not in pools.structures]


def related_problems(pools) -> list[str]:
    return [f"{whole} and {part} are not related (parents)" for whole, part in WHOLE_AND_PART
            if not (pools.known(whole) and pools.known(part) and pools.related(whole, part))]


def physiology_problems(data: dict, names: list[str]) -> list[str]:
    validate(data, "physiology", str(PHYSIOLOGY))
    out = []
    functions, classes = data["functions"], data["classes"]
    known = set(names)
    for name, entry in sorted(classes.items()):
        if name not in known:
            out.append(f"classes.{name}: not a TotalSegmentator class name")
        if entry not in functions:
            out.append(f"classes.{name}: no function entry {entry!r}")
    used = set(classes.values())
    out += [f"functions.{f}: no class uses it" for f in sorted(set(functions) - used)]
    for name in names:
        if name in NO_FUNCTION:
            if name in classes:
                out.append(f"{name}: listed in NO_FUNCTION ({NO_FUNCTION[name]}) but has an entry")
        elif name not in classes:
            out.append(f"{name}: no physiology entry")
    out += [f"NO_FUNCTION.{n}: not a class name" for n in sorted(set(NO_FUNCTION) - known)]
    shorts: dict[str, str] = {}
    for key, f in sorted(functions.items()):
        if "function_short" in f:
            other = shorts.setdefault(f["function_short"].lower(), key)
            if other != key:
                out.append(f"functions.{key}: same function_short as {other}")
        if f["system"] in f.get("other_systems", ()):
            out.append(f"functions.{key}: system repeated in other_systems")
    return out


# --------------------------------------------------------------------------- built-in files


def test_class_lists_have_117_ct_and_50_mr_names_in_label_order():
    assert class_list_problems(_classes()) == []


def test_every_class_name_is_a_pool_structure_with_a_plain_display_name():
    assert coverage_problems(load_pools([POOL]), _all_names(_classes())) == []


def test_every_pair_is_symmetric_and_every_left_right_class_has_one():
    assert pair_problems(load_pools([POOL])) == []


def test_every_parent_is_a_group_or_a_structure():
    assert parent_problems(load_yaml(POOL), load_pools([POOL])) == []


def test_wholes_and_their_parts_are_related():
    assert related_problems(load_pools([POOL])) == []


def test_every_class_with_a_function_has_a_physiology_entry():
    assert physiology_problems(load_yaml(PHYSIOLOGY), _all_names(_classes())) == []


# --------------------------------------------------------------------------- each check can fail


def test_class_list_check_names_a_missing_or_moved_name():
    classes = copy.deepcopy(_classes())
    classes["ct"].pop()
    classes["mr"][0], classes["mr"][1] = classes["mr"][1], classes["mr"][0]
    assert class_list_problems(classes) == [
        "ct: 116 names, expected 117", "ct: label 117 is not costal_cartilages", "mr: label 1 is not spleen"]


def test_coverage_check_names_a_missing_class_and_an_underscore_display(tmp_path):
    data = load_yaml(POOL)
    del data["regions"]["chest_wall"]["structures"]["sternum"]
    data["regions"]["abdomen"]["structures"]["spleen"]["display"] = "spleen_organ"
    problems = coverage_problems(_load_pool(tmp_path, data), _all_names(_classes()))
    assert problems == ["spleen: display 'spleen_organ' is not plain text", "sternum: not in the pool"]


def test_pair_check_names_a_one_way_and_a_missing_pair(tmp_path):
    data = load_yaml(POOL)
    structures = data["regions"]["upper_limb"]["structures"]
    structures["humerus_right"]["pair"] = "scapula_left"
    del structures["clavicula_left"]["pair"]
    problems = pair_problems(_load_pool(tmp_path, data))
    assert "clavicula_left: clavicula_right exists but pair is None" in problems
    assert "humerus_right: pair 'scapula_left' does not pair back (its pair: 'scapula_right')" in problems
    assert "humerus_right: humerus_left exists but pair is 'scapula_left'" in problems


def test_parent_check_names_a_display_name_used_as_parent(tmp_path):
    # the loader accepts display names as parents; the built-in pool uses groups and labels only
    data = load_yaml(POOL)
    data["regions"]["chest_wall"]["structures"]["sternum"]["parents"] = ["left first rib"]
    assert parent_problems(data, _load_pool(tmp_path, data)) == [
        "sternum: parent 'left first rib' is neither a group nor a structure"]


def test_related_check_names_a_part_without_its_whole(tmp_path):
    data = load_yaml(POOL)
    data["regions"]["spine"]["structures"]["vertebrae_L3"]["parents"].remove("vertebrae")
    assert related_problems(_load_pool(tmp_path, data)) == ["vertebrae and vertebrae_L3 are not related (parents)"]


def test_physiology_check_names_unknown_missing_and_excluded_names():
    data = load_yaml(PHYSIOLOGY)
    del data["classes"]["sternum"]
    data["classes"]["appendix"] = "colon"
    data["classes"]["kidney_cyst_left"] = "kidney"
    data["functions"]["unused"] = dict(data["functions"]["colon"])
    problems = physiology_problems(data, _all_names(_classes()))
    assert problems == [
        "classes.appendix: not a TotalSegmentator class name",
        "functions.sternum: no class uses it",
        "functions.unused: no class uses it",
        "kidney_cyst_left: listed in NO_FUNCTION (a lesion, not a structure with a function) but has an entry",
        "sternum: no physiology entry",
        "functions.unused: same function_short as colon",
    ]


@pytest.mark.parametrize("field, value, message", [
    ("system", "immune", "'immune' is not one of"),
    ("function_short", "stores urine", "does not match"),
    ("function", "stores urine", "does not match"),
])
def test_physiology_schema_rejects_bad_entries(field, value, message):
    data = load_yaml(PHYSIOLOGY)
    data["functions"]["urinary_bladder"][field] = value
    with pytest.raises(Exception, match=re.escape(f"functions.urinary_bladder.{field}: ") + ".*" + re.escape(message)):
        physiology_problems(data, _all_names(_classes()))
