"""Configuration files read safely: the one YAML loader of the package.

Every configuration file (recipe, template family, pool, class list) is read by
:func:`load_yaml`: YAML's safe loader (plain mappings, lists, strings, numbers,
booleans — never Python objects), with aliases and duplicate keys refused and a size
limit, errors naming the file and line.  ``tests/test_template_safety.py`` checks that
no other module parses YAML.
"""

from __future__ import annotations

import collections.abc
from pathlib import Path

import yaml

from pipeline.errors import ConfigError

#: Largest configuration file read (bytes); the built-in ones are under 10 kB.

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


def load_yaml(path: Path) -> object:
    """Read one configuration file safely (module docstring).

    Raises :class:`ConfigError` ``"<file>: line L, column C: invalid YAML: <problem>"``
    for YAML errors (unknown tags such as ``!!python/object/apply``, aliases,
    duplicate keys), and names the file for anything unreadable: a missing or
    non-regular file (a FIFO or device would block or never end), more than
    :data:`MAX_CONFIG_BYTES`, text that is not UTF-8.
    """
    path = Path(path)
    return parse_config(read_config(path), path)


def read_config(path: Path) -> bytes:
    """The bytes of one configuration file; the file errors of :func:`load_yaml`."""
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
    return raw


def parse_config(raw: bytes, path: Path) -> object:
    """The data of :func:`read_config`'s bytes; the text and YAML errors of :func:`load_yaml`."""
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
