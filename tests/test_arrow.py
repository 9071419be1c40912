"""The Arrow schemas and the JSON Schemas in schemas/ describe the same rows."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.schema.arrow import SCHEMAS, all_schemas, hf_feature

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
JSON_TYPES = {
    "string": {"string"}, "int32": {"integer"}, "int64": {"integer"}, "double": {"number"},
    "bool": {"boolean"}, "binary": {"any"},
}


def _json_kind(spec: dict) -> set[str]:
    if "enum" in spec:
        return {"string"}
    if "oneOf" in spec:
        return set().union(*(_json_kind(s) for s in spec["oneOf"])) - {"null"}
    return {spec.get("type", "any")}


def _compare(arrow_type: pa.DataType, spec: dict, where: str):
    if pa.types.is_struct(arrow_type):
        if "bytes" in [f.name for f in arrow_type]:  # the image struct
            assert set(spec["properties"]) == {"bytes", "path"}, where
            return
        assert [f.name for f in arrow_type] == list(spec["properties"]), where
        for f in arrow_type:
            _compare(f.type, spec["properties"][f.name], f"{where}.{f.name}")
    elif pa.types.is_list(arrow_type):
        kinds = _json_kind(spec)
        assert kinds == {"array"}, where
        items = spec["items"] if "items" in spec else next(s for s in spec["oneOf"] if s.get("type") == "array")["items"]
        _compare(arrow_type.value_type, items, f"{where}[]")
    else:
        assert _json_kind(spec) <= JSON_TYPES[str(arrow_type)], f"{where}: {arrow_type} vs {spec}"


@pytest.mark.parametrize("config", sorted(all_schemas()))
def test_arrow_schema_mirrors_json_schema(config):
    spec = json.loads((SCHEMA_DIR / f"{config}.schema.json").read_text())
    schema = all_schemas()[config]
    assert schema.names == list(spec["properties"])
    assert set(spec["required"]) == set(schema.names)
    for field in schema:
        _compare(field.type, spec["properties"][field.name], field.name)


def test_hf_features_metadata_marks_images_and_lists():
    meta = json.loads(SCHEMAS["images"].metadata[b"huggingface"])
    features = meta["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["boxes"]["_type"] == "List"
    assert features["window"]["center"] == {"dtype": "float64", "_type": "Value"}
    assert hf_feature("x", pa.list_(pa.string())) == {
        "feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}
