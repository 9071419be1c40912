"""Templates (sandboxed Jinja, schema errors), pools (constrained distractors) and
question generators (balance, uniform option positions, determinism)."""

from __future__ import annotations

import collections
import textwrap
from pathlib import Path

import pytest

from pipeline.config.recipes import load_recipe, resolve_entry
from pipeline.config.resources import resource_dir
from pipeline.core import keys
from pipeline.errors import CaseError, ConfigError
from pipeline.qa.generators import GENERATORS
from pipeline.qa.lint import lint, lint_records
from pipeline.qa.pools import load_pools
from pipeline.qa.questions import generate_questions
from pipeline.qa.templates import load_families, render

POOLS = load_pools([resource_dir("distractor_pools") / name for name in ("totalsegmentator.yaml", "physiology.yaml")])
FAMILIES = load_families(resource_dir("templates") / "radvuqa", generators=GENERATORS)


def _family_file(tmp_path: Path, text: str, name: str = "fam.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
family: probe
task: anatomy
generator: grounding
question_type: open
answer_format: box
requires: [structure]
version: 1
variants:
  - id: v1
    text: "{text}"
  - id: v2
    text: "Where is the {{{{ structure }}}}?"
  - id: v3
    text: "Locate the {{{{ structure }}}}."
"""


@pytest.mark.parametrize(
    "text, error",
    [
        ("{{ ''.__class__.__mro__ }}", "line 1: the attribute .__class__ is not allowed in templates"),
        ("{{ structure.__class__.__subclasses__() }}",
         "line 1: the call structure.__class__.__subclasses__(...) is not allowed in templates"),
    ],
    ids=["mro", "subclasses"],
)
def test_unsafe_templates_are_rejected_at_load_with_file_variant_and_line(tmp_path, text, error):
    # more cases, and the sandbox behind this check: tests/test_template_safety.py
    with pytest.raises(ConfigError) as err:
        load_families(_family_file(tmp_path, BASE.format(text=text)), generators=GENERATORS)
    assert f"fam.yaml: variants[0] (v1): {error}" in str(err.value)


def test_undefined_values_fail_at_render_with_file_and_variant(tmp_path):
    # declared in requires, so the load accepts it; the context lacks it
    src = BASE.format(text="{{ missing }}").replace("requires: [structure]", "requires: [structure, missing]")
    fam = load_families(_family_file(tmp_path, src), generators=GENERATORS)["probe"]
    with pytest.raises(CaseError) as err:
        render(fam, fam.variants[0], {"structure": "liver"})
    assert "UndefinedError" in err.value.message and "fam.yaml" in err.value.message and "v1" in err.value.message


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.replace("question_type: open", "question_type: essay"),
         "fam.yaml: question_type: 'essay' is not one of"),
        (lambda s: s.replace("version: 1\n", ""), "fam.yaml: (root): 'version' is a required property"),
        (lambda s: s.replace("{{ structure }}?", "{{ organ }}?"),
         "variants[1] (v2): line 1: the variable 'organ' is not allowed in templates (not declared in requires"),
        (lambda s: s.replace('"Locate the {{ structure }}."', '"Locate {% if %}"'),
         "variants[2] (v3): line 1: template syntax error"),
        (lambda s: s.replace("generator: grounding", "generator: nonsense"), "generator: unknown 'nonsense'"),
        (lambda s: s.replace("  - id: v3\n    text: \"Locate the {{ structure }}.\"\n", ""),
         "variants: [{'id': 'v1'"),
    ],
    ids=["bad-enum", "missing-field", "undeclared-variable", "syntax-error", "unknown-generator", "too-few-variants"],
)
def test_family_errors_name_file_and_field(tmp_path, mutate, message):
    src = mutate(BASE.format(text="Box of {{ structure }}"))
    with pytest.raises(ConfigError) as err:
        load_families(_family_file(tmp_path, src), generators=GENERATORS)
    assert message in str(err.value)


def test_yaml_is_loaded_safely(tmp_path):
    path = _family_file(tmp_path, "family: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_families(path, generators=GENERATORS)


def test_builtin_families_lint_clean():
    assert lint(FAMILIES, POOLS) == []
    assert len(FAMILIES) == 12
    assert all(len(f.variants) >= 3 for f in FAMILIES.values())


@pytest.mark.parametrize(
    "answer", ["liver", "kidney_left", "lung_upper_lobe_left", "liver_tumor", "vertebrae_L1", "colon"],
)
def test_distractors_same_region_never_related(answer):
    for n in range(50):
        picks = POOLS.distractors(answer, 3, keys.rng(n, answer, "d"))
        assert len(picks) == 3 and answer not in picks
        region = POOLS.region_of(answer)
        assert all(POOLS.region_of(p) == region for p in picks)
        assert not any(POOLS.related(answer, p) for p in picks)
        assert len({POOLS.display(p) for p in picks}) == 3


def _pairwise_distractors(pools, answer, k, gen, candidates=None, exclude=()):
    """The draw rule spelled out pair by pair (the tabulated clash sets must agree)."""
    excluded = set(exclude) | {answer}
    if candidates is not None:
        tiers = [sorted(set(candidates))]
    else:
        region = pools.region_of(answer)
        tiers = [pools.region_members(region)] + [pools.region_members(n) for n in pools.regions[region][1]]
    chosen: list[str] = []
    for tier in tiers:
        pool = [c for c in tier if c not in excluded and not pools.related(answer, c)]
        while len(chosen) < k:
            pool = [c for c in pool if c not in chosen
                    and not any(pools.related(c, x) for x in chosen)
                    and pools.display(c).lower() not in {pools.display(x).lower() for x in chosen}]
            if not pool:
                break
            chosen.append(pool[int(gen.integers(len(pool)))])
        if len(chosen) >= k:
            break
    return chosen[:k]


def test_distractors_equal_the_pairwise_rule_for_every_label_and_candidate_lists():
    labels = sorted(POOLS.structures)
    unknown = ["mystery_gland", "Mystery Gland", "another_thing", "liver"]  # not in the pools
    for i, answer in enumerate(labels):
        args = [(answer, None, ()), (answer, labels[::7] + unknown, ()),
                (answer, None, tuple(labels[i + 1:i + 4]))]
        if POOLS.function_label(answer):
            fn = POOLS.function_label(answer)
            args.append((fn, POOLS.function_labels(), ()))
        for a, cands, exclude in args:
            for k in (1, 3):
                got = POOLS.distractors(a, k, keys.KeyedStream(i, a, "d"), candidates=cands, exclude=exclude)
                want = _pairwise_distractors(POOLS, a, k, keys.KeyedStream(i, a, "d"), cands, exclude)
                assert got == want, (a, k, cands is not None, exclude)


@pytest.mark.parametrize(
    "a, b, related",
    [("liver", "liver_tumor", True), ("kidney_left", "kidney_cyst_left", True),
     ("kidney_left", "kidney_right", False), ("duodenum", "small_bowel", True),
     ("lung_upper_lobe_left", "lung_nodules", False), ("liver", "spleen", False)],
    ids=["organ-lesion", "kidney-cyst", "left-right-pair", "parent-by-display", "siblings", "unrelated"],
)
def test_relatedness(a, b, related):
    assert POOLS.related(a, b) is related
    assert POOLS.related(b, a) is related


def test_unknown_labels_draw_from_their_own_table():
    table = ["organ_a", "organ_b", "organ_c", "organ_d"]
    picks = POOLS.distractors("organ_a", 3, keys.rng(0, "x", "y"), candidates=table)
    assert sorted(picks) == ["organ_b", "organ_c", "organ_d"]
    assert POOLS.display("renal_parenchyma_left") == "renal parenchyma left"


def _records(n: int):
    base = lint_records(POOLS)
    for i in range(n):
        r = dict(base[i % len(base)])
        r["image_id"] = keys.stable_key("rec", i)
        yield r


def test_closed_answers_are_balanced_and_mc_positions_uniform():
    answers = collections.Counter()
    positions = collections.Counter()
    pairs = collections.Counter()
    for record in _records(1500):
        for row in generate_questions(record, FAMILIES, POOLS, seed=3):
            if row["question_type"] == "closed":
                answers[row["answer"]] += 1
            elif row["question_type"] == "multiple_choice":
                assert row["options"]["ABCD".index(row["answer"])] == row["answer_text"]
                if len(row["options"]) == 4:  # two-option questions (size) are checked below
                    positions[row["answer"]] += 1
                else:
                    pairs[row["answer"]] += 1
    assert abs(answers["yes"] / sum(answers.values()) - 0.5) < 0.03
    total = sum(positions.values())
    chi2 = sum((positions[c] - total / 4) ** 2 / (total / 4) for c in "ABCD")
    assert chi2 < 16.3, positions  # p ~ 0.001 for 3 degrees of freedom
    assert set(pairs) == {"A", "B"} and abs(pairs["A"] / sum(pairs.values()) - 0.5) < 0.05


def test_generation_is_deterministic_and_independent_of_box_order():
    record = next(_records(1))
    rows = generate_questions(record, FAMILIES, POOLS, seed=9)
    shuffled = dict(record, boxes=list(reversed(record["boxes"])),
                    case_labels=list(reversed(record["case_labels"])))
    assert generate_questions(shuffled, FAMILIES, POOLS, seed=9) == rows
    assert generate_questions(record, FAMILIES, POOLS, seed=10) != rows
    assert [r["qa_id"] for r in rows] == sorted(r["qa_id"] for r in rows)


def test_rows_are_remembered_for_the_rendering_pass_per_build_and_record(monkeypatch):
    import pickle

    from pipeline.engine.units import BuildContext
    from pipeline.qa import questions

    monkeypatch.setattr(questions, "_MEMO", collections.OrderedDict())
    monkeypatch.setattr(questions, "_MEMO_BYTES", [0])
    ctx = BuildContext(kind="slices", output="", input_root="", settings=None,
                       families=FAMILIES, pools=POOLS, seed=9, qa_fp="fp1")
    record, other = list(_records(2))
    fresh = generate_questions(record, FAMILIES, POOLS, seed=9, defer=True)
    first = questions.questions_for(record, ctx)
    assert first == fresh
    first[0]["question"] = "changed by a caller"
    first[0].pop("qa_id")
    assert questions.questions_for(record, ctx) == fresh  # callers' edits never reach it
    # another build (fingerprint) or another record content is another entry
    ctx2 = BuildContext(**{**ctx.__dict__, "seed": 10, "qa_fp": "fp2"})
    assert questions.questions_for(record, ctx2) == generate_questions(
        record, FAMILIES, POOLS, seed=10, defer=True)
    moved = dict(record, boxes=record["boxes"][:1])
    assert questions.questions_for(moved, ctx) == generate_questions(
        moved, FAMILIES, POOLS, seed=9, defer=True)
    assert len(questions._MEMO) == 3
    # bounded by (pickled) bytes held: once full it keeps what it holds (both passes visit the records
    # in the same order: evicting the oldest would make every lookup miss) and drops only
    # other builds' entries
    monkeypatch.setattr(questions, "MEMO_MAX_BYTES", questions._MEMO_BYTES[0])
    assert questions.questions_for(other, ctx) == generate_questions(other, FAMILIES, POOLS, seed=9, defer=True)
    assert len(questions._MEMO) == 3  # full: not remembered, nothing of this build dropped
    ctx3 = BuildContext(**{**ctx.__dict__, "qa_fp": "fp3"})
    questions.questions_for(other, ctx3)
    assert [k[0] for k in questions._MEMO][-1] == "fp3"
    assert questions._MEMO_BYTES[0] <= questions.MEMO_MAX_BYTES
    # pools keep their memo tables out of pickles
    POOLS.related("liver", "spleen")
    POOLS.distractors("liver", 3, questions.keys.KeyedStream(1, "k", "p"))
    memos = {"_related", "_clash_sets", "_near_sets", "_all_labels"}
    assert memos <= set(POOLS.__dict__)
    assert not memos & set(pickle.loads(pickle.dumps(POOLS)).__dict__)


def test_deferred_rows_are_worded_by_apply_exactly_as_undeferred_ones():
    from pipeline.qa.balance import Rules, apply

    deferred_seen = 0
    for record in _records(40):
        plain = [apply(r, Rules(), FAMILIES, POOLS)
                 for r in generate_questions(record, FAMILIES, POOLS, seed=5)]
        later = generate_questions(record, FAMILIES, POOLS, seed=5, defer=True)
        deferred_seen += sum(r["question"] is None for r in later)
        assert [apply(r, Rules(), FAMILIES, POOLS) for r in later] == plain
    assert deferred_seen  # some families are balanced, so their wording was deferred


def test_answers_follow_the_record_facts():
    record = lint_records(POOLS)[0]  # axial: liver right, spleen left, colon 2 components
    seen = set()
    for seed in range(40):
        for row in generate_questions(record, FAMILIES, POOLS, seed=seed):
            if row["family"] == "laterality_open":
                expected = {"liver": "right", "spleen": "left", "left kidney": "left"}
                structure = next(k for k in expected if f"the {k} " in row["question"] + " ")
                assert row["answer"] == expected[structure]
                seen.add("laterality")
            if row["family"] == "grounding_open":
                box = next(b for b in record["boxes"] if POOLS.display(b["label"]) in row["question"])
                assert row["answer_box"] == [box["x_min"], box["y_min"], box["x_max"], box["y_max"]]
                seen.add("grounding")
            if row["family"] == "component_count_open" and "colon" in row["question"]:
                assert row["answer"] == "2"
                seen.add("count")
    assert seen == {"laterality", "grounding", "count"}


def test_recipe_cannot_point_outside_its_folder(tmp_path):
    recipe_text = (resource_dir("recipes") / "sample.yaml").read_text()
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text.replace("templates: [radvuqa]", "templates: [../../etc]"))
    recipe = load_recipe(str(path))
    with pytest.raises(ConfigError, match="must be a built-in name or a path inside"):
        resolve_entry(recipe, "templates", "../../etc", "questions.templates[0]")
    with pytest.raises(ConfigError, match="must be a built-in name or a path inside"):
        resolve_entry(recipe, "templates", "/etc", "questions.templates[0]")


def test_recipe_schema_errors_name_the_path(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text((resource_dir("recipes") / "sample.yaml").read_text().replace(
        "planes: [axial, coronal]", "planes: [axial, oblique]"))
    with pytest.raises(ConfigError, match=r"r.yaml: slices.planes\[1\]: 'oblique' is not one of"):
        load_recipe(str(path))
