"""Recipes: load, validate, resolve.

A recipe is YAML validated by ``schemas/recipe.schema.json``.  ``--recipe``
takes a built-in name (``recipes/<name>.yaml`` shipped with the package) or a
path.  Template and pool entries are built-in names (``templates/<name>/``,
``distractor_pools/<name>.yaml``) or paths relative to the recipe's own
folder; a recipe can never point outside that folder or the package's
resources (no absolute paths, no ``..``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import ConfigError
from pipeline.resources import resource_dir
from pipeline.validation import validate

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


def load_yaml(path: Path) -> object:
    """``yaml.safe_load`` with errors naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', err)}") from err


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
    fractions = data["splits"]["fractions"]
    if sum(fractions.values()) <= 0:
        raise ConfigError(f"{candidate}: splits.fractions: found {fractions}, expected a positive sum")
    return Recipe(data, str(candidate.resolve()))


def resolve_entry(recipe: Recipe, kind: str, entry: str, field: str) -> Path:
    """A built-in resource name, or a path inside the recipe's folder."""
    if _NAME.match(entry):
        builtin = resource_dir(kind) / (entry if kind == "templates" else f"{entry}.yaml")
        if builtin.exists():
            return builtin
    base = Path(recipe.path).parent.resolve()
    rel = Path(entry)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(
            f"{recipe.path}: {field}: {entry!r} must be a built-in name or a path inside "
            f"{base} (no absolute paths, no '..')"
        )
    target = (base / rel).resolve()
    if base not in target.parents and target != base:
        raise ConfigError(f"{recipe.path}: {field}: {entry!r} leaves the recipe's folder")
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
