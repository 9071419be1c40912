"""Worker packaging (``--setup_file ./setup.py``) and outputs on a non-local filesystem.

(a) With ``--setup_file``, Beam's stager builds a source distribution of the
checkout on the launcher and every worker pip-installs it.  The sdist is built
here by the stager's own code, must carry the package and every template,
pool, schema and recipe, and once pip-installed into an empty folder must
build the sample from an unrelated working directory — resources resolved
inside the install, output byte-identical to the checkout's build.

(b) Every output file goes through ``apache_beam.io.filesystems.FileSystems``:
a build of each recipe kind (volumes, 2D tree, volume QA) to a URL of an
object-store-like filesystem registered here (flat keys, no directories, in
this process's memory — Beam 2.77 ships no ``mem://`` filesystem for Python)
stores every file its manifest lists (the sample: the same bytes as a local
build), each uploaded under a temporary name and renamed, and nothing reaches
the local disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.inputs.sample import write_sample
from pipeline.io.shards import TMP_MARK
from pipeline.launch.build import build
from tests.memfs import PREFIX, MemoryFileSystem
from tests.test_build import _all_files

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ("templates", "distractor_pools", "schemas", "recipes")
N_PATIENTS = 5  # every input form of the sample (DICOM, TotalSegmentator, reoriented, multilabel)
# What a clean checkout does not have; everything else is copied, as a user's checkout would be.
NOT_SOURCE = (".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__",
              ".pytest_cache", ".ruff_cache")


def _run(cmd, *, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def sample_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("packaging-sample")
    write_sample(root, n_patients=N_PATIENTS)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_input):
    """The sample built from the checkout, locally, in memory."""
    out = tmp_path_factory.mktemp("reference")
    result = build("sample", str(out), input_dir=str(sample_input),
                   beam_args=["--direct_running_mode=in_memory"], log=lambda m: None)
    assert result.exit_code == 0
    return out


# ---------------------------------------------------------------- (a) --setup_file


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """A clean copy of the checkout (building an sdist writes ``*.egg-info`` beside setup.py)."""
    dest = tmp_path_factory.mktemp("source") / "radvqa"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    return dest


# The two commands Beam 2.77's Stager._build_setup_package runs: ``python -m build
# --no-isolation --sdist`` when the ``build`` module is installed (the test extra
# installs it), else the legacy ``python setup.py sdist``.
LEGACY_SDIST = ["setup.py", "sdist", "--dist-dir"]


def _sdist(way: str, source_tree: Path, out: Path) -> Path:
    """Build in a fresh copy: setuptools reuses an existing ``*.egg-info/SOURCES.txt``."""
    src = out / "src"
    shutil.copytree(source_tree, src)
    if way == "stager":  # the stager's own code, whichever command it picks
        code = ("import sys\n"
                "from apache_beam.runners.portability.stager import Stager\n"
                "print(Stager._build_setup_package(sys.argv[1], sys.argv[2]))\n")
        proc = _run([sys.executable, "-c", code, str(src / "setup.py"), str(out)], cwd=src)
        archive = Path(proc.stdout.strip().splitlines()[-1])
    else:
        _run([sys.executable, *LEGACY_SDIST, str(out)], cwd=src)
        (archive,) = out.glob("*.tar.gz")
    assert archive.is_file() and archive.name == "radvqa-0.1.0.tar.gz", archive
    return archive


@pytest.fixture(scope="module")
def sdist(source_tree, tmp_path_factory) -> Path:
    """What ``--setup_file ./setup.py`` stages for the workers."""
    return _sdist("stager", source_tree, tmp_path_factory.mktemp("sdist"))


def _source_files(tree: Path, top: str) -> set[str]:
    return {
        p.relative_to(tree).as_posix()
        for p in (tree / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.parametrize("way", ["stager", "legacy setup.py sdist"])
def test_sdist_carries_the_package_and_every_resource(way, source_tree, request, tmp_path):
    archive = request.getfixturevalue("sdist") if way == "stager" else _sdist(way, source_tree, tmp_path)
    with tarfile.open(archive) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    expected = {"setup.py", "README.md"}  # setup.py reads README.md when the worker installs it
    for top in ("pipeline", *RESOURCES):
        files = _source_files(source_tree, top)
        assert files, top
        expected |= files
    missing = sorted(expected - members)
    assert not missing, f"{archive.name} lacks {missing}"


@pytest.fixture(scope="module")
def installed(sdist, tmp_path_factory) -> Path:
    """The sdist pip-installed into an empty folder, offline, like a worker installs it."""
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", "--no-cache-dir", "--target", str(target), str(sdist)],
         cwd=tmp_path_factory.mktemp("pip-cwd"))
    return target


def _installed_env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target)  # the installed copy, never the checkout
    return env


def test_installed_package_resolves_resources_inside_the_install(installed, source_tree, tmp_path):
    code = (
        "import json, pipeline\n"
        "from pipeline.config import resources\n"
        "from pipeline.config.recipes import load_recipe\n"
        "print(json.dumps({'module': pipeline.__file__,\n"
        "                  'dirs': {k: str(resources.resource_dir(k)) for k in resources.KINDS},\n"
        "                  'recipe': str(load_recipe('sample').path)}))\n"
    )
    found = json.loads(_run([sys.executable, "-c", code], cwd=tmp_path,
                            env=_installed_env(installed)).stdout.strip().splitlines()[-1])
    resources = installed / "pipeline" / "_resources"
    assert Path(found["module"]).resolve() == (installed / "pipeline" / "__init__.py").resolve()
    for kind in RESOURCES:
        assert Path(found["dirs"][kind]) == resources / kind, kind
        here = {p.relative_to(resources).as_posix() for p in (resources / kind).rglob("*") if p.is_file()}
        assert here == _source_files(source_tree, kind), kind
    assert Path(found["recipe"]) == resources / "recipes" / "sample.yaml"


def test_installed_package_builds_the_sample_from_an_unrelated_folder(
    installed, sample_input, reference, tmp_path
):
    env = _installed_env(installed)
    lint = _run([sys.executable, "-m", "pipeline.cli", "lint", "--recipe", "sample"],
                cwd=tmp_path, env=env)
    assert "0 problem(s)" in lint.stdout
    out = tmp_path / "corpus"
    _run([sys.executable, "-m", "pipeline.cli", "build", "--recipe", "sample",
          "--input", str(sample_input), "--output", str(out)], cwd=tmp_path, env=env)
    assert _all_files(out) == _all_files(reference)


# -------------------------------------------------------- (b) non-local filesystem

def _tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")}


def _small_input(recipe: str, root: Path) -> None:
    if recipe == "radimagenet-vqa":
        from pipeline.config.resources import resource_dir
        from pipeline.inputs.sample_tree import write_tree
        from pipeline.qa.label_pools import load_label_pools

        write_tree(root, 300, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
    elif recipe == "3d-rad":
        from pipeline.inputs.sample import write_longitudinal_sample

        write_longitudinal_sample(root, n_patients=2)
    else:
        raise ValueError(recipe)


@pytest.mark.parametrize("recipe", ["sample", "radimagenet-vqa", "3d-rad"])
def test_build_to_a_non_local_filesystem_writes_only_through_filesystems(
    recipe, request, tmp_path, monkeypatch
):
    if recipe == "sample":
        inputs = request.getfixturevalue("sample_input")
    else:
        inputs = tmp_path / "input"
        _small_input(recipe, inputs)
    workdir = tmp_path / "cwd"  # a URL written with open()/os.* would land here, as a relative path
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    inputs_before = _tree(inputs)
    MemoryFileSystem.reset()
    output = f"{PREFIX}bucket/{recipe}"
    try:
        result = build(recipe, output, input_dir=str(inputs),
                       beam_args=["--direct_running_mode=in_memory"], log=lambda m: None)
        objects = dict(MemoryFileSystem.objects)
        created = list(MemoryFileSystem.created)
    finally:
        MemoryFileSystem.reset()
    assert result.exit_code == 0

    assert not list(workdir.iterdir()), f"written outside FileSystems: {sorted(_tree(workdir))}"
    assert _tree(inputs) == inputs_before, "the build wrote into its input folder"

    assert all(path.startswith(output + "/") for path in objects), sorted(objects)
    stored = {path[len(output) + 1:]: data for path, (data, _) in objects.items()}
    corpus = {rel: hashlib.sha256(data).hexdigest() for rel, data in stored.items()
              if not rel.startswith(".radvqa/")}
    manifest = json.loads(stored["manifest.json"])
    assert {rel: f["sha256"] for rel, f in manifest["files"].items()} == {
        rel: digest for rel, digest in corpus.items() if rel != "manifest.json"}
    if recipe == "sample":  # the same bytes as a local build
        assert corpus == _all_files(request.getfixturevalue("reference"))

    # atomic writes: every object was uploaded under a temporary name, then renamed
    assert created and all(TMP_MARK in path for path in created), [
        p for p in created if TMP_MARK not in p]
    assert not [rel for rel in stored if TMP_MARK in rel]
