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

import collections.abc
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.config.resources import resource_dir
from pipeline.config.validation import validate
from pipeline.errors import ConfigError
from pipeline.inputs.layouts import layout_names

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: Largest configuration file read (bytes); the built-in ones are under 10 kB.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses aliases and duplicate keys.

    Aliases let a few lines expand into exponentially large (or cyclic) data once
    validated or hashed; a duplicate key silently drops its first value.  Configs
    need neither.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None,
                f"found alias *{event.anchor}: YAML aliases are not allowed in configs "
                "(they can expand exponentially); write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, collections.abc.Hashable):
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"duplicate key {key!r} (first on line {seen[key].line + 1})",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_undefined(self, node):
        raise yaml.constructor.ConstructorError(
            None, None,
            f"tag {node.tag!r} is not allowed: configs are plain data read with YAML's safe "
            "loader (mappings, lists, strings, numbers, booleans), never Python objects",
            node.start_mark,
        )


_ConfigLoader.add_constructor(None, _ConfigLoader.construct_undefined)


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
    """Read one configuration file safely (module docstring).

    Raises :class:`ConfigError` ``"<file>: line L, column C: invalid YAML: <problem>"``
    for YAML errors (unknown tags such as ``!!python/object/apply``, aliases,
    duplicate keys), and names the file for anything unreadable: a missing or
    non-regular file (a FIFO or device would block or never end), more than
    :data:`MAX_CONFIG_BYTES`, text that is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        what = "no such file" if not path.exists() else "not a regular file"
        raise ConfigError(f"{path}: cannot read: {what}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; not a radvqa config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: byte {err.start}: not UTF-8 text") from err
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a yaml.SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from err


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
