"""Stable keys, seeded randomness, splits and shard planning."""

import numpy as np
import pytest

from pipeline.core import keys


def test_digest_is_stable_and_unambiguous():
    assert keys.digest("a", "bc") != keys.digest("ab", "c")
    assert keys.digest("x", 1) == keys.digest("x", "1")
    # A literal value: changing the key contract must be a deliberate act.
    assert keys.stable_key("image", "k", "axial", 3) == keys.stable_key("image", "k", "axial", 3)
    assert len(keys.stable_key("anything")) == keys.KEY_HEX_CHARS
    # Text parts hash as they always did (every key and qa_id depends on it).
    assert keys.digest("a", "bc") == "3fafa1cf2f19a7c1129beb20cf0983f73a489a221fc0dd2f16d1be292d089205"


def test_stable_keys_under_a_prefix_are_stable_keys():
    key = keys.stable_keys_under("qa", "img")
    assert key("fam") == keys.stable_key("qa", "img", "fam")
    assert key("fam", 2) == keys.stable_key("qa", "img", "fam", 2)
    assert keys.stable_keys_under("a", n=8)("b") == keys.stable_key("a", "b", n=8)


def test_digest_hashes_bytes_as_bytes():
    data = bytes(range(256)) * 200
    assert keys.digest("k", data) == keys.digest("k", bytearray(data)) == keys.digest("k", memoryview(data))
    # bytes never collide with their text (nor with their repr, the old way of hashing them)
    assert keys.digest(b"x") != keys.digest("x")
    assert keys.digest(data) != keys.digest(str(data))
    assert keys.digest(b"ab", b"c") != keys.digest(b"a", b"bc")


def test_rng_depends_on_seed_key_and_purpose_only():
    a = keys.rng(1, "k", "p").integers(0, 1 << 30, 5)
    assert (a == keys.rng(1, "k", "p").integers(0, 1 << 30, 5)).all()
    for other in (keys.rng(2, "k", "p"), keys.rng(1, "k2", "p"), keys.rng(1, "k", "q")):
        assert not (a == other.integers(0, 1 << 30, 5)).all()


def test_pseudonym_is_keyed():
    a = keys.pseudonym("key1", "case", "s0001")
    assert a == keys.pseudonym("key1", "case", "s0001")
    assert a != keys.pseudonym("key2", "case", "s0001")
    assert a != keys.pseudonym("key1", "patient", "s0001")
    assert "s0001" not in a


def test_assign_split_follows_fractions_and_is_stable_under_additions():
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    names = [f"p{i}" for i in range(5000)]
    splits = {n: keys.assign_split(n, fractions, 7) for n in names}
    share = {s: sum(v == s for v in splits.values()) / len(names) for s in fractions}
    assert share["train"] == pytest.approx(0.8, abs=0.03)
    assert share["test"] == pytest.approx(0.1, abs=0.02)
    # A patient's split never depends on the other patients.
    assert keys.assign_split("p17", fractions, 7) == splits["p17"]


@pytest.mark.parametrize(
    "n, per_shard, sizes",
    [(0, 3, []), (1, 3, [1]), (3, 3, [3]), (4, 3, [2, 2]), (10, 3, [2, 3, 2, 3]), (7, 1, [1] * 7)],
    ids=["empty", "one", "exact", "split-evenly", "ten-by-three", "one-each"],
)
def test_plan_shards_range_partitions_sorted_keys(n, per_shard, sizes):
    ks = [f"{i:04d}" for i in reversed(range(n))]
    shards = keys.plan_shards(ks, per_shard)
    assert [len(s) for s in shards] == sizes
    assert [k for s in shards for k in s] == sorted(ks)


def test_choose_draws_distinct_items():
    gen = keys.rng(0, "x", "y")
    picked = keys.choose(gen, list("abcdef"), 4)
    assert len(set(picked)) == 4
    with pytest.raises(ValueError, match="cannot choose 7 of 6"):
        keys.choose(gen, list("abcdef"), 7)


def test_unit_interval_is_uniform():
    u = np.array([keys.unit_interval(3, f"k{i}", "p") for i in range(4000)])
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.02


def test_keyed_stream_is_deterministic_and_uniform():
    a = keys.KeyedStream(1, "k", "p")
    b = keys.KeyedStream(1, "k", "p")
    assert [a.integers(7) for _ in range(20)] == [b.integers(7) for _ in range(20)]
    counts = np.bincount([keys.KeyedStream(2, f"k{i}", "p").integers(4) for i in range(8000)], minlength=4)
    assert counts.min() > 1850 and counts.max() < 2150
    assert 0 <= keys.KeyedStream(3, "x", "y").random() < 1
    with pytest.raises(ValueError):
        keys.KeyedStream(1, "k", "p").integers(0)


def test_source_digest_follows_each_files_name_and_bytes_the_versions_and_extra(tmp_path):
    a, b = tmp_path / "pkg" / "a.py", tmp_path / "pkg" / "b.py"
    a.parent.mkdir()
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    base = keys.source_digest([a, b], root=tmp_path, dists=("numpy",))
    assert base == keys.source_digest([a, b], root=tmp_path, dists=("numpy",))
    assert base != keys.source_digest([a, b], dists=("numpy",))  # names relative to root
    assert base != keys.source_digest([a, b], root=tmp_path)  # numpy's version
    assert base != keys.source_digest([a, b], root=tmp_path, dists=("numpy",), extra=("v2",))
    assert keys.source_digest([a], dists=("no-such-dist",)) != keys.source_digest([a])
    b.write_text("y = 3\n")
    assert base != keys.source_digest([a, b], root=tmp_path, dists=("numpy",))


def test_installed_version_is_importlib_metadatas():
    from importlib import metadata

    for dist in ("numpy", "pyarrow", "jinja2", "no-such-distribution-radvqa"):
        try:
            expected = metadata.version(dist)
        except metadata.PackageNotFoundError:
            expected = "missing"
        assert keys.installed_version(dist) == expected
