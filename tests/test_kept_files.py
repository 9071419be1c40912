"""Files kept from an earlier build, trusted by their stat receipt (pipeline/io/kept_files.py):
a file whose stat identity changed is hashed and, when its bytes differ, rebuilt;
``--verify-shards`` hashes every kept file.  Every case ends with the same bytes as a fresh
build (tests/test_incremental.py's rule)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.inputs.sample import write_sample
from pipeline.io import kept_files
from pipeline.launch.build import build, regenerate
from pipeline.schema import layout
from tests.test_incremental import QUIET, _edit, _recipe_dir, corpus_digest


@pytest.fixture(scope="module")
def sample_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    write_sample(root, n_patients=4)
    return root


def _tamper(path: Path) -> None:
    """Change bytes in the middle of ``path`` in place, its size and mtime put back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_kept_shards_are_trusted_by_their_stat_receipt_and_hashed_when_it_differs(
        tmp_path, sample_input, monkeypatch):
    recipe = _recipe_dir(tmp_path)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    hashed: list[str] = []
    real = kept_files.file_sha256
    monkeypatch.setattr(kept_files, "file_sha256",
                        lambda root, rel: hashed.append(rel) or real(root, rel))
    _edit(recipe / "tpl" / "existence_closed.yaml", "Is the {{ structure }}", "Can you see the {{ structure }}")
    b = regenerate(str(out), **QUIET).manifest["build"]
    assert b["units_kept_pixels"] and b["cases_extracted"] == 0
    assert hashed == []  # every kept shard trusted by its unchanged stat
    fresh = tmp_path / "fresh"
    build(str(recipe / "my.yaml"), str(fresh), input_dir=str(sample_input), **QUIET)
    assert corpus_digest(out) == corpus_digest(fresh)

    # a shard edited in place, its size and mtime put back: its ctime moved, so it is
    # hashed, found changed, and its unit's cases extracted again
    images = sorted((out / "images").glob("*.parquet"))
    _tamper(images[0])
    b = regenerate(str(out), **QUIET).manifest["build"]
    assert f"images/{images[0].name}" in hashed
    assert b["cases_extracted"] > 0
    assert corpus_digest(out) == corpus_digest(fresh)

    # a change the stat cannot see (its receipts made to record the tampered file's stat):
    # trusted by default; --verify-shards hashes every kept file and rebuilds it
    target = images[-1]
    rel = f"images/{target.name}"
    good = target.read_bytes()
    _tamper(target)
    for receipt in (out / layout.UNITS_DIR).glob(f"{target.stem}*.json"):
        data = json.loads(receipt.read_text())
        data["stat"][rel] = kept_files.identity(str(out), rel)
        receipt.write_text(json.dumps(data))
    hashed.clear()
    regenerate(str(out), **QUIET)
    assert rel not in hashed and target.read_bytes() != good  # trusted: the stat's blind spot
    hashed.clear()
    b = regenerate(str(out), verify_shards=True, **QUIET).manifest["build"]
    assert rel in hashed and len(hashed) >= len(images)
    assert b["cases_extracted"] > 0 and target.read_bytes() == good
    assert corpus_digest(out) == corpus_digest(fresh)
