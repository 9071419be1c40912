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

Before the CLI runs, ``pipeline``'s bytecode is compiled (:func:`compile_pipeline`), as a
``pip install`` does: an editable checkout under ``PYTHONDONTWRITEBYTECODE=1`` (this VM's
environment) would otherwise compile its ~130 modules from source in every process —
about 0.35 s of CPU per ``radvqa`` start (measured: ``import pipeline.launch.build`` 0.91
vs 0.55 s) and again in every Beam worker.

At a realistic size (:func:`measure_cli`, CLI only): the ``radvuqa`` recipe on its built-in
sample's 60 patients (pixel shards apart from the questions: a template edit keeps them),
and the ``radimagenet-vqa`` recipe on a cached 10,000-image tree of 224 px PNGs (images live
in the ``alignment`` and ``benchmark`` shards beside their text: a template edit rewrites
them).  Each with its own copy of its templates and pool, one template's wording edited.
"""

from __future__ import annotations

import compileall
import json
import shutil
import time
from pathlib import Path

from bench.harness import LAST_CLI_CPU, ROOT, run_cli

TEMPLATE = "existence_closed.yaml"
EDITS = (("Is the {{ structure }}", "Can you see the {{ structure }}"),
         ("Can you see the {{ structure }}", "Is there a {{ structure }}"))
#: recipe -> (its templates and pool, the template edited, the edit)
REALISTIC = {
    "radvuqa": ("radvuqa", "totalsegmentator", TEMPLATE, EDITS[0]),
    "radimagenet-vqa": ("radimagenet", "radimagenet", "abnormality_closed.yaml",
                        ("Does this image appear normal?", "Does this image look normal?")),
}


def recipe_copy(folder: Path, recipe: str = "sample", templates: str = "radvuqa",
                pool: str = "totalsegmentator") -> Path:
    """A built-in recipe with its own templates and pool; returns the recipe file."""
    from pipeline.config.resources import resource_dir

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(resource_dir("templates") / templates, folder / "tpl")
    shutil.copy(resource_dir("distractor_pools") / f"{pool}.yaml", folder / "pool.yaml")
    text = (resource_dir("recipes") / f"{recipe}.yaml").read_text()
    for old, new in ((f"templates: [{templates}]", "templates: [tpl]"),
                     (f"pools: [{pool}", "pools: [pool.yaml")):
        if old not in text:
            raise AssertionError(f"{recipe} recipe changed: {old!r} not found")
        text = text.replace(old, new)
    (folder / "my.yaml").write_text(text)
    return folder / "my.yaml"


def edit_template(recipe: Path, old: str, new: str, template: str = TEMPLATE) -> None:
    path = recipe.parent / "tpl" / template
    text = path.read_text()
    if old not in text:
        raise AssertionError(f"{path}: {old!r} not found (template changed?)")
    path.write_text(text.replace(old, new))


def _check_regenerated(output: Path) -> dict:
    build = json.loads((output / "manifest.json").read_text())["build"]
    if build["cases_extracted"] or build["cases_copied_from_stored_shards"]:
        raise AssertionError(f"regenerate extracted or copied cases: {build}")
    return build


def compile_pipeline() -> None:
    """Write ``pipeline``'s ``__pycache__`` (as an installed package has it); see the module
    docstring."""
    compileall.compile_dir(str(ROOT / "pipeline"), quiet=1)


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

    compile_pipeline()
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
                  "full_build_cpu_s": round(full_cpu, 3), "regenerate_cpu_s": round(regen_cpu, 3),
                  "bytecode": "compiled before timing"}
    return out


def measure_cli(recipe_name: str, input_dir: Path, work: Path, log) -> dict:
    """Seconds (wall and CPU) of a full ``radvqa build`` of ``recipe_name`` (its own copy of
    its templates and pool) and of ``radvqa regenerate`` after one template's wording edit
    (:data:`REALISTIC`); the regenerate must extract and copy nothing."""
    templates, pool, template, edit = REALISTIC[recipe_name]
    recipe = recipe_copy(work / "recipe", recipe_name, templates, pool)
    out, cli_log = work / "out", work / "cli.log"
    shutil.rmtree(out, ignore_errors=True)
    compile_pipeline()
    log(f"  regenerate: {recipe_name} CLI full build")
    full_s, full_rss, _ = run_cli(["build", "--recipe", str(recipe), "--input", str(input_dir),
                                   "--output", str(out)], cli_log)
    full_cpu = LAST_CLI_CPU["seconds"]
    manifest = json.loads((out / "manifest.json").read_text())
    edit_template(recipe, *edit, template=template)
    log(f"  regenerate: {recipe_name} CLI regenerate")
    regen_s, regen_rss, _ = run_cli(["regenerate", "--output", str(out)], cli_log)
    regen_cpu = LAST_CLI_CPU["seconds"]
    build = json.loads((out / "manifest.json").read_text())["build"]
    if build["cases_extracted"]:
        raise AssertionError(f"regenerate extracted cases: {build}")
    return {"recipe": recipe_name, "cases": manifest["counts"]["read"]["accepted"],
            "qa_rows": sum(s["qa"] for s in manifest["splits"].values()),
            "template": template, "full_build_s": round(full_s, 3), "regenerate_s": round(regen_s, 3),
            "full_build_cpu_s": round(full_cpu, 3), "regenerate_cpu_s": round(regen_cpu, 3),
            "full_build_rss_gib": round(full_rss / 2**30, 2), "regenerate_rss_gib": round(regen_rss / 2**30, 2),
            "regenerate_build": build}
