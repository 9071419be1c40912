"""Recipe radimagenet-vqa: PNG checks, label pools, per-image question sets,
distractor constraints, balance, benchmark composition and stratification,
and the end-to-end build (determinism, CSV splits, dead letters, datasets)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config.recipes import load_recipe
from pipeline.config.resources import resource_dir
from pipeline.core import keys
from pipeline.core.imaging import encode_png
from pipeline.errors import CaseError
from pipeline.inputs.layouts.tree import TreeImage, check_png
from pipeline.inputs.sample_tree import write_tree
from pipeline.io import shards
from pipeline.kinds.base import load_questions
from pipeline.kinds.tree import KIND, ImagesById
from pipeline.kinds.tree_tables import image_array, question_images
from pipeline.launch.build import build
from pipeline.qa.balance import assign_distractors
from pipeline.qa.benchmark import capped_quotas, left_out_regions, select_benchmark
from pipeline.qa.label_pools import load_label_pools
from pipeline.qa.questions import generate_questions
from pipeline.schema.arrow import TREE_PAYLOAD_SCHEMA

RECIPE = load_recipe("radimagenet-vqa")
FAMILIES, POOLS = load_questions(RECIPE, pools_loader=load_label_pools)
SETTINGS = RECIPE.section("questions")["settings"]
PNG = encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 10_000)) + _chunk(b"IEND", b""))


def _idat_png(idat: bytes) -> bytes:
    """An 8x8 grey PNG with ``idat`` as its image data (chunk CRCs right)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


_GOOD_IDAT = zlib.compress(bytes(range(72)))
_BAD_BLOCK = _GOOD_IDAT[:2] + b"\xff" + _GOOD_IDAT[3:]  # block type 3: reserved, invalid
_BAD_ADLER = _GOOD_IDAT[:-1] + bytes([_GOOD_IDAT[-1] ^ 1])
_BAD_METHOD = b"\x79" + _GOOD_IDAT[1:]  # CM 9: not deflate


@pytest.mark.parametrize(
    "data, reason, fragment",
    [
        (PNG[:-20], "image.unreadable", "truncated"),
        (PNG[:40] + bytes([PNG[40] ^ 0xFF]) + PNG[41:], "image.unreadable", "CRC mismatch"),
        (b"GIF89a" + PNG[6:], "image.unreadable", "signature"),
        (_bomb(), "image.too_large", "decompression bomb guard"),
        (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
         + _chunk(b"IDAT", zlib.compress(b"\0" * 20)) + _chunk(b"IEND", b""),
         "image.unreadable", "inflated to 20 bytes, expected 72"),
        # chunk CRCs right, deflate stream wrong: inflating every byte is what finds them
        (_idat_png(_BAD_BLOCK), "image.unreadable", "IDAT: cannot inflate"),
        (_idat_png(_BAD_ADLER), "image.unreadable", "IDAT: cannot inflate"),
        (_idat_png(_BAD_METHOD), "image.unreadable", "IDAT: cannot inflate"),
        (_idat_png(zlib.compress(b"\0" * 200)), "image.unreadable",
         "found more image data than IHDR promises"),
    ],
    ids=["truncated", "bad-crc", "not-png", "decompression-bomb", "short-data", "bad-deflate-block",
         "bad-adler32", "bad-zlib-method", "long-data"],
)
def test_bad_pngs_are_rejected_with_the_field(data, reason, fragment):
    with pytest.raises(CaseError) as err:
        check_png(data, max_pixels=1_000_000)
    assert err.value.reason == reason
    assert fragment in err.value.message


def test_good_png_passes():
    assert check_png(PNG) == (8, 8)
    assert check_png(_idat_png(_GOOD_IDAT)) == (8, 8)


def _outcome(data: bytes):
    try:
        return check_png(data, max_pixels=1_000_000)
    except CaseError as err:
        return err.reason, err.message


_ROWS = bytes(range(72))
_SPLIT = zlib.compress(_ROWS)


@pytest.mark.parametrize("data", [
    PNG, _idat_png(_GOOD_IDAT), _idat_png(_BAD_BLOCK), _idat_png(_BAD_ADLER),
    _idat_png(_BAD_METHOD), _idat_png(zlib.compress(b"\0" * 200)), _idat_png(zlib.compress(b"\0" * 20)),
    _idat_png(_GOOD_IDAT[:-4]),  # no Adler-32 trailer
    _idat_png(_GOOD_IDAT[:-9]),  # the stream cut short
    _idat_png(_GOOD_IDAT + b"\0\0\0"),  # bytes after the stream
    _idat_png(zlib.compressobj(wbits=9).compress(_ROWS) + zlib.compressobj(wbits=9).flush()),
    _idat_png(zlib.compressobj(wbits=9).compress(_ROWS)
              + zlib.compressobj(wbits=9).flush())[:-13],
    (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
     + _chunk(b"IDAT", _SPLIT[:10]) + _chunk(b"IDAT", _SPLIT[10:]) + _chunk(b"IEND", b"")),
    _bomb(),
], ids=["good", "good-idat", "bad-block", "bad-adler", "bad-method", "long", "short", "no-adler",
        "cut", "trailing", "small-window", "small-window-cut", "two-idat", "bomb"])
def test_the_fast_inflate_changes_no_outcome(data, monkeypatch):
    """libdeflate's way through (``_inflates_to``) accepts only what ISA-L's accepts, and
    every fault is still named by the ISA-L path: the same result or the same error."""
    import pipeline.inputs.layouts.tree as layout

    fast = _outcome(data)
    monkeypatch.setattr(layout, "_libdeflate_zlib", None)
    assert _outcome(data) == fast


def test_a_well_formed_png_is_checked_by_the_fast_inflate(monkeypatch):
    import pipeline.inputs.layouts.tree as layout

    if layout._libdeflate_zlib is None:
        pytest.skip("deflate (libdeflate) not installed")

    class Refused:
        crc32 = staticmethod(zlib.crc32)

        def decompressobj(self):
            raise AssertionError("ISA-L's inflate used for a well-formed PNG")

    monkeypatch.setattr(layout, "_zlib", Refused())
    assert check_png(PNG) == (8, 8)


def test_image_structs_and_the_sorted_payload_table():
    data = [PNG, b"", PNG[:20]]
    arr = image_array(data, ["a.png", "b.png", "c.png"])
    assert arr.equals(pa.StructArray.from_arrays(
        [pa.array(data, pa.binary()), pa.array(["a.png", "b.png", "c.png"])], names=["bytes", "path"]))
    assert dict(ImagesById(["a", "b", "c"], arr)) == {"a": PNG, "b": b"", "c": PNG[:20]}
    rows = [{"image_id": k, "image": {"bytes": d, "path": f"{k}.png"}, "modality": "CT",
             "region": "abdomen", "label": "normal", "split": "train"} for k, d in zip("cab", data)]
    table = KIND.table("alignment", rows)
    assert table["image_id"].to_pylist() == ["a", "b", "c"]
    assert table.to_pylist() == pa.Table.from_pylist(rows, schema=table.schema).sort_by("image_id").to_pylist()
    assert KIND.sort_table("alignment", table) is table  # built sorted: nothing moved
    assert KIND.sort_table("alignment", table.take([2, 0, 1]))["image_id"].to_pylist() == ["a", "b", "c"]


def test_label_wording():
    assert POOLS.display("normal") == "no pathology seen"
    assert POOLS.display("achilles_pathology_") == "achilles pathology"
    assert POOLS.display("pituatary_lesion") == "pituatary lesion"  # source spelling kept
    assert POOLS.related("soft_tissue_fluid", "soft_tissue_fluid_collection")
    assert POOLS.resolve_region("MR", "ankle foot") == "ankle_foot"


def _image(modality="MR", region="knee", label="acl_pathology", n=0, split="train"):
    k = keys.stable_key("img", modality, region, label, n)
    return {"image_id": k, "case_key": k, "split": split, "modality": modality, "region": region,
            "label": label}


def test_nine_questions_and_a_caption_per_image():
    rows = generate_questions(_image(), FAMILIES, POOLS, seed=1, settings=SETTINGS)
    by_family = {r["family"]: r for r in rows}
    assert sorted(by_family) == sorted([
        "anatomy_open", "anatomy_closed_present", "anatomy_closed_absent", "anatomy_mc",
        "abnormality_closed", "pathology_open", "pathology_closed_present",
        "pathology_closed_absent", "pathology_mc", "caption"])
    assert by_family["anatomy_open"]["answer"] == "knee"
    assert by_family["anatomy_closed_present"]["answer"] == "yes"
    assert by_family["anatomy_closed_absent"]["answer"] == "no"
    assert "knee" not in by_family["anatomy_closed_absent"]["question"]
    assert by_family["pathology_open"]["answer"] == "ACL pathology"
    assert by_family["caption"]["answer"] == "magnetic resonance imaging of the knee with ACL pathology present"
    types = collections.Counter(r["question_type"] for r in rows if r["task"] != "caption")
    assert types == {"closed": 5, "multiple_choice": 2, "open": 2}


def test_normal_images_are_worded_as_no_pathology_seen():
    rows = {r["family"]: r for r in generate_questions(_image(label="normal"), FAMILIES, POOLS, seed=2,
                                                        settings=SETTINGS)}
    assert rows["pathology_open"]["answer"] == "no pathology seen"
    assert rows["pathology_mc"]["answer_text"] == "no pathology seen"
    assert rows["caption"]["answer"].endswith("of the knee with no pathology seen")
    present = rows["pathology_closed_present"]
    assert present["answer"] == "yes" and "no pathology seen" not in present["question"]


@pytest.mark.parametrize("modality, region, label", [
    ("MR", "knee", "meniscal_abnormality"), ("MR", "ankle_foot", "soft_tissue_fluid"),
    ("MR", "hip", "chondral_pathology"), ("CT", "chest", "nodule"), ("MR", "brain", "acute_infarct")])
def test_distractor_constraints(modality, region, label):
    region_labels = {POOLS.display(x) for x in POOLS.labels(modality, region)}
    modality_regions = {POOLS.region_display(modality, r) for r in POOLS.regions(modality)}
    all_regions = {POOLS.region_display(m, r) for m in POOLS.modalities for r in POOLS.regions(m)}
    for n in range(60):
        rows = {r["family"]: r for r in generate_questions(_image(modality, region, label, n), FAMILIES,
                                                            POOLS, seed=3, settings=SETTINGS)}
        mc = rows["pathology_mc"]
        wrong = [o for o in mc["options"] if o != mc["answer_text"]]
        assert len(set(mc["options"])) == 4
        assert all(o in region_labels for o in wrong), wrong  # same region ("no pathology seen" included)
        assert not any(POOLS.related(label, x) for x in POOLS.labels(modality, region)
                       if POOLS.display(x) in wrong)  # never a synonym of the answer
        neg = rows["pathology_closed_absent"]["question"]
        assert POOLS.display(label) not in neg
        amc = rows["anatomy_mc"]
        others = [o for o in amc["options"] if o != amc["answer_text"]]
        if len(modality_regions) >= 4:
            assert set(others) <= modality_regions - {POOLS.region_display(modality, region)}
        else:
            assert set(others) <= all_regions
    # CT has two regions here: anatomy options fill from the other modality's regions.


def test_a_numeric_no_pathology_option_rate_is_honoured_without_a_plan():
    """A recipe may force the rate of "no pathology seen" among the options (unbalanced);
    without the launcher's plan the generators still keep yes/no and positions even."""
    settings = SETTINGS | {"no_pathology_option_rate": 0.3}
    with_normal = abnormal_mc = 0
    answers = collections.Counter()
    positions = collections.Counter()
    rng = np.random.default_rng(0)
    triples = [(m, r, lab) for m in POOLS.modalities for r in POOLS.regions(m) for lab in POOLS.labels(m, r)]
    for n in range(3000):
        m, r, lab = triples[int(rng.integers(len(triples)))]
        for row in generate_questions(_image(m, r, lab, n), FAMILIES, POOLS, seed=5, settings=settings):
            if row["question_type"] == "closed":
                answers[row["answer"]] += 1
            if row["question_type"] == "multiple_choice":
                positions[row["answer"]] += 1
            if row["family"] == "pathology_mc" and lab != "normal":
                abnormal_mc += 1
                with_normal += "no pathology seen" in row["options"]
    assert abs(with_normal / abnormal_mc - settings["no_pathology_option_rate"]) < 0.04
    assert abs(answers["yes"] / sum(answers.values()) - 0.5) < 0.02
    total = sum(positions.values())
    assert max(abs(positions[c] / total - 0.25) for c in "ABCD") < 0.02


#: A test population: MR knee dominated by one label (70 %), MR hip and MR spine more even,
#: MR ankle with as many images, CT chest, and a thin MR brain region with two labels.
POPULATION = {
    ("MR", "knee"): {"meniscal_abnormality": 140, "acl_pathology": 20, "mcl_pathology": 15,
                     "normal": 15, "fracture": 10},
    ("MR", "hip"): {"labral_pathology": 30, "normal": 25, "osseous_lesion": 20, "chondral_pathology": 25},
    ("MR", "spine"): {"disc_pathology": 40, "normal": 30, "scoliosis": 15, "osseous_abn": 15},
    ("MR", "ankle_foot"): {"chondral_abnormality": 60, "normal": 60, "hematoma": 40, "intra": 40},
    ("MR", "brain"): {"edema": 30, "normal": 30},
    ("CT", "chest"): {"nodule": 40, "normal": 30, "bronchiectasis": 20, "airspace_opacity": 10},
}


def _tree_images(test_share=0.75):
    out, i = [], 0
    for (m, r), labels in sorted(POPULATION.items()):
        for lab, count in sorted(labels.items()):
            for _ in range(count):
                k = keys.stable_key("t", i)
                split = "test" if keys.unit_interval(0, k, "s") < test_share else "train"
                out.append(TreeImage(k, f"{m}/{r}/{lab}/{i}.png", m, r, lab, split))
                i += 1
    return out


@pytest.mark.parametrize("n", [60, 200, 10_000], ids=["small", "medium", "more-than-fits"])
def test_benchmark_plan_is_stratified_capped_deterministic_and_test_only(n):
    images = _tree_images()
    plan = select_benchmark(images, n, seed=1)
    assert plan == select_benchmark(list(reversed(images)), n, seed=1)
    quota = {s: q for s, q, _ in plan}
    assert all(c.split == "test" for _, _, cands in plan for c in cands)
    assert all(q <= len(cands) for _, q, cands in plan)
    assert not any(s.startswith("MR/brain/") for s in quota)  # one abnormal label: left out
    assert set(left_out_regions(images)) == {"MR/brain"}  # … and reported
    regions = collections.defaultdict(dict)
    for s, q in quota.items():
        m, r, lab = s.split("/")
        regions[(m, r)][lab] = q
    for (m, r), labels in regions.items():
        abnormal = {k: v for k, v in labels.items() if k != "normal"}
        # no abnormal label above a third of the abnormal half (the pathology multiple
        # choice then asks a third as many normal images: no answer above a quarter)
        assert 3 * max(abnormal.values()) <= sum(abnormal.values()) + 2, (m, r, labels)
    mr = {r: sum(v.values()) for (m, r), v in regions.items() if m == "MR"}
    assert 4 * max(mr.values()) <= sum(mr.values()) + 4  # nor a region above a quarter of MR
    total = sum(quota.values())
    assert total <= n  # never more than asked, never more than the caps allow
    if n == 60:
        assert total >= 0.85 * n
    knee = regions[("MR", "knee")]  # proportions kept where the cap allows
    assert knee["meniscal_abnormality"] >= knee["fracture"]


def test_benchmark_images_are_half_normal_in_every_region():
    """The abnormality question reads only the modality: its regions are 50/50 normal and
    abnormal, or a text-only model learns the abnormal rate (75 % on main's benchmark)."""
    images = _tree_images()
    for n in (60, 200):
        counts = collections.defaultdict(collections.Counter)
        for stratum, q, _ in select_benchmark(images, n, seed=1):
            m, r, lab = stratum.split("/")
            counts[(m, r)][lab == "normal"] += q
        assert counts and all(c[True] == c[False] > 0 for c in counts.values()), dict(counts)


def test_distractor_sets_do_not_single_out_the_answer():
    """Quota ties broken by a rotation of the sorted labels made the three distractors a run
    of neighbours and the answer the odd one out (a learned text-only model: 45 % on
    4-option anatomy questions).  Now no option is singled out by the label order."""
    labels = [f"region{i}" for i in range(8)]
    kept = sorted((keys.unit_interval(0, str(i), "t"), labels[i % 8]) for i in range(4000))
    hits = 0
    for u, chosen in assign_distractors(kept, {}).items():
        answer = dict(kept)[u]
        options = sorted([answer, *chosen], key=labels.index)
        idx = [labels.index(o) for o in options]
        # the odd one out: the option farthest (cyclically) from the others
        gaps = [min(min((idx[i] - idx[j]) % 8, (idx[j] - idx[i]) % 8) for j in range(4) if j != i)
                for i in range(4)]
        guess = options[gaps.index(max(gaps))]
        hits += guess == answer
    assert hits / len(kept) < 0.30, hits / len(kept)


@pytest.mark.parametrize("total, weights, cap, expected", [
    (100, {"a": 78, "b": 10, "c": 7, "d": 5}, 0.25, {"a": 5, "b": 5, "c": 5, "d": 5}),
    (20, {"a": 30, "b": 30, "c": 30, "d": 30, "e": 30}, 0.25, {"a": 4, "b": 4, "c": 4, "d": 4, "e": 4}),
    (10, {"x": 60, "y": 40}, 0.25, {"x": 5, "y": 5}),
    (1000, {"x": 5000, "y": 3000}, 1.0, {"x": 625, "y": 375}),
], ids=["dominant-label-capped", "even", "two-items-even-share", "uncapped-proportional"])
def test_capped_quotas(total, weights, cap, expected):
    assert capped_quotas(total, weights, cap, seed=0) == expected


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    write_tree(root, 3000, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]),
               with_csv=True)
    # broken inputs: an unreadable PNG, a decompression bomb, a file outside the layout
    knee = next((root / "MR" / "knee").iterdir())
    (knee / "broken.png").write_bytes(PNG[:30])
    (knee / "bomb.png").write_bytes(_bomb())
    (root / "MR" / "knee" / "stray.png").write_bytes(PNG)
    return root


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".radvqa" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tree):
    out = tmp_path_factory.mktemp("rin-out")
    result = build("radimagenet-vqa", str(out), input_dir=str(tree), log=lambda m: None)
    return out, result


def test_build_accounts_for_every_image(built):
    out, result = built
    m = result.manifest
    assert m["counts"]["discover"]["rejected_by_reason"] == {"source.not_in_layout": 1}
    assert m["counts"]["discover"]["excluded_by_recipe"] == {"excluded_modality_US": 3}  # n // 1000
    assert m["counts"]["read"]["rejected_by_reason"] == {"image.too_large": 1, "image.unreadable": 1}
    for c in m["counts"].values():
        assert c["inputs"] == c["accepted"] + c["rejected"]
    letters = [json.loads(x) for x in (out / "dead_letters" / "dead_letters.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] for d in letters) == ["image.too_large", "image.unreadable", "source.not_in_layout"]
    assert all(d["source"].startswith("MR/knee/") for d in letters)
    images = m["counts"]["read"]["accepted"]
    instruct = sum(pq.ParquetFile(out / p).metadata.num_rows for p in m["files"] if p.startswith("instruct/"))
    alignment = sum(pq.ParquetFile(out / p).metadata.num_rows for p in m["files"] if p.startswith("alignment/"))
    assert instruct == 9 * images and alignment == images


def test_csv_splits_are_followed(built, tree):
    out, _ = built
    rows = pq.read_table(out / "alignment", columns=["split"]).column("split").to_pylist()
    counts = collections.Counter(rows)
    # write_tree's CSVs put 80/10/10 of the images in train/val/test by index
    assert counts["train"] > 6 * counts["test"] and counts["validation"] > 0 and counts["test"] > 0


def test_benchmark_composition_and_disjointness(built):
    out, result = built
    bench = pq.read_table(out / "benchmark").to_pylist()
    n_images = len({r["image_id"] for r in bench})
    types = collections.Counter(r["question_type"] for r in bench)
    # the pathology multiple choice: every abnormal image (half) and a third as many normal ones
    skipped = result.manifest["benchmark"]["balance"]["mc_skipped"]
    assert 0 < skipped <= n_images // 2
    assert types == {"multiple_choice": 2 * n_images - skipped, "closed": 5 * n_images, "open": 2 * n_images}
    assert n_images == result.manifest["benchmark"]["images"] >= 80
    # half normal, half abnormal in every region; every abnormality text as often yes as no
    images = {r["image_id"]: r["metadata"] for r in bench}
    regions = collections.Counter((m["modality"], m["location"], m["is_abnormal"]) for m in images.values())
    for (modality, region, abnormal), count in regions.items():
        assert regions[(modality, region, not abnormal)] == count, (modality, region, regions)
    texts = collections.defaultdict(collections.Counter)
    for r in bench:
        if r["task"] == "abnormality":
            texts[r["question"]][r["answer"]] += 1
    assert len(texts) >= 6 and all(abs(c["yes"] - c["no"]) <= 1 for c in texts.values()), texts
    train_ids = set(pq.read_table(out / "alignment", filters=[("split", "=", "train")],
                                  columns=["image_id"]).column("image_id").to_pylist())
    assert not train_ids & {r["image_id"] for r in bench}
    for r in bench:
        if r["question_type"] == "multiple_choice":
            assert r["choices"][ord(r["answer"]) - 65] == r["metadata"]["correct_text"]
        else:
            assert r["choices"] is None


def test_images_pass_through_byte_for_byte(built, tree):
    out, _ = built
    stored = {hashlib.sha256(r["image"]["bytes"]).hexdigest()
              for r in pq.read_table(out / "alignment", columns=["image"]).to_pylist()}
    source = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tree.rglob("*.png")
              if p.parts[-4:-3] != ("US",) and p.name not in ("broken.png", "bomb.png", "stray.png")}
    assert stored == source


def test_tree_build_is_byte_reproducible_and_loads(tmp_path, built, tree):
    from datasets import load_dataset
    from PIL import Image

    out, _ = built
    again = tmp_path / "again"
    build("radimagenet-vqa", str(again), input_dir=str(tree), log=lambda m: None,
          beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert _digests(out) == _digests(again)
    bench = load_dataset(str(out), "benchmark", split="test")
    assert isinstance(bench[0]["image"], Image.Image)
    # the benchmark's images (one per question) are dictionary-encoded: each distinct one
    # stored once per row group, read back as the alignment's bytes
    (shard,) = (out / "benchmark").glob("*.parquet")
    meta = pq.ParquetFile(shard).metadata
    col = [meta.row_group(0).column(i).path_in_schema for i in range(meta.num_columns)].index("image.bytes")
    assert "RLE_DICTIONARY" in meta.row_group(0).column(col).encodings
    images = {r["image_id"]: r["image"]["bytes"] for r in pq.read_table(
        out / "alignment", columns=["image_id", "image"]).to_pylist()}
    assert all(images[r["image_id"]] == r["image"]["bytes"]
               for r in pq.read_table(shard, columns=["image_id", "image"]).to_pylist())
    instruct = load_dataset(str(out), "instruct", split="validation")
    row = instruct[0]
    assert row["conversations"][0]["from"] == "human" and row["conversations"][0]["value"].startswith("<image>\n")
    # file names never reach the corpus: scan every config's cells and Parquet metadata
    stems = {p.stem for p in tree.rglob("*.png")}
    for path in out.rglob("*.parquet"):
        table = pq.read_table(path)
        text = json.dumps(table.drop_columns([c for c in ("image",) if c in table.column_names]).to_pylist())
        text += json.dumps([r["path"] for r in table.column("image").to_pylist()]) if "image" in table.column_names else ""
        text += str(pq.ParquetFile(path).metadata.metadata)
        assert not any(stem in text for stem in stems), path
    for name in ("manifest.json", "README.md"):
        assert not any(stem in (out / name).read_text() for stem in stems)


def test_closed_questions_pair_yes_with_no_per_text(built):
    """Closed− asks about another image's true region or label with that image's closed+
    paraphrase (a derangement): in the benchmark every closed anatomy and pathology text
    is asked as often with yes as with no; in instruct, every MR anatomy text."""
    out, _ = built
    bench = pq.read_table(out / "benchmark").to_pylist()
    texts = collections.defaultdict(collections.Counter)
    for r in bench:
        if r["question_type"] == "closed" and r["task"] in ("anatomy", "pathology"):
            texts[r["question"]][r["answer"]] += 1
    assert len(texts) > 20
    for text, counts in texts.items():
        assert counts["yes"] == counts["no"], (text, counts)
    instruct = pq.read_table(out / "instruct").to_pylist()
    mr = collections.defaultdict(collections.Counter)
    for r in instruct:
        if r["task"] == "anatomy" and r["question_type"] == "closed" and r["metadata"]["modality"] == "mri":
            mr[(r["split"], r["question"])][r["answer"]] += 1
    # plans come from the file list: each image rejected when read (two here) leaves its
    # yes and the no of its partner unpaired — off by one on at most two texts each
    assert mr and sum(abs(c["yes"] - c["no"]) for c in mr.values()) <= 2 * 2
    assert sum(c["yes"] == c["no"] for c in mr.values()) >= len(mr) - 4


def test_benchmark_options_are_fair(built):
    """Every pathology option of the benchmark is correct about a quarter of the times it is
    offered ("no pathology seen" included), and positions are even."""
    out, _ = built
    rows = [r for r in pq.read_table(out / "benchmark").to_pylist()
            if r["task"] == "pathology" and r["question_type"] == "multiple_choice"]
    correct = collections.Counter(r["metadata"]["correct_text"] for r in rows)
    offered = collections.Counter(o for r in rows for o in r["choices"])
    assert "no pathology seen" in correct
    for label, c in correct.items():
        if c >= 4:
            assert 0.2 <= c / offered[label] <= 0.34, (label, c, offered[label])
    positions = collections.Counter(r["answer"] for r in rows)
    assert max(positions.values()) - min(positions.values()) <= 1


@pytest.mark.parametrize("direct", [False, True], ids=["page-cache", "o-direct"])
def test_a_local_shard_is_streamed_to_the_same_bytes_as_the_buffered_writer(tmp_path, monkeypatch,
                                                                             direct):
    """``shards.write_table`` writes a local shard to its file (a large one from a reused
    buffer with ``O_DIRECT``, the last partial block without): the same bytes as the
    in-memory writer (used for remote outputs), a receipt that matches them, no temporary
    file left; a failed write leaves no file at all."""
    if direct:
        try:
            os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
            os.remove(tmp_path / "probe")
        except (AttributeError, OSError):
            pytest.skip("no O_DIRECT here")
        monkeypatch.setattr(shards, "DIRECT_MIN_BYTES", 0)
        monkeypatch.setattr(shards, "_write_table_local", None)  # not taken (calling it fails)
    ids = [f"{n:04d}" for n in range(50)]
    table = pa.Table.from_arrays(
        [pa.array(ids), image_array([PNG * 300 + bytes([n]) for n in range(50)], [f"{k}.png" for k in ids]),
         *(pa.array(["x"] * 50) for _ in range(4))], schema=TREE_PAYLOAD_SCHEMA)
    receipt = shards.write_table(str(tmp_path), "alignment/train-00000-of-00001.parquet", table)
    data = (tmp_path / "alignment" / "train-00000-of-00001.parquet").read_bytes()
    assert data == shards.table_bytes(table) and len(data) % 4096  # a partial last block
    assert (receipt.sha256, receipt.bytes, receipt.rows) == (hashlib.sha256(data).hexdigest(),
                                                             len(data), 50)
    assert [p.name for p in (tmp_path / "alignment").iterdir()] == ["train-00000-of-00001.parquet"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.undo()  # (the direct writer falls back to the page cache on an error)
    monkeypatch.setattr(shards.pq.ParquetWriter, "write_table", broken)
    with pytest.raises(OSError):
        shards.write_table(str(tmp_path), "instruct/train-00000-of-00001.parquet", table)
    assert not list((tmp_path / "instruct").iterdir())


@pytest.mark.parametrize("distinct_kb", [16, 40], ids=["sliced", "joined"])
def test_the_benchmarks_repeated_images_give_the_bytes_of_the_joined_column(monkeypatch, distinct_kb):
    """The benchmark's image column (each image asked several questions, its rows together)
    is built from one-row slices of its distinct images instead of their ~9x joined bytes:
    the same Parquet bytes, row groups and dictionary included (here 1 MB row groups: the
    table's 40 images span several), the same ``nbytes``; distinct images past the
    dictionary's page limit are joined as before."""
    monkeypatch.setitem(shards.WRITER, "row_group_bytes", 1 << 20)
    ids = [f"{n:04d}" for n in range(40)]
    pngs = {k: PNG + bytes([n]) * (distinct_kb << 10) for n, k in enumerate(ids)}
    rows = [k for n, k in enumerate(ids) for _ in range(1 + n % 9)]
    data, paths = [pngs[k] for k in rows], [f"{k}.png" for k in rows]
    column = question_images(data, paths)
    assert isinstance(column, pa.ChunkedArray) == (distinct_kb == 16)
    joined = image_array(data, paths)
    assert column.to_pylist() == joined.to_pylist()

    def table(images):
        return pa.table({"qa_id": [f"q{n}" for n in range(len(rows))], "image_id": rows,
                         "image": images})
    assert table(column).nbytes == table(joined).nbytes
    got, want = shards.table_bytes(table(column)), shards.table_bytes(table(joined))
    meta = pq.ParquetFile(pa.BufferReader(want)).metadata
    assert meta.num_row_groups > 2 and got == want
    assert "RLE_DICTIONARY" in meta.row_group(0).column(2).encodings


def test_a_thread_never_shares_the_direct_writers_buffer(tmp_path, monkeypatch):
    """While one thread of a worker process holds the reused buffer, another thread's large
    shard goes through the page cache (same bytes) instead of sharing the buffer."""
    monkeypatch.setattr(shards, "DIRECT_MIN_BYTES", 0)
    monkeypatch.setattr(shards, "_write_table_direct", None)  # not taken (calling it fails)
    table = pa.table({"image_id": ["a", "b"], "text": ["x", "y"]})
    with shards._DIRECT_LOCK:  # another thread is writing through the buffer
        receipt = shards.write_table(str(tmp_path), "alignment/t.parquet", table)
    data = (tmp_path / "alignment" / "t.parquet").read_bytes()
    assert data == shards.table_bytes(table) and receipt.sha256 == hashlib.sha256(data).hexdigest()
    assert not shards._DIRECT_LOCK.locked()


def _extract_one_by_one(cases, ctx):
    rows, outcomes = [], []
    for case in cases:
        try:
            result = KIND.extract_case(case, "train", ctx)
        except CaseError as err:
            outcomes.append((err.reason, err.path, err.message))
            continue
        rows += result.rows["alignment"]
        outcomes.append(result.content)
    return KIND.table("alignment", rows), outcomes


@pytest.mark.parametrize("broken", [False, True], ids=["in-place", "with-rejects-and-metadata"])
def test_a_units_images_read_into_one_buffer_match_the_case_by_case_path(tmp_path, broken):
    from types import SimpleNamespace

    from pipeline.kinds.tree import TreeSettings

    files = {f"CT/abdomen/normal/{n}.png": encode_png(np.full((8, 8), n, np.uint8)) for n in range(5)}
    if broken:
        text = _chunk(b"tEXt", b"Comment\0scanner")  # stripped: the column is joined instead
        files["CT/abdomen/normal/1.png"] = files["CT/abdomen/normal/1.png"][:33] + text + \
            files["CT/abdomen/normal/1.png"][33:]
        files["CT/abdomen/normal/3.png"] = PNG[:30]
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    cases = [TreeImage(f"k{n}", rel, "CT", "abdomen", "normal", "train") for n, rel in enumerate(files)]
    if broken:
        cases.append(TreeImage("k9", "CT/abdomen/normal/missing.png", "CT", "abdomen", "normal", "train"))
    ctx = SimpleNamespace(input_root=str(tmp_path), settings=TreeSettings())
    progress = []
    tables, outcomes = KIND.extract_cases(cases, "train", ctx, progress.append)
    want_table, want = _extract_one_by_one(cases, ctx)
    got = [o.content if not isinstance(o, Exception) else (o.reason, o.path, o.message) for o in outcomes]
    assert got == want and progress == list(range(len(cases)))
    assert tables["alignment"].equals(want_table)
    assert all(not isinstance(o, Exception) and not o.rows for o in outcomes) != broken


def test_audit_counts_of_a_table_count_equal_rows_once_with_their_number():
    from pipeline.qa.audit import partial_counts, partial_counts_columns

    rows = [{"split": "train", "task": t, "question_type": q, "question": text, "options": o, "answer": a}
            for t, q, text, o, a in [
                ("anatomy", "open", "Which organ?", [], "liver"),
                ("anatomy", "multiple_choice", "Which organ? long enough to be hashed", ["a", "bb", "c"], "B"),
                ("anatomy", "open", "Which organ?", [], "liver"),
                ("anatomy", "multiple_choice", "Which organ? long enough to be hashed", ["a", "bb", "c"], "B"),
                ("anatomy", "multiple_choice", "Which organ? long enough to be hashed", ["bb", "a", "c"], "A")]]
    table = pa.Table.from_pylist(rows)
    assert partial_counts_columns("instruct", table) == partial_counts("instruct", rows)


def test_files_opened_ahead_come_in_order_and_are_closed_when_the_reader_stops(tmp_path):
    from pipeline.inputs.tree import InputTree

    for n in range(6):
        (tmp_path / f"{n}.png").write_bytes(bytes([n]) * (n + 1))
    rels = [f"{n}.png" for n in range(6)] + ["missing.png"]
    got = InputTree(str(tmp_path)).opened_ahead(rels, ahead=2)
    files = list(got)
    assert [f and f.read() for f in files] == [bytes([n]) * (n + 1) for n in range(6)] + [None]
    for f in files[:-1]:
        f.close()
    opened = []
    tree = InputTree(str(tmp_path))
    real = tree._open_ahead
    tree._open_ahead = lambda rel: opened.append(real(rel)) or opened[-1]
    stopped = tree.opened_ahead(rels, ahead=3)
    next(stopped).close()
    assert len(opened) == 4  # three ahead of the one handed out
    stopped.close()  # the three opened ahead of it are closed
    assert all(f.closed for f in opened)


def test_benchmark_images_from_the_inputs_are_the_shards_bytes(tmp_path, monkeypatch):
    """The benchmark reads its chosen images from the input files when they are still the
    ones extracted (their content digest), else from the alignment shards: the same shard
    either way — all from the inputs, none (a tree that is gone), or a mix (files changed
    since they were read)."""
    from pipeline.kinds import tree as tree_kind
    from pipeline.kinds import tree_benchmark

    root = tmp_path / "tree"
    write_tree(root, 1200, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
    changed = tmp_path / "changed"
    changed.mkdir()
    for n, p in enumerate(sorted(root.rglob("*.png"))):
        q = changed / p.relative_to(root)
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(p.read_bytes() + (b"x" if n % 2 else b""))  # half of them changed
    shard = tmp_path / "out" / "benchmark" / "test-00000-of-00001.parquet"
    shas, read = {}, collections.defaultdict(collections.Counter)
    real, real_stored = tree_kind.run_benchmark, tree_benchmark._stored_image

    def stored(tree, *args):
        data = real_stored(tree, *args)
        read[Path(tree.root).name][data is not None] += 1
        return data

    def spy(ctx, reports):
        reports = list(reports)
        for where in (tmp_path / "gone", changed, root):
            report = real(dataclasses.replace(ctx, input_root=str(where)), reports)
            shas[where.name] = shard.read_bytes()
        return report

    monkeypatch.setattr(tree_kind, "run_benchmark", spy)
    monkeypatch.setattr(tree_benchmark, "_stored_image", stored)
    result = build("radimagenet-vqa", str(tmp_path / "out"), input_dir=str(root), log=lambda m: None)
    n = result.manifest["benchmark"]["images"]
    assert n >= 10
    assert read == {"gone": {False: n}, "changed": {True: read["changed"][True], False: n - read["changed"][True]},
                    "tree": {True: n}} and 0 < read["changed"][True] < n
    assert shas["gone"] == shas["changed"] == shas["tree"]
