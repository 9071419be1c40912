"""Incremental builds and faults: regenerate after editing templates, pools or splits; resume
an interrupted build; retry after a failing DoFn or a killed worker.  Every case ends with
the same bytes as a clean build of the same recipe (only the manifest's ``build`` section,
which says what was reused, differs)."""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing.forkserver
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config.resources import resource_dir
from pipeline.engine import execute, in_process, ood
from pipeline.errors import BuildFailed, ConfigError
from pipeline.inputs.sample import write_sample
from pipeline.io import shards
from pipeline.launch.build import build, regenerate
from pipeline.launch.runner import worker_processes
from pipeline.qa import stored_rows
from pipeline.schema import layout
from tests.probe import python_probe

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"log": lambda m: None}


def corpus_digest(root: Path) -> dict[str, str]:
    """sha256 of every corpus file (build state excluded; the manifest without ``build``)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith(".radvqa/"):
            continue
        data = p.read_bytes()
        if rel == "manifest.json":
            m = json.loads(data)
            m.pop("build")
            data = json.dumps(m, sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def sample_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    write_sample(root, n_patients=6)
    return root


def _recipe_dir(tmp_path: Path, cases_per_shard: int = 2) -> Path:
    """A user's recipe folder: the sample recipe with its own copies of templates and pools."""
    d = tmp_path / "recipe"
    shutil.copytree(resource_dir("templates") / "radvuqa", d / "tpl")
    shutil.copy(resource_dir("distractor_pools") / "totalsegmentator.yaml", d / "pool.yaml")
    text = (resource_dir("recipes") / "sample.yaml").read_text()
    for old, new in (("templates: [radvuqa]", "templates: [tpl]"),
                     ("pools: [totalsegmentator", "pools: [pool.yaml")):
        assert old in text, f"sample recipe changed: {old!r} not found"  # never a silent no-op
        text = text.replace(old, new)
    text = text.replace("cases_per_shard: 3", f"cases_per_shard: {cases_per_shard}")
    (d / "my.yaml").write_text(text)
    return d


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def _stamps(root: Path, config: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (root / config).glob("*.parquet")}


def test_regenerate_after_template_and_pool_edits_matches_a_fresh_build(tmp_path, sample_input):
    recipe = _recipe_dir(tmp_path)
    out = tmp_path / "out"
    first = build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    assert first.manifest["build"]["cases_extracted"] == 6
    images_before, ood_before = _stamps(out, "images"), _stamps(out, "ood")
    _edit(recipe / "tpl" / "existence_closed.yaml", "Is the {{ structure }}", "Can you see the {{ structure }}")
    _edit(recipe / "pool.yaml", "display: spleen", "display: splenic organ")
    # run as the CLI would, in a fresh process: a text-only regenerate runs the units
    # in-process and never imports Apache Beam, nor the readers' SimpleITK and pydicom, nor
    # scikit-learn or SciPy (the learned baseline's model is numpy only), nor pandas (its
    # Arrow arrays built by pipeline.schema.pyarrays; installed here by `datasets`), nor
    # pyarrow.compute (its kernels called through pipeline.schema.kernels), nor the readers
    # (no case read); a fresh build (Beam) below is the same bytes
    probe = ("import json, sys; from pipeline.launch.build import regenerate; "
             f"r = regenerate({str(out)!r}, log=lambda m: None); "
             "print(json.dumps([[m for m in ('apache_beam', 'SimpleITK', 'pydicom', 'sklearn', "
             "'scipy', 'pandas', 'pyarrow.compute', 'pipeline.inputs.readers.registry') "
             "if m in sys.modules], r.manifest['build']]))")
    heavy_imported, b = json.loads(python_probe(probe).splitlines()[-1])
    assert heavy_imported == []
    assert b["cases_extracted"] == 0 and b["cases_copied_from_stored_shards"] == 0
    unit_ids = sorted(p.split("/", 1)[1].removesuffix(".parquet")
                      for p in json.loads((out / "manifest.json").read_text())["files"]
                      if p.startswith("images/"))
    assert sorted(b["units_kept_pixels"]) == unit_ids
    assert _stamps(out, "images") == images_before  # pixel shards not rewritten
    assert ood_before and _stamps(out, "ood") == ood_before  # nor the ood shards (same inputs)
    qa = pq.read_table(out / "qa").to_pylist()
    assert any(r["question"].startswith("Can you see the") for r in qa)
    assert any("splenic organ" in r["question"] + " ".join(r["options"]) + r["answer_text"] for r in qa)
    fresh = tmp_path / "fresh"
    build(str(recipe / "my.yaml"), str(fresh), input_dir=str(sample_input), **QUIET)
    assert corpus_digest(out) == corpus_digest(fresh)
    # nothing changed since: every unit is skipped, the corpus stays the same — through the
    # radvqa command, which ends without the interpreter's teardown (its output all there)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "regenerate", "--output", str(out)],
                          capture_output=True, text=True, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reused: " in proc.stderr and "shortcut audit" in proc.stderr  # the closing table, whole
    third = json.loads((out / "manifest.json").read_text())
    assert sorted(third["build"]["units_skipped"]) == unit_ids
    assert corpus_digest(out) == corpus_digest(fresh)
    assert not (out / layout.PLAN_DIR).exists()  # plans name source files: removed when done
    # unchanged files were not parsed again (pipeline.config.checked); an edited one is, and
    # a bad edit fails as it always did, naming file and field or line
    assert len(json.loads((out / layout.CONFIG_CACHE).read_text())["files"]) >= 13
    template = recipe / "tpl" / "existence_closed.yaml"
    good = template.read_text()
    for bad, message in (("question_type: closed", "question_type: maybe"),
                         ("variants:", "variants: [oops"),
                         ("{{ structure }}", "{{ structure.__class__ }}")):
        template.write_text(good.replace(bad, message, 1))
        with pytest.raises(ConfigError, match=r"existence_closed\.yaml: (question_type: 'maybe'"
                                              r"|line \d+, column \d+: invalid YAML|variants\[\d+\])"):
            regenerate(str(out), **QUIET)
    template.write_text(good)


def test_split_change_copies_stored_rows_instead_of_decoding(tmp_path, sample_input):
    recipe = _recipe_dir(tmp_path)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    _edit(recipe / "my.yaml", "fractions: {train: 0.6, validation: 0.1, test: 0.3}",
          "fractions: {train: 0.4, validation: 0.2, test: 0.4}")
    again = regenerate(str(out), **QUIET)
    b = again.manifest["build"]
    assert b["cases_extracted"] == 0 and b["cases_copied_from_stored_shards"] == 6
    fresh = tmp_path / "fresh"
    build(str(recipe / "my.yaml"), str(fresh), input_dir=str(sample_input), **QUIET)
    assert corpus_digest(out) == corpus_digest(fresh)
    assert not (out / ".radvqa" / "previous").exists()


def test_ood_shards_are_kept_only_while_their_inputs_are_unchanged(tmp_path, sample_input, monkeypatch):
    """A unit re-rendered after a template edit keeps its stored ``ood`` shard (same inputs
    digest, file verified); other ``ood`` settings or other code behind the rows make the
    rows again, to the bytes of a fresh build."""
    recipe = _recipe_dir(tmp_path)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    template = recipe / "tpl" / "existence_closed.yaml"
    wordings = ["Is the {{ structure }}", "Can you see the {{ structure }}"]

    def edit_template_and_regenerate():
        _edit(template, wordings[0], wordings[1])
        wordings.reverse()
        regenerate(str(out), **QUIET)

    def ood_bytes():
        return {name: (out / "ood" / name).read_bytes() for name in _stamps(out, "ood")}

    before, data = _stamps(out, "ood"), ood_bytes()
    edit_template_and_regenerate()
    assert before and _stamps(out, "ood") == before
    _edit(recipe / "my.yaml", "per_image: 1", "per_image: 2")  # other ood settings
    regenerate(str(out), **QUIET)
    assert ood_bytes() != data
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input))
    before, data = _stamps(out, "ood"), ood_bytes()
    edit_template_and_regenerate()
    assert _stamps(out, "ood") == before
    monkeypatch.setattr(ood, "_code_digest", lambda: "other code")
    edit_template_and_regenerate()
    now = _stamps(out, "ood")
    assert now.keys() == before.keys() and all(now[k] != before[k] for k in before)
    assert ood_bytes() == data


def test_stored_question_rows_are_used_only_under_their_family_digest(tmp_path, sample_input, monkeypatch):
    """A regenerate after a template edit generates only the edited family's rows; the
    others come from ``.radvqa/rows`` (taken as stored: a tampered row shows), and other
    code behind the rows makes every family's rows again, to the bytes of a fresh build."""
    recipe = _recipe_dir(tmp_path)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    rows_dir = out / layout.ROWS_DIR
    template = recipe / "tpl" / "existence_closed.yaml"
    # a new wording each time: the in-process memo of questions_for never holds its rows
    wordings = [f"{w} {{{{ structure }}}}" for w in ("Is the", "Can you see the", "Is there a", "Do you see the")]

    def edit_template_and_regenerate():
        _edit(template, wordings[0], wordings[1])
        wordings.append(wordings.pop(0))
        regenerate(str(out), **QUIET)
        return {p.name: p.stat().st_mtime_ns for p in rows_dir.iterdir()}

    before = {p.name: p.stat().st_mtime_ns for p in rows_dir.iterdir()}
    after = edit_template_and_regenerate()
    written = {n for n, t in after.items() if before.get(n) != t}
    assert written and all(".existence_closed." in n for n in written)
    assert len(after) == len(before)  # the edited family's files under its old digest are gone
    # a stored row is taken as it is (the families' finished rows, kept as blocks beside
    # them, removed: else they would be taken instead, pipeline.engine.qa_blocks)
    for p in rows_dir.glob("*.qa.arrow"):
        p.unlink()
    target = next(p for p in sorted(rows_dir.glob("*.json.gz")) if ".grounding_open." in p.name)  # not balanced
    stored = json.loads(gzip.decompress(target.read_bytes()))
    row = next(r for rows in stored.values() for r in rows if "balance" not in r and r["question"])
    row["question"] = "TAMPERED?"
    target.write_bytes(gzip.compress(json.dumps(stored).encode()))
    edit_template_and_regenerate()
    assert "TAMPERED?" in pq.read_table(out / "qa").column("question").to_pylist()
    monkeypatch.setattr(stored_rows, "code_digest", lambda: "other code")
    after = edit_template_and_regenerate()
    assert not set(after) & set(before)  # every family under a new digest
    assert "TAMPERED?" not in pq.read_table(out / "qa").column("question").to_pylist()
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input))


def test_an_edited_input_case_is_extracted_again_and_only_it(tmp_path, sample_input):
    recipe = _recipe_dir(tmp_path)
    inp = tmp_path / "in"
    shutil.copytree(sample_input, inp)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    mask = inp / "s0002" / "segmentations" / "spleen.nii.gz"
    _same_size_edit(mask)
    again = build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    assert again.manifest["build"]["cases_extracted"] == 1
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, inp))


def test_files_whose_times_alone_changed_keep_their_rows(tmp_path, sample_input):
    """A case whose files' modification times changed but not their bytes (touched, restored
    from a backup) is checked by content, not extracted again; the next build trusts the
    new times as they are (every unit unchanged)."""
    recipe = _recipe_dir(tmp_path)
    inp = tmp_path / "in"
    shutil.copytree(sample_input, inp)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    for path in (inp / "s0002").rglob("*"):  # a whole totalseg case, and a dicom series file
        _later(path)
    _later(next(p for p in sorted((inp / "s0001" / "dicom").rglob("*")) if p.is_file()))
    again = build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    assert again.manifest["build"]["cases_extracted"] == 0
    assert again.manifest["build"]["cases_copied_from_stored_shards"] > 0
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, inp))
    third = build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    assert third.manifest["build"]["cases_copied_from_stored_shards"] == 0
    assert len(third.manifest["build"]["units_skipped"]) == sum(
        s["shards"] for s in third.manifest["splits"].values())


def _supported_copy(sample_input: Path, dst: Path) -> None:
    """The sample without its multilabel case, whose class map (``labels.json``) is not in
    the content digest its layout records, so it is extracted again whenever its times
    change (its layout has no ``content_digests``)."""
    shutil.copytree(sample_input, dst, ignore=lambda d, names: ["s0005"] if "s0005" in names else [])
    meta = dst / "meta.csv"
    meta.write_text("".join(line for line in meta.read_text().splitlines(keepends=True)
                            if not line.startswith("s0005;")))


def _copy_without_times(src: Path, dst: Path) -> None:
    """``cp -r src dst``: the bytes copied, not the modification times (made certain to
    differ: a coarse clock could repeat one)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for path in dst.rglob("*"):
        _later(path)


def _later(path: Path) -> None:
    if path.is_file():
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _same_size_edit(path: Path) -> None:
    """Clear one voxel of the gzipped NIfTI mask ``path``, written back at exactly its old
    size (the gzip header padded with a file name when the new stream is shorter): other
    bytes and content, same name and size."""
    data = path.read_bytes()
    raw = bytearray(gzip.decompress(data))
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    raw[vox_offset + raw[vox_offset:].rfind(b"\x01")] = 0
    for level in range(9, 0, -1):
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        deflated = c.compress(bytes(raw)) + c.flush()
        pad = len(data) - (18 + len(deflated))
        if pad >= 0:
            break
    else:
        raise AssertionError(f"{path}: the edited mask does not fit in its size")
    name = b"x" * (pad - 1) + b"\0" if pad else b""
    head = b"\x1f\x8b\x08" + (b"\x08" if pad else b"\x00") + b"\0\0\0\0\x02\xff" + name
    edited = head + deflated + struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)
    assert len(edited) == len(data) and edited != data and gzip.decompress(edited) == bytes(raw)
    path.write_bytes(edited)


def test_an_input_copied_without_its_times_is_not_extracted_again(tmp_path, sample_input):
    """`cp -r` of the input to a new folder (new modification times, the same bytes), then a
    build into the same output: every case keeps its rows (checked by content), and the
    corpus is a fresh build's."""
    recipe = _recipe_dir(tmp_path)
    inp, copied = tmp_path / "in", tmp_path / "copied"
    _supported_copy(sample_input, inp)
    out = tmp_path / "out"
    first = build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    assert first.manifest["build"]["cases_extracted"] == 5
    _copy_without_times(inp, copied)
    again = build(str(recipe / "my.yaml"), str(out), input_dir=str(copied), **QUIET)
    assert again.manifest["build"]["cases_extracted"] == 0
    assert again.manifest["build"]["cases_copied_from_stored_shards"] == 5
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, copied))


def test_a_copied_input_with_one_file_edited_at_its_size_extracts_that_case(tmp_path, sample_input):
    """The input copied without its times and one mask edited in place at the same size:
    that case alone is extracted again (its bytes differ from its rows' content digest)."""
    recipe = _recipe_dir(tmp_path)
    inp, copied = tmp_path / "in", tmp_path / "copied"
    _supported_copy(sample_input, inp)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    _copy_without_times(inp, copied)
    _same_size_edit(copied / "s0002" / "segmentations" / "spleen.nii.gz")
    again = build(str(recipe / "my.yaml"), str(out), input_dir=str(copied), **QUIET)
    assert again.manifest["build"]["cases_extracted"] == 1
    assert again.manifest["build"]["cases_copied_from_stored_shards"] == 4
    fresh = _fresh(tmp_path, recipe, copied)
    assert corpus_digest(out) == corpus_digest(fresh)
    before = corpus_digest(_fresh(tmp_path, recipe, inp, name="before"))
    assert {k for k in before if before[k] != corpus_digest(fresh)[k]} >= {"manifest.json"}


def _fresh(tmp_path, recipe, inp, name="fresh"):
    fresh = tmp_path / name
    build(str(recipe / "my.yaml"), str(fresh), input_dir=str(inp), **QUIET)
    return fresh


def test_a_dofn_failing_on_its_first_attempt_is_retried(tmp_path, sample_input, monkeypatch):
    recipe = _recipe_dir(tmp_path)
    real = execute.extract_unit
    failed = []

    def flaky(ref, ctx, kind):
        if ref.unit_id.startswith("train-00000") and not failed:
            failed.append(ref.unit_id)
            # as a worker killed mid-write leaves it: the retry must not ship it
            partial = Path(ctx.output) / "structures" / f"{ref.unit_id}.parquet{shards.TMP_MARK}cafe"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(b"PAR1 half a shard")
            raise RuntimeError("injected failure on the first attempt")
        return real(ref, ctx, kind)

    monkeypatch.setattr(execute, "extract_unit", flaky)
    out = tmp_path / "out"
    result = build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), retries=1,
                   beam_args=["--direct_running_mode=in_memory"], **QUIET)
    assert failed and result.manifest["build"]["attempts"] == 2
    monkeypatch.setattr(execute, "extract_unit", real)
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input))


def test_without_retries_the_failure_is_reported_and_a_rerun_resumes(tmp_path, sample_input, monkeypatch):
    recipe = _recipe_dir(tmp_path)
    real = execute.extract_unit

    calls = []

    def broken(ref, ctx, kind):  # every unit after the first fails: one unit finishes
        calls.append(ref.unit_id)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        return real(ref, ctx, kind)

    monkeypatch.setattr(execute, "extract_unit", broken)
    out = tmp_path / "out"
    with pytest.raises(BuildFailed, match="disk on fire.*Rerun the same command to resume"):
        build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), retries=0,
              beam_args=["--direct_running_mode=in_memory"], **QUIET)
    monkeypatch.setattr(execute, "extract_unit", real)
    result = build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    assert result.manifest["build"]["cases_extracted"] < 6  # finished units were kept
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input))


def _final_files_are_complete(out: Path) -> int:
    """Every file under a final name parses completely (Parquet) or as JSON; count them."""
    n = 0
    for p in out.rglob("*"):
        if not p.is_file() or layout.STATE_DIR + "/sample" in p.as_posix() or ".tmp-" in p.name:
            continue
        if p.suffix == ".parquet":
            pq.read_table(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        n += 1
    return n


def test_a_killed_build_resumes_to_the_same_bytes(tmp_path, sample_input):
    """Kill the launcher and its workers (SIGKILL to the process group) once the first
    unit is finished; nothing partial stands under a final name; the rerun resumes."""
    recipe = _recipe_dir(tmp_path, cases_per_shard=1)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "pipeline.cli", "build", "--recipe", str(recipe / "my.yaml"),
            "--input", str(sample_input), "--output", str(out),
            "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    receipts = out / layout.UNITS_DIR
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.endswith(".json") and ".extract" not in p.name for p in receipts.glob("*.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _final_files_are_complete(out) > 0
    assert not (out / "manifest.json").exists()
    result = build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    b = result.manifest["build"]
    assert b["units_skipped"] or b["units_kept_pixels"]
    assert b["cases_extracted"] < 6
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input))


@pytest.fixture(scope="module")
def many_units_input(tmp_path_factory):
    """16 cases, one unit each: a worker killed after the first unit's receipt still has
    units to do (extraction is fast: 6 units could all be done by then)."""
    root = tmp_path_factory.mktemp("input16")
    write_sample(root, n_patients=16)
    return root


def test_a_killed_worker_is_detected_and_the_build_retried(tmp_path, many_units_input):
    """In multi_processing mode Beam would wait forever for a dead worker; the watchdog
    turns it into a failure, the launcher retries, and the result is a clean build's."""
    recipe = _recipe_dir(tmp_path, cases_per_shard=1)
    out = tmp_path / "out"
    killed: list[int] = []
    thread = _kill_after_first_receipt(out, _worker_pids, killed)
    result = build(str(recipe / "my.yaml"), str(out), input_dir=str(many_units_input), retries=2,
                   beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                   **QUIET)
    thread.join(timeout=5)
    assert killed, "no worker was killed"
    assert result.manifest["build"]["attempts"] >= 2
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, many_units_input))


def test_a_killed_warm_worker_is_detected_and_the_build_retried(tmp_path, many_units_input):
    """``--workers 2``: a warm worker (forked by the forkserver, not a child of the
    launcher) killed mid-build is seen by the pool's watcher; the launcher retries."""
    recipe = _recipe_dir(tmp_path, cases_per_shard=1)
    out = tmp_path / "out"
    killed: list[int] = []
    thread = _kill_after_first_receipt(out, lambda: _warm_pids()[:1], killed)
    result = build(str(recipe / "my.yaml"), str(out), input_dir=str(many_units_input), retries=2,
                   workers=2, **QUIET)
    thread.join(timeout=5)
    assert killed, "no warm worker was killed"
    assert result.manifest["build"]["attempts"] >= 2
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, many_units_input))


def _kill_after_first_receipt(out: Path, find, killed: list[int]) -> threading.Thread:
    """A thread that, once the first unit's extract receipt is in ``out``, SIGKILLs the
    processes ``find()`` returns (as soon as it returns any) and records them in ``killed``."""

    def assassin():
        deadline = time.monotonic() + 240
        receipts = out / layout.UNITS_DIR
        while time.monotonic() < deadline:
            if any(receipts.glob("*.extract.json")):
                pids = find()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                if pids:
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    return thread


def _warm_pids() -> list[int]:
    """The forkserver's children: the warm workers."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    return [pid for pid in _children_of(server)] if server else []


def _children_of(parent: int) -> list[int]:
    out = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def _worker_pids() -> list[int]:
    """The ``multi_processing`` workers themselves, as an out-of-memory kill would find them:
    the Python processes under the shells Beam starts them with (killing only the shell
    left the worker running, connected, and the build finishing in one attempt)."""
    out = []
    for pid in worker_processes(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith((b"/bin/sh\0", b"sh\0")):
                    out.append(pid)
        except OSError:
            continue
    return out  # every one: an idle worker left by an earlier test in this process would
                # otherwise be the one killed, and the build would have nothing to retry


def _codecs(root: Path, config: str, column: str) -> set[str]:
    out = set()
    for p in (root / config).glob("*.parquet"):
        meta = pq.ParquetFile(p).metadata
        for g in range(meta.num_row_groups):
            out |= {meta.row_group(g).column(i).compression for i in range(meta.num_columns)
                    if meta.row_group(g).column(i).path_in_schema == column}
    return out


def test_changed_writer_options_rewrite_the_shards(tmp_path, sample_input, monkeypatch):
    """The shard writer's options enter the fingerprint: unchanged, a rebuild skips every
    unit; changed, every shard is written again in the new format (none left behind)."""
    out = tmp_path / "out"
    first = build("sample", str(out), input_dir=str(sample_input), **QUIET)
    assert _codecs(out, "images", "image.bytes") == {"UNCOMPRESSED"}  # PNG is not recompressed
    assert _codecs(out, "qa", "question") == {"ZSTD"}
    stamps = _stamps(out, "images") | _stamps(out, "qa")
    same = regenerate(str(out), **QUIET)
    assert sorted(same.manifest["build"]["units_skipped"]) == sorted(
        p.split("/", 1)[1].removesuffix(".parquet") for p in first.manifest["files"]
        if p.startswith("images/"))
    assert _stamps(out, "images") | _stamps(out, "qa") == stamps
    monkeypatch.setitem(shards.WRITER, "image_codec", "zstd")
    again = regenerate(str(out), **QUIET)
    assert again.manifest["build"]["units_skipped"] == []
    assert _codecs(out, "images", "image.bytes") == {"ZSTD"}
    now = _stamps(out, "images") | _stamps(out, "qa")
    assert now.keys() == stamps.keys() and all(now[k] != stamps[k] for k in stamps)


def editable_tree_recipe(tmp_path, images: int, seed: int):
    """A generated RadImageNet-style tree of ``images`` images and a copy of the
    ``radimagenet-vqa`` recipe whose templates (``recipe/tpl``) and pool a test may edit:
    ``(input tree, recipe folder)``; the recipe is ``recipe/my.yaml``."""
    from pipeline.inputs.sample_tree import write_tree
    from pipeline.qa.label_pools import load_label_pools

    pool = resource_dir("distractor_pools") / "radimagenet.yaml"
    inp = tmp_path / "tree"
    write_tree(inp, images, load_label_pools([pool]), seed=seed)
    d = tmp_path / "recipe"
    shutil.copytree(resource_dir("templates") / "radimagenet", d / "tpl")
    shutil.copy(pool, d / "pool.yaml")
    text = (resource_dir("recipes") / "radimagenet-vqa.yaml").read_text()
    for old, new in (("templates: [radimagenet]", "templates: [tpl]"),
                     ("pools: [radimagenet]", "pools: [pool.yaml]")):
        assert old in text
        text = text.replace(old, new)
    (d / "my.yaml").write_text(text)
    return inp, d


def test_tree_regenerate_after_a_template_edit_matches_a_fresh_build(tmp_path, monkeypatch):
    """The tree kind keeps its images beside their text: a template edit copies every image
    from the stored shards (nothing read from the input again), in this process without
    Beam, to the same bytes as a fresh build.  Only the edited family is generated again
    (the others' finished rows come from their blocks, kinds/tree_blocks.py; an unreadable
    block: every family rendered again, same bytes), and the ood shard stays as it is."""
    from pipeline.engine import qa_blocks
    from pipeline.kinds import tree as tree_kind
    from pipeline.kinds import tree_tables

    inp, d = editable_tree_recipe(tmp_path, 600, seed=3)  # (600: a benchmark is planned)
    out = tmp_path / "out"
    assert build(str(d / "my.yaml"), str(out), input_dir=str(inp), **QUIET).manifest["benchmark"]["rows"]

    def files():  # alignment shard -> (inode, mtime): a file written again gets new ones
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "alignment").glob("*")}

    def fresh(name):
        build(str(d / "my.yaml"), str(tmp_path / name), input_dir=str(inp), **QUIET)
        return corpus_digest(tmp_path / name)

    def stat(path):
        return path.stat().st_ino, path.stat().st_mtime_ns

    before = files()
    units = sorted(p.stem for p in (out / "alignment").glob("*.parquet"))
    assert len(units) >= 2
    rows_dir = out / layout.ROWS_DIR
    blocks = {p.name: stat(p) for p in rows_dir.glob(f"*{qa_blocks.SUFFIX}")}
    # the nine question families (captions: alignment), of each unit and of the benchmark
    assert len(blocks) == 9 * (len(units) + 1)
    (ood_shard,) = (out / "ood").glob("*.parquet")
    ood_before = stat(ood_shard)
    generated: set[str] = set()  # the families the units render (the benchmark: all)
    real = tree_tables.render_tree_images
    monkeypatch.setattr(tree_kind, "render_tree_images", lambda records, images, ctx:
                        generated.update(ctx.families) or real(records, images, ctx))
    from pipeline.kinds import tree_blocks

    bench: list[set] = []  # the families the benchmark generates (the others: its blocks)
    real_rows = tree_blocks.benchmark_rows
    monkeypatch.setattr(tree_blocks, "benchmark_rows", lambda records, families, ctx:
                        bench.append(set(families)) or real_rows(records, families, ctx))
    payloads: list[list[str]] = []  # the kept shards' columns read: the records' own only
    records = tree_kind.TreeKind.records
    monkeypatch.setattr(tree_kind.TreeKind, "records", lambda self, payload, split, ctx=None:
                        payloads.append(payload["alignment"].column_names)
                        or records(self, payload, split, ctx))
    # a question's wording: every alignment shard (images + captions) kept as it is, and the
    # other families' rows and the ood shard
    _edit(d / "tpl" / "abnormality_closed.yaml", "Does this image appear normal?", "Does this image look normal?")
    b = regenerate(str(out), **QUIET).manifest["build"]
    assert b["cases_extracted"] == 0 and b["cases_copied_from_stored_shards"] > 0
    assert b["units_kept_text_shards"] == units and files() == before
    assert generated == {"abnormality_closed"}
    assert payloads == [["image_id", "modality", "region", "label", "split"]] * len(units)
    assert bench == [{"abnormality_closed"}]
    now = {p.name: stat(p) for p in rows_dir.glob(f"*{qa_blocks.SUFFIX}")}
    assert len(now) == len(blocks)
    assert {n for n in now if blocks.get(n) != now[n]} == {n for n in now if ".abnormality_closed." in n}
    assert stat(ood_shard) == ood_before
    assert corpus_digest(out) == fresh("fresh")
    # an unreadable block: every family rendered again, to the same bytes
    _edit(d / "tpl" / "abnormality_closed.yaml", "Does this image look normal?", "Is this image normal?")
    cut = sorted(rows_dir.glob(f"*.anatomy_open.*{qa_blocks.SUFFIX}"))[0]
    cut.write_bytes(b"ARROW1 cut")
    (bench_cut,) = rows_dir.glob(f"benchmark.anatomy_open.*{qa_blocks.SUFFIX}")
    bench_cut.write_bytes(b"ARROW1 cut")
    bench.clear()
    regenerate(str(out), **QUIET)
    assert cut.read_bytes() != b"ARROW1 cut" and bench_cut.read_bytes() != b"ARROW1 cut"
    assert len(bench) == 1 and len(bench[0]) == 9  # every family generated again
    assert corpus_digest(out) == fresh("fresh1")
    # a caption's wording: every alignment shard written again
    _edit(d / "tpl" / "caption.yaml", "Summarise what this image shows.", "Summarize what this image shows.")
    b = regenerate(str(out), **QUIET).manifest["build"]
    assert b["units_kept_text_shards"] == [] and b["cases_extracted"] == 0
    now = files()
    assert now.keys() == before.keys() and all(now[k] != before[k] for k in now)
    assert corpus_digest(out) == fresh("fresh2")
    # one image file changed: it is read again, its unit's shard written, the others kept
    pngs = sorted(inp.rglob("*.png"))
    changed = next(p for p in pngs if p.read_bytes() != pngs[0].read_bytes())
    changed.write_bytes(pngs[0].read_bytes())
    before = files()
    b = regenerate(str(out), **QUIET).manifest["build"]
    assert b["cases_extracted"] == 1 and len(b["units_kept_text_shards"]) == len(units) - 1
    now = files()
    assert sum(now[k] != before[k] for k in now) == 1
    assert corpus_digest(out) == fresh("fresh3")


def test_unedited_families_finished_rows_are_reused_as_blocks(tmp_path, sample_input, monkeypatch):
    """After one template's edit only its family is generated, balanced and worded again;
    the other families' finished rows come from their blocks (pipeline.engine.qa_blocks) —
    also when the edited family dead-letters some records (their rows leave the blocks'
    too) and when a block is unreadable (every family rendered again): each time the
    bytes of a fresh build."""
    from pipeline.engine import qa_blocks
    from pipeline.qa import candidates, questions

    recipe = _recipe_dir(tmp_path)
    out = tmp_path / "out"
    build(str(recipe / "my.yaml"), str(out), input_dir=str(sample_input), **QUIET)
    rows_dir = out / layout.ROWS_DIR
    blocks = {p.name: p.stat().st_mtime_ns for p in rows_dir.glob(f"*{qa_blocks.SUFFIX}")}
    assert blocks and all(".existence_closed." in n for n in blocks if "existence_closed" in n)
    generated: set[str] = set()
    for module in (questions, candidates):
        real = module.generate_questions
        monkeypatch.setattr(module, "generate_questions", lambda record, families, *a, real=real, **k:
                            generated.update(families) or real(record, families, *a, **k))
    template = recipe / "tpl" / "existence_closed.yaml"
    # wordings of this test alone: the in-process memo of questions_for never holds their rows
    _edit(template, "Is the {{ structure }}", "Can you spot the {{ structure }}")
    regenerate(str(out), **QUIET)
    assert generated == {"existence_closed"}
    now = {p.name: p.stat().st_mtime_ns for p in rows_dir.glob(f"*{qa_blocks.SUFFIX}")}
    assert len(now) == len(blocks)
    assert {n for n, t in now.items() if blocks.get(n) != t} == {n for n in now if ".existence_closed." in n}
    # a wording that fails on some records (long structure names): their rows go, all families'
    _edit(template, "Can you spot the {{ structure }}",
          "{% if structure|length > 9 %}{{ structure|round }}{% endif %}Is the {{ structure }}")
    generated.clear()
    regenerate(str(out), **QUIET)
    assert generated == {"existence_closed"}
    dead = [json.loads(line) for line in (out / "dead_letters" / "dead_letters.jsonl").read_text().splitlines()]
    assert any(d["reason"] == "template.render_error" for d in dead)
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input))
    # an unreadable block: every family rendered again, to the same bytes
    _edit(template, "{% if structure|length > 9 %}{{ structure|round }}{% endif %}Is the {{ structure }}",
          "Is there any {{ structure }}")
    cut = next(iter(sorted(rows_dir.glob(f"*.grounding_open.*{qa_blocks.SUFFIX}"))))
    cut.write_bytes(b"ARROW1 cut")
    regenerate(str(out), **QUIET)
    assert cut.read_bytes() != b"ARROW1 cut"  # written again
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, recipe, sample_input, "fresh2"))


def test_the_rules_name_the_corpus_by_its_units_records_in_any_order():
    from pipeline.qa.balance import Rules, rules_from

    units = [("unit", "train-0", "a"), ("unit", "test-0", "b")]
    answers = [("answers", "train", "fam|{}", "yes", 0.25), ("answers", "train", "fam|{}", "no", 0.5)]
    one, two = rules_from(units + answers), rules_from(answers[::-1] + units[::-1])
    assert one.corpus == two.corpus and one.answers == two.answers == rules_from(answers).answers
    assert one.corpus != rules_from(units[:1] + answers).corpus
    assert not rules_from(units) and not Rules(corpus="x")  # no balancing rules: rows pass as generated



@pytest.mark.parametrize("kind_name", ["slices", "tree"])
def test_units_run_in_process_get_the_plans_their_plan_files_would_give(tmp_path, sample_input,
                                                                          monkeypatch, kind_name):
    """A regenerate runs its units in the launcher's process, which hands each unit its
    plan in memory instead of writing plan files and reading them back: the plans are the
    values the files give back (every case, fingerprint, stored location and planned
    question choice), made afresh by each run (after a template edit, then a pool edit); the
    corpus is a fresh build's."""
    from pipeline.engine.units import read_plan
    from pipeline.kinds.registry import get_kind
    from pipeline.launch import build as B
    from pipeline.launch.plan import write_plans

    if kind_name == "tree":
        inp, d = editable_tree_recipe(tmp_path, 120, seed=5)
        template, edit = d / "tpl" / "abnormality_closed.yaml", ("Does this image appear normal?",
                                                                "Does this image look normal?")
        pool_edit = ("normal_display: no pathology seen", "normal_display: nothing abnormal seen")
    else:
        inp, d = sample_input, _recipe_dir(tmp_path)
        template, edit = d / "tpl" / "existence_closed.yaml", ("Is the {{ structure }}",
                                                              "Can you see the {{ structure }}")
        pool_edit = ("display: spleen", "display: splenic organ")
    out = tmp_path / "out"
    build(str(d / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    handed = []
    real = B.run_in_process
    monkeypatch.setattr(B, "run_in_process", lambda refs, ctx, kind, **kw: handed.append(
        (list(refs), kw["plans"])) or real(refs, ctx, kind, **kw))
    kind = get_kind(kind_name)
    for path, (old, new) in ((template, edit), (d / "pool.yaml", pool_edit)):
        _edit(path, old, new)
        regenerate(str(out), **QUIET)
        refs, plans = handed.pop()
        assert sorted(plans) == sorted(r.unit_id for r in refs)
        assert not list((out / layout.PLAN_DIR).glob("*.jsonl"))  # none written
        write_plans(str(out), refs, plans, kind)
        for ref in refs:
            assert read_plan(str(out), ref, kind) == list(plans[ref.unit_id])
        assert all(pc.stored for p in plans.values() for pc in p)
        assert kind_name != "tree" or all(pc.extra for p in plans.values() for pc in p)
        shutil.rmtree(out / layout.PLAN_DIR)
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, d, inp))


def test_units_written_behind_the_rendering_raise_their_failure_and_resume(tmp_path, monkeypatch):
    """A regenerate in this process writes each unit's shards on a thread while the next unit
    renders (in_process.Behind): a write that fails there fails the regenerate, and the rerun
    ends with a fresh build's bytes."""
    import threading

    inp, d = editable_tree_recipe(tmp_path, 120, seed=7)
    out = tmp_path / "out"
    build(str(d / "my.yaml"), str(out), input_dir=str(inp), **QUIET)
    _edit(d / "tpl" / "abnormality_closed.yaml", "Does this image appear normal?",
          "Does this image look normal?")
    monkeypatch.setattr(in_process.Behind, "MIN_BYTES", 0)  # (these units' tables are small)
    real, where = shards.write_table, []

    def failing(root, rel, table):
        where.append(threading.current_thread() is threading.main_thread())
        if rel.startswith("instruct/"):
            raise OSError(28, "No space left on device")
        return real(root, rel, table)
    monkeypatch.setattr(shards, "write_table", failing)
    with pytest.raises(OSError, match="No space left"):
        regenerate(str(out), **QUIET)
    assert where and not where[0]  # the unit's shard: written on the thread behind
    monkeypatch.setattr(shards, "write_table", real)
    regenerate(str(out), **QUIET)
    assert corpus_digest(out) == corpus_digest(_fresh(tmp_path, d, inp))


def test_behind_writes_one_unit_at_a_time():
    order = []
    behind = in_process.Behind()
    for n in range(3):
        behind.run(lambda n=n: (time.sleep(0.01 * (3 - n)), order.append(n)))
    behind.join()
    assert order == [0, 1, 2]
    behind.run(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        behind.join()
    behind.join()  # raised once
