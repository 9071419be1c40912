"""JSON Schema validation with errors that name the file and the JSON path."""

from __future__ import annotations

import functools
import json

import jsonschema

from pipeline.config.resources import resource_path
from pipeline.errors import ConfigError

#: jsonschema quotes the offending value in its messages; a whole list of variants
#: or a long text says nothing more than its first characters.
MAX_MESSAGE_CHARS = 300


@functools.cache
def _validator(schema_name: str):
    # The shipped schemas are checked against their meta-schema by tests/test_schemas.py,
    # not on every start: check_schema cost 0.03 s of a regenerate's CPU (measured).
    schema = json.loads(resource_path("schemas", f"{schema_name}.schema.json").read_text("utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def json_path(path) -> str:
    """``questions.templates[0]`` style path of a jsonschema error location."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _order(error) -> list[tuple]:
    # list positions in numeric order (variants[2] before variants[10]), keys by name
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]


def _shorten(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]} ... ({len(message):,} characters)"


def validate(instance, schema_name: str, source: str) -> None:
    """Raise :class:`ConfigError` ``"<source>: <path>: <message>"`` for the first error.

    Errors are ordered by path so the message does not depend on dict order; the
    message is cut at :data:`MAX_MESSAGE_CHARS`.
    """
    errors = sorted(_validator(schema_name).iter_errors(instance), key=_order)
    if errors:
        err = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {json_path(err.absolute_path)}: {_shorten(err.message)}{more}")
