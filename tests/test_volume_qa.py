"""Recipe 3d-rad: computed answers against ground truth, temporal labels on a scripted
timeline, exact existence balancing, the volumes config and byte-reproducibility."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config.recipes import load_recipe
from pipeline.core import keys
from pipeline.core.geometry import Geometry
from pipeline.core.volume_facts import (
    TEMPORAL_CLASSES,
    axial_size,
    density,
    lesion_facts,
    max_diameter,
    temporal_label,
)
from pipeline.inputs.phantoms import LESIONS, TIMELINES, longitudinal_lesions, make_phantom
from pipeline.inputs.sample import write_longitudinal_sample
from pipeline.kinds.base import load_questions
from pipeline.launch.build import build
from pipeline.qa.balance import apply, candidate, rules_from
from pipeline.qa.lint import lint_records
from pipeline.qa.questions import generate_questions


@pytest.mark.parametrize("n, m, dx, dy", [(12, 4, 0.7, 1.3), (5, 5, 1.0, 1.0), (1, 9, 2.0, 0.5), (3, 1, 1.0, 1.0)])
def test_axial_size_is_exact_on_voxel_aligned_rectangles(n, m, dx, dy):
    mask = np.zeros((20, 20, 3), bool)
    mask[2:2 + n, 5:5 + m, 1] = True
    long_axis, perp, k = axial_size(mask, (dx, dy, 5.0))
    expected = math.hypot(n * dx, m * dy)
    assert long_axis == pytest.approx(expected, abs=1e-9)
    assert perp == pytest.approx(2 * n * dx * m * dy / expected, abs=1e-9)
    assert k == 1


def test_max_diameter_is_exact_on_a_box():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:8, 3:12, 5:9] = True
    assert max_diameter(mask, (1.0, 2.0, 3.0)) == pytest.approx(math.sqrt(6**2 + 18**2 + 12**2), abs=1e-9)


@pytest.mark.parametrize("seq, label", [([1, 1, 1], "Refractory"), ([1, 0, 1], "Refractory"), ([1, 1, 0], "Resolved"),
                                        ([0, 0, 1], "New"), ([0, 0, 0], "No abnormality"), ([0, 1], "New")])
def test_temporal_labels(seq, label):
    assert temporal_label(seq) == label


def test_density_margin():
    assert density(15, 60) == "hypodense"
    assert density(100, 60) == "hyperdense"
    assert density(65, 60) == "isodense"


def test_lesion_facts_against_the_phantom():
    p = make_phantom(0, lesions={"liver_tumor": 1.0}, modality="CT")
    geom = Geometry(p.image.shape, p.spacing, p.origin)
    organs = [n for n in p.masks if n not in LESIONS]
    facts = lesion_facts("liver_tumor", p.masks["liver_tumor"], p.image, p.masks, geom, organs)
    truth_ml = p.masks["liver_tumor"].sum() * np.prod(p.spacing) / 1000
    assert facts["organ"] == "liver"
    assert facts["volume_ml"] == pytest.approx(truth_ml, rel=0.01)
    assert facts["density"] == "hypodense"  # 15 HU in a 60 HU liver
    assert facts["long_mm"] >= facts["short_mm"] > 0
    assert facts["max_diameter_mm"] >= facts["long_mm"]


@pytest.fixture(scope="module")
def longitudinal(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    write_longitudinal_sample(root, n_patients=4)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, longitudinal):
    out = tmp_path_factory.mktemp("3drad")
    result = build("3d-rad", str(out), input_dir=str(longitudinal), log=lambda m: None)
    assert result.exit_code == 0
    return out, result


def _case_keys():
    return {keys.pseudonym(keys.DEFAULT_PSEUDONYM_KEY, "case", f"p{p + 1:03d}t{t + 1}"): (p, t)
            for p in range(4) for t in range(3)}


def test_all_six_tasks_and_answer_distribution_in_manifest(built):
    out, result = built
    tasks = set(result.manifest["tasks"])
    assert tasks == {"anomaly_detection", "image_observation", "medical_computation", "existence_detection",
                     "static_temporal_diagnosis", "longitudinal_temporal_diagnosis"}
    assert set(result.manifest["answers"]) == tasks
    assert "## Answer distribution per task" in (out / "README.md").read_text()


def test_temporal_answers_follow_the_scripted_timeline(built):
    out, _ = built
    by_case = _case_keys()
    rows = pq.read_table(out / "qa").to_pylist()
    checked = 0
    for r in rows:
        if r["task"] not in ("static_temporal_diagnosis", "longitudinal_temporal_diagnosis"):
            continue
        p, t = by_case[r["case_key"]]
        finding = r["subtask"]
        seq = [int(finding in longitudinal_lesions(p, s)) for s in range(t + 1)]
        assert r["answer_text"] == temporal_label(seq), (p, t, finding)
        if r["task"] == "longitudinal_temporal_diagnosis":
            assert "[" + ", ".join(map(str, seq[:-1])) + "]" in r["question"]
        checked += 1
    assert checked >= 12
    assert t in (1, 2)
    assert len(TIMELINES) == 4


def test_computed_answers_match_ground_truth(built):
    out, _ = built
    by_case = _case_keys()
    rows = [r for r in pq.read_table(out / "qa").to_pylist() if r["subtask"] == "volume"]
    assert rows
    from pipeline.config.resources import resource_dir
    from pipeline.qa.pools import load_pools

    pools = load_pools([resource_dir("distractor_pools") / "totalsegmentator.yaml"])
    names = {pools.display(label): label for label in pools.structures}
    for r in rows:
        p, t = by_case[r["case_key"]]
        phantom = make_phantom(p, lesions=longitudinal_lesions(p, t), modality="CT", timepoint=t)
        label = next(names[d] for d in names if f"the {d} " in r["question"] + " " or f"{d} volume" in r["question"])
        truth = phantom.masks[label].sum() * np.prod(phantom.spacing) / 1000
        assert r["answer_value"] == pytest.approx(truth, rel=0.01)
        assert r["answer_unit"] == "mL" and r["answer_tolerance"] > 0


def test_balanced_questions_give_every_text_each_answer_equally_often(built):
    """Existence per finding, anomaly presence, temporal classes: on every split each
    question text has each of its answers the same number of times."""
    out, _ = built
    rows = pq.read_table(out / "qa").to_pylist()
    by_text = {}
    for r in rows:
        if r["task"] in ("existence_detection", "static_temporal_diagnosis",
                         "longitudinal_temporal_diagnosis") or r["question_type"] == "closed":
            by_text.setdefault((r["split"], r["question"]), []).append(r["answer_text"])
    assert len(by_text) > 20
    for answers in by_text.values():
        counts = {a: answers.count(a) for a in set(answers)}
        assert len(counts) >= 2 and len(set(counts.values())) == 1, counts
    existence = [r for r in rows if r["task"] == "existence_detection"]
    assert {r["subtask"] for r in existence} >= {"liver_tumor", "lung_nodules"}


def test_volumes_config_holds_loadable_npy(built):
    out, _ = built
    rows = pq.read_table(out / "volumes").to_pylist()
    assert len(rows) == 12
    for r in rows:
        arr = np.load(io.BytesIO(r["npy"]))
        assert arr.shape == (32, 128, 128) and arr.dtype == np.float16
        assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0
        assert len(r["original_spacing_mm"]) == len(r["target_spacing_mm"]) == 3
        for b in r["boxes3d"]:
            k0, j0, i0, k1, j1, i1 = b["box"]
            assert 0 <= k0 < k1 <= 32 and 0 <= j0 < j1 <= 128 and 0 <= i0 < i1 <= 128
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())


def test_3d_build_is_byte_reproducible(tmp_path, built, longitudinal):
    out, _ = built
    again = tmp_path / "again"
    build("3d-rad", str(again), input_dir=str(longitudinal), log=lambda m: None,
          beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])

    def digests(root: Path):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and ".radvqa" not in p.parts}

    assert digests(out) == digests(again)
    assert json.loads((out / "manifest.json").read_text())["answers"]


def _temporal_rows(n_volumes=600):
    """Balanced static and longitudinal temporal rows of synthetic volume records (random
    histories of the recipe's findings), train and test, as a build makes them."""
    families, pools = load_questions(load_recipe("3d-rad"))
    temporal = {k: families[k] for k in ("static_temporal", "longitudinal_temporal")}
    base = lint_records(pools, "static_temporal")[1]
    rng = np.random.default_rng(7)
    rows = []
    for n in range(n_volumes):
        key = keys.stable_key("vol", n)
        prior = int(rng.integers(1, 3))
        history = {f: [int(x) for x in rng.integers(0, 2, prior)] for f in base["findings"]}
        present = [f for f in base["findings"] if rng.integers(2)]
        record = base | {"volume_id": key, "image_id": key, "case_key": key,
                         "split": "train" if n % 3 else "test", "history": history,
                         "history_orders": list(range(1, prior + 1)), "present": present}
        rows += generate_questions(record, temporal, pools, seed=3)
    rules = rules_from([candidate(r["split"], r["balance"], r["answer_text"]) for r in rows], pools)
    return [x for x in (apply(dict(r), rules, temporal, pools) for r in rows) if x is not None]


def test_temporal_option_order_does_not_give_the_answer_away():
    """Main placed each temporal answer by its rank among the fixed order of the four
    classes: the option permutation alone named the answer (a learned text-only model:
    100 % against 25 % on static temporal diagnosis).  A model that learns the most
    frequent answer of each (family, option order) on train stays at chance on test, and
    so does "the option whose removal leaves the others in the classes' fixed order"."""
    rows = _temporal_rows()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) > 300
    learned: dict = {}
    for r in train:
        learned.setdefault((r["family"], tuple(r["options"])), collections.Counter())[r["answer"]] += 1
    hits = sum(learned.get((r["family"], tuple(r["options"])), collections.Counter({"A": 1})).most_common(1)[0][0]
               == r["answer"] for r in test)
    assert hits / len(test) < 0.25 + 0.06, hits / len(test)

    def odd_one_out(options):
        for i, o in enumerate(options):
            rest = options[:i] + options[i + 1:]
            if rest == [c for c in TEMPORAL_CLASSES if c in rest]:
                return o
        return options[0]

    hits = sum(odd_one_out(r["options"]) == r["answer_text"] for r in test)
    assert hits / len(test) < 0.45, hits / len(test)
    # the correct letter is spread over all four for every class
    for cls in TEMPORAL_CLASSES:
        letters = collections.Counter(r["answer"] for r in rows if r["answer_text"] == cls)
        assert set(letters) == set("ABCD"), (cls, letters)


def test_unedited_volume_families_finished_rows_are_reused_as_blocks(tmp_path, longitudinal, monkeypatch):
    """The volumes kind keeps its finished rows per family as the slices kind does
    (pipeline.engine.qa_blocks; its balancing rules are keyed by family and a record's
    temporal history comes from its own unit): after one word of the longitudinal
    template is edited only that family is generated and its blocks rewritten, the others
    read back — also when the edit dead-letters the third studies (their rows leave every
    family's blocks) — each time the bytes of a fresh build."""
    import shutil

    from bench.incremental import edit_template, recipe_copy
    from pipeline.engine import qa_blocks
    from pipeline.launch.build import regenerate
    from pipeline.qa import candidates, questions
    from pipeline.schema.layout import ROWS_DIR

    quiet = {"log": lambda m: None}
    recipe = recipe_copy(tmp_path / "recipe", "3d-rad", "3d-rad", "totalsegmentator")

    def corpus(root: Path) -> dict:
        out = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and ".radvqa" not in p.parts:
                data = p.read_bytes()
                if p.name == "manifest.json":
                    data = json.dumps(json.loads(data) | {"build": None}, sort_keys=True).encode()
                out[p.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
        return out

    def fresh(name: str) -> dict:
        build(str(recipe), str(tmp_path / name), input_dir=str(longitudinal), **quiet)
        digests = corpus(tmp_path / name)
        shutil.rmtree(tmp_path / name)
        return digests

    out = tmp_path / "out"
    build(str(recipe), str(out), input_dir=str(longitudinal), **quiet)
    rows_dir = out / ROWS_DIR
    before = {p.name: p.stat().st_mtime_ns for p in rows_dir.glob(f"*{qa_blocks.SUFFIX}")}
    assert {n.split(".")[1] for n in before} >= {"existence", "longitudinal_temporal", "computation"}
    generated: set[str] = set()
    for module in (questions, candidates):
        real = module.generate_questions
        monkeypatch.setattr(module, "generate_questions", lambda record, families, *a, real=real, **k:
                            generated.update(families) or real(record, families, *a, **k))
    template, old = "longitudinal_temporal.yaml", "How would you classify it"
    edit_template(recipe, old, "How would you grade it", template)
    regenerate(str(out), **quiet)
    assert generated == {"longitudinal_temporal"}
    now = {p.name: p.stat().st_mtime_ns for p in rows_dir.glob(f"*{qa_blocks.SUFFIX}")}
    assert len(now) == len(before)
    assert {n for n, t in now.items() if before.get(n) != t} == {
        n for n in now if ".longitudinal_temporal." in n}
    assert corpus(out) == fresh("fresh")
    # a wording that fails on the third studies (two prior studies): all their rows go
    edit_template(recipe, "How would you grade it",
                  "{% if sequence|length > 3 %}{{ finding|round }}{% endif %}How would you grade it", template)
    generated.clear()
    regenerate(str(out), **quiet)
    assert generated == {"longitudinal_temporal"}
    dead = (out / "dead_letters" / "dead_letters.jsonl").read_text()
    assert "template.render_error" in dead
    assert corpus(out) == fresh("fresh2")
