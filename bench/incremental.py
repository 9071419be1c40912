"""Full build vs ``regenerate`` after a template edit, on the built-in sample.

A user's recipe folder is made as the tests make it (``tests/test_incremental.py``): the
``sample`` recipe with its own copy of the ``radvuqa`` templates and the pool.  Then, twice
— through the Python API (``pipeline.launch.build.build`` / ``regenerate``, in this process) and
through the CLI (``radvqa build`` / ``radvqa regenerate``, child processes: wall time
including interpreter start-up and imports):

1. full build of the sample's phantom cases into an empty folder (default runner options);
2. one template edited (a question's wording);
3. regenerate: pixel shards kept, questions re-rendered; the manifest must say that no
   case was extracted.

The ratio full / regenerate is the measure (target: at least 10x).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.harness import LAST_CLI_CPU, run_cli

TEMPLATE = "existence_closed.yaml"
EDITS = (("Is the {{ structure }}", "Can you see the {{ structure }}"),
         ("Can you see the {{ structure }}", "Is there a {{ structure }}"))


def recipe_copy(folder: Path) -> Path:
    """The sample recipe with its own templates and pool; returns the recipe file."""
    from pipeline.config.resources import resource_dir

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(resource_dir("templates") / "radvuqa", folder / "tpl")
    shutil.copy(resource_dir("distractor_pools") / "totalsegmentator.yaml", folder / "pool.yaml")
    text = (resource_dir("recipes") / "sample.yaml").read_text()
    for old, new in (("templates: [radvuqa]", "templates: [tpl]"),
                     ("pools: [totalsegmentator", "pools: [pool.yaml")):
        if old not in text:
            raise AssertionError(f"sample recipe changed: {old!r} not found")
        text = text.replace(old, new)
    (folder / "my.yaml").write_text(text)
    return folder / "my.yaml"


def edit_template(recipe: Path, old: str, new: str) -> None:
    path = recipe.parent / "tpl" / TEMPLATE
    text = path.read_text()
    if old not in text:
        raise AssertionError(f"{path}: {old!r} not found (template changed?)")
    path.write_text(text.replace(old, new))


def _check_regenerated(output: Path) -> dict:
    build = json.loads((output / "manifest.json").read_text())["build"]
    if build["cases_extracted"] or build["cases_copied_from_stored_shards"]:
        raise AssertionError(f"regenerate extracted or copied cases: {build}")
    return build


def measure(input_dir: Path, work: Path, log) -> dict:
    """Seconds of a full build and of a regenerate, through the API and the CLI."""
    from pipeline.launch.build import build, regenerate

    recipe = recipe_copy(work / "recipe")
    quiet = lambda msg: None  # noqa: E731
    out: dict = {"cases": None}

    log("  regenerate: API full build")
    api_out = work / "api"
    shutil.rmtree(api_out, ignore_errors=True)
    t0 = time.perf_counter()
    result = build(str(recipe), str(api_out), input_dir=str(input_dir), log=quiet)
    full_s = time.perf_counter() - t0
    out["cases"] = result.manifest["counts"]["extract"]["accepted"]
    edit_template(recipe, *EDITS[0])
    log("  regenerate: API regenerate")
    t0 = time.perf_counter()
    regenerate(str(api_out), log=quiet)
    regen_s = time.perf_counter() - t0
    _check_regenerated(api_out)
    out["api"] = {"full_build_s": round(full_s, 3), "regenerate_s": round(regen_s, 3)}

    log("  regenerate: CLI full build")
    cli_out = work / "cli"
    shutil.rmtree(cli_out, ignore_errors=True)
    cli_log = work / "cli.log"
    full_s, _, _ = run_cli(["build", "--recipe", str(recipe), "--input", str(input_dir),
                            "--output", str(cli_out)], cli_log)
    full_cpu = LAST_CLI_CPU["seconds"]
    edit_template(recipe, *EDITS[1])
    log("  regenerate: CLI regenerate")
    regen_s, _, _ = run_cli(["regenerate", "--output", str(cli_out)], cli_log)
    regen_cpu = LAST_CLI_CPU["seconds"]
    _check_regenerated(cli_out)
    out["cli"] = {"full_build_s": round(full_s, 3), "regenerate_s": round(regen_s, 3),
                  "full_build_cpu_s": round(full_cpu, 3), "regenerate_cpu_s": round(regen_cpu, 3)}
    return out
