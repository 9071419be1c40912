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


@pytest.mark.parametrize("highs", [
    [1, 2, 3, 7, 9, 24, 117],  # a slice's eligible boxes: one draw, never rejected in practice
    [3_000_000_000],  # Lemire's rejection a third of the time: the high half, then the generator
    [2**31 + 1, 2**32 - 1],  # the threshold's extremes
    [2**32, 2**40, 0],  # beyond 32 bits (and none): left to the generator, its answer or error
], ids=["small", "rejections", "edges", "beyond-32-bits"])
def test_rng_integers_are_the_generators_integers(highs):
    """keys.rng_integers draws, for many keys at once, what each key's own generator draws:
    for 6,000 keys and seeds 0 and 7, every value, in every path of numpy's bounded draw."""
    ks = [f"{'abcdef0123456789abcd'[i % 20:]}/{i}/é" for i in range(6000)]
    for seed in (0, 7):
        want = []
        for i, key in enumerate(ks):
            try:
                want.append(int(keys.rng(seed, key, "prompt").integers(highs[i % len(highs)])))
            except ValueError:
                want.append(ValueError)
        if ValueError in want:  # integers(0): the generator's error, as before
            with pytest.raises(ValueError):
                keys.rng_integers(seed, ks, "prompt", [highs[i % len(highs)] for i in range(len(ks))])
            continue
        assert keys.rng_integers(seed, ks, "prompt", [highs[i % len(highs)] for i in range(len(ks))]) == want
    assert keys.rng_integers(0, [], "prompt", []) == []


@pytest.mark.parametrize("key", ["k", "radvqa-default-pseudonym-key", "x" * 100, "é-clé"])
def test_pseudonyms_under_a_key_and_kind_are_pseudonyms(key):
    name = keys.pseudonyms_under(key, "image")
    for text in ("", "MR/knee/normal/1.png", "ünïcode/ä.png", "a" * 300):
        assert name(text) == keys.pseudonym(key, "image", text)
    assert keys.pseudonyms_under(key, "case", n=8)("x") == keys.pseudonym(key, "case", "x", n=8)


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


def _dist(folder, name: str, metadata_text: str | None, kind: str = "dist-info") -> None:
    info = folder / f"{name}.{kind}"
    info.mkdir(parents=True)
    if metadata_text is not None:
        (info / ("METADATA" if kind == "dist-info" else "PKG-INFO")).write_text(metadata_text)


@pytest.mark.parametrize("layout, listed", [
    # the first sys.path folder that has the distribution wins, whatever its spelling
    ({"a": [("foo_bar-1.0", "Name: foo-bar\nVersion: 1.0\n\nbody")],
      "b": [("Foo.Bar-2.0", "Name: Foo.Bar\nVersion: 2.0\n")]}, True),
    ({"a": [], "b": [("FOO.BAR-2.0", "Metadata-Version: 2.1\nversion: 2.0\n")]}, True),
    ({"a": [("foo_bar-1.0.egg-info", "Version: 1.5\n")], "b": []}, True),
    ({"a": [("foo_bar-1.0", "Name: foo-bar\n\nVersion: 9\n")], "b": []}, True),  # not a header
    ({"a": [("foo_bar-1.0", None)], "b": [("foo_bar-2.0", "Version: 2.0\n")]}, False),  # no METADATA
    ({"a": [("foo_bar-1.0", "Version: 1.0\n"), ("foo_bar-3.0", "Version: 3.0\n")], "b": []}, False),
    ({"a": [("FOO-BAR-2.0", "Version: 1.0\n")], "b": []}, False),  # "foo" (name-version)
    ({"a": [("other-1.0", "Version: 1.0\n")], "b": []}, False),
])
def test_installed_version_finds_what_importlib_metadata_finds(tmp_path, monkeypatch, layout, listed):
    """The metadata file found from the folder listings (importlib.metadata left unimported)
    as importlib.metadata finds it; whatever the listings cannot settle (``listed`` false), and
    a file without its version header, asked of importlib.metadata: the same version."""
    from importlib import metadata

    for folder, dists in layout.items():
        (tmp_path / folder).mkdir()
        for name, text in dists:
            if name.endswith(".egg-info"):
                _dist(tmp_path / folder, name.removesuffix(".egg-info"), text, "egg-info")
            else:
                _dist(tmp_path / folder, name, text)
    monkeypatch.setattr("sys.path", [str(tmp_path / "a"), str(tmp_path / "b")])
    keys.installed_version.cache_clear()
    try:
        try:
            truth = metadata.version("foo-bar")
        except metadata.PackageNotFoundError:
            truth = "missing"
        found = keys._metadata_file("foo-bar")
        assert (found is not None) == listed, found
        if listed:
            assert found == str(metadata.distribution("foo-bar")._path / (
                "PKG-INFO" if found.endswith("PKG-INFO") else "METADATA"))
        assert keys.installed_version("foo-bar") == truth
    finally:
        keys.installed_version.cache_clear()


def test_installed_versions_are_read_without_importing_importlib_metadata():
    import subprocess
    import sys

    code = ("import sys; from pipeline.core import keys; "
            "from pipeline.launch.finalise import versions; versions(); "
            "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
