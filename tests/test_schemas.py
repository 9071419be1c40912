"""The shipped JSON schemas are valid JSON Schema (checked here, not on every start:
:func:`pipeline.config.validation._validator` no longer meta-validates them)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pipeline.config.resources import resource_dir

SCHEMAS = sorted(resource_dir("schemas").glob("*.schema.json"))


def test_schemas_are_found():
    assert len(SCHEMAS) >= 10


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_shipped_schema_is_valid_json_schema(path):
    schema = json.loads(path.read_text("utf-8"))
    jsonschema.validators.validator_for(schema).check_schema(schema)
