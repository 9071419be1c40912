"""JSON Schema validation with errors that name the file and the JSON path."""

from __future__ import annotations

import functools
import json

from pipeline.errors import ConfigError
from pipeline.resources import resource_path


@functools.cache
def _validator(schema_name: str):
    import jsonschema

    schema = json.loads(resource_path("schemas", f"{schema_name}.schema.json").read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def json_path(path) -> str:
    """``questions.templates[0]`` style path of a jsonschema error location."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def validate(instance, schema_name: str, source: str) -> None:
    """Raise :class:`ConfigError` ``"<source>: <path>: <message>"`` for the first error.

    Errors are ordered by path so the message does not depend on dict order.
    """
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        err = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {json_path(err.absolute_path)}: {err.message}{more}")
