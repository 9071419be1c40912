"""Recipes: load, validate, resolve.

A recipe is YAML validated by ``schemas/recipe.schema.json``.  ``--recipe``
takes a built-in name (``recipes/<name>.yaml`` shipped with the package) or a
path.  Template and pool entries are built-in names (``templates/<name>/``,
``distractor_pools/<name>.yaml``) or paths relative to the recipe's own
folder; a recipe can never point outside that folder or the package's
resources: no absolute paths, no ``..``, and symbolic links are resolved
before the containment test (also for each file of a template folder, see
:func:`pipeline.qa.templates.family_files`).  No other recipe field names a
file: input and output folders come from the command line only.

Every configuration file (recipe, template family, pool) is read by
:func:`load_yaml`: YAML's safe loader (plain mappings, lists, strings, numbers,
booleans — never Python objects), with aliases and duplicate keys refused and
a size limit, errors naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.resources import resource_dir
from pipeline.config.validation import validate
from pipeline.config.yaml_files import load_yaml
from pipeline.errors import ConfigError
from pipeline.inputs.layouts import layout_names

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
@dataclass(frozen=True)
class Recipe:
    """A validated recipe: its data, and the file it came from."""

    data: dict
    path: str

    @property
    def name(self) -> str:
        return self.data["name"]

    def section(self, name: str) -> dict:
        return self.data.get(name) or {}


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in resource_dir("recipes").glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """Load and validate a recipe by built-in name or path."""
    candidate = Path(name_or_path)
    if _NAME.match(name_or_path) and not candidate.exists():
        candidate = resource_dir("recipes") / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise ConfigError(
                f"--recipe: {name_or_path!r} is neither a file nor a built-in recipe "
                f"({', '.join(builtin_recipes())})"
            )
    if not candidate.is_file():
        raise ConfigError(f"--recipe: {name_or_path}: no such file")
    data = load_yaml(candidate)
    if not isinstance(data, dict):
        raise ConfigError(f"{candidate}: (root): expected a mapping, found {type(data).__name__}")
    validate(data, "recipe", str(candidate))
    check_layout(data, str(candidate))
    fractions = data["splits"]["fractions"]
    if sum(fractions.values()) <= 0:
        raise ConfigError(f"{candidate}: splits.fractions: found {fractions}, expected a positive sum")
    return Recipe(data, str(candidate.resolve()))


def check_layout(data: dict, source: str) -> None:
    """Reject a ``source.layout`` that is neither ``auto`` nor a registered layout.

    The schema only asks for a string: the names come from the layout registry
    (:func:`pipeline.inputs.layouts.layout_names`), so a new layout needs no schema edit.
    Raises :class:`ConfigError` ``"<source>: source.layout: found 'x', expected one of auto, …"``.
    """
    layout = (data.get("source") or {}).get("layout", "auto")
    known = ("auto", *layout_names())
    if layout not in known:
        raise ConfigError(f"{source}: source.layout: found {layout!r}, expected one of {', '.join(known)}")


def resolve_entry(recipe: Recipe, kind: str, entry: str, field: str) -> Path:
    """A built-in resource name, or a path inside the recipe's folder.

    The path is resolved (symbolic links followed) before it is tested, so a link
    inside the folder that points elsewhere is refused like ``../elsewhere``.
    """
    if _NAME.match(entry):
        builtin = resource_dir(kind) / (entry if kind == "templates" else f"{entry}.yaml")
        if builtin.exists():
            return builtin
    base = Path(recipe.path).parent.resolve()
    rel = Path(entry)
    if not entry.strip() or "\0" in entry or rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise ConfigError(
            f"{recipe.path}: {field}: {entry!r} must be a built-in name or a path inside "
            f"{base} (no absolute paths, no '..')"
        )
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ConfigError(f"{recipe.path}: {field}: {entry!r} cannot be resolved: {err}") from err
    if base not in target.parents and target != base:
        raise ConfigError(
            f"{recipe.path}: {field}: {entry!r} resolves to {target}, outside the recipe's folder {base}"
        )
    if not target.exists():
        raise ConfigError(f"{recipe.path}: {field}: {entry!r} not found (built-in or {target})")
    return target


def template_paths(recipe: Recipe) -> list[Path]:
    return [
        resolve_entry(recipe, "templates", e, f"questions.templates[{i}]")
        for i, e in enumerate(recipe.section("questions")["templates"])
    ]


def pool_paths(recipe: Recipe) -> list[Path]:
    return [
        resolve_entry(recipe, "distractor_pools", e, f"questions.pools[{i}]")
        for i, e in enumerate(recipe.section("questions")["pools"])
    ]
