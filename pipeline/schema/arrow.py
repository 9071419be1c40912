"""Arrow schemas of the output configs, mirroring ``schemas/*.schema.json``.

Each schema carries the Hugging Face ``features`` metadata (key
``huggingface``), so ``datasets`` decodes ``image`` columns to PIL images.
``tests/test_arrow.py`` keeps these schemas and the JSON Schemas in step.
A renamed or retyped field is a schema change: bump :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = "2"

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
WINDOW = pa.struct([("name", pa.string()), ("center", pa.float64()), ("width", pa.float64())])
BOX = pa.struct(
    [
        ("label", pa.string()),
        ("x_min", pa.int32()),
        ("y_min", pa.int32()),
        ("x_max", pa.int32()),
        ("y_max", pa.int32()),
        ("area_px", pa.int64()),
        ("area_mm2", pa.float64()),
        ("components", pa.int32()),
        ("centroid_x", pa.float64()),
        ("centroid_y", pa.float64()),
        ("centroid_lps", pa.list_(pa.float64())),
        ("laterality", pa.string()),
    ]
)

IMAGE_FIELDS = [
    ("image_id", pa.string()),
    ("image", IMAGE_STRUCT),
    ("image_boxed", IMAGE_STRUCT),
    ("image_boxed_easy", IMAGE_STRUCT),
    ("prompt_label", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("modality", pa.string()),
    ("body_part", pa.string()),
    ("plane", pa.string()),
    ("slice_index", pa.int32()),
    ("window", WINDOW),
    ("spacing_mm", pa.list_(pa.float64())),
    ("boxes", pa.list_(BOX)),
    ("case_labels", pa.list_(pa.string())),
    ("case_key", pa.string()),
    ("patient_key", pa.string()),
    ("split", pa.string()),
]

QA_FIELDS = [
    ("qa_id", pa.string()),
    ("image_id", pa.string()),
    ("case_key", pa.string()),
    ("split", pa.string()),
    ("task", pa.string()),
    ("family", pa.string()),
    ("question_type", pa.string()),
    ("question", pa.string()),
    ("options", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_text", pa.string()),
    ("answer_box", pa.list_(pa.int32())),
    ("question_box", pa.list_(pa.int32())),
    ("visual_prompt", pa.string()),
    ("template_id", pa.string()),
]

STRUCTURE_FIELDS = [
    ("case_key", pa.string()),
    ("patient_key", pa.string()),
    ("split", pa.string()),
    ("modality", pa.string()),
    ("label", pa.string()),
    ("shape", pa.list_(pa.int32())),
    ("spacing_mm", pa.list_(pa.float64())),
    ("box3d", pa.list_(pa.int32())),
    ("voxels", pa.int64()),
    ("volume_ml", pa.float64()),
    ("centroid_lps", pa.list_(pa.float64())),
    ("components", pa.int32()),
    ("laterality", pa.string()),
]

TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
METADATA = pa.struct(
    [
        ("content_type", pa.string()),
        ("correct_text", pa.string()),
        ("is_abnormal", pa.bool_()),
        ("location", pa.string()),
        ("modality", pa.string()),
        ("pathology", pa.string()),
        ("question_id", pa.string()),
    ]
)

ALIGNMENT_FIELDS = [
    ("image_id", pa.string()),
    ("image", IMAGE_STRUCT),
    ("conversations", pa.list_(TURN)),
    ("metadata", METADATA),
    ("modality", pa.string()),
    ("region", pa.string()),
    ("label", pa.string()),
    ("split", pa.string()),
]

INSTRUCT_FIELDS = [
    ("qa_id", pa.string()),
    ("image_id", pa.string()),
    ("conversations", pa.list_(TURN)),
    ("question", pa.string()),
    ("choices", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_text", pa.string()),
    ("question_type", pa.string()),
    ("task", pa.string()),
    ("template_id", pa.string()),
    ("metadata", METADATA),
    ("split", pa.string()),
]

BENCHMARK_FIELDS = [
    ("qa_id", pa.string()),
    ("image_id", pa.string()),
    ("image", IMAGE_STRUCT),
    ("question", pa.string()),
    ("choices", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("question_type", pa.string()),
    ("task", pa.string()),
    ("template_id", pa.string()),
    ("metadata", METADATA),
    ("split", pa.string()),
]

# -- volume-level corpora (kind ``volumes``) -------------------------------------------

BOX3D = pa.struct([("label", pa.string()), ("box", pa.list_(pa.int32()))])
STRUCTURE_FACTS = pa.struct([("label", pa.string()), ("volume_ml", pa.float64()),
                             ("mean_hu", pa.float64())])
LESION_FACTS = pa.struct([
    ("label", pa.string()), ("organ", pa.string()), ("voxels", pa.int64()),
    ("volume_ml", pa.float64()), ("long_mm", pa.float64()), ("short_mm", pa.float64()),
    ("axial_k", pa.int32()), ("max_diameter_mm", pa.float64()), ("mean_hu", pa.float64()),
    ("organ_mean_hu", pa.float64()), ("density", pa.string()),
])
VOLUME_FIELDS = [
    ("volume_id", pa.string()),
    ("case_key", pa.string()),
    ("patient_key", pa.string()),
    ("split", pa.string()),
    ("study_order", pa.int32()),
    ("modality", pa.string()),
    ("npy", pa.binary()),
    ("shape", pa.list_(pa.int32())),
    ("original_spacing_mm", pa.list_(pa.float64())),
    ("target_spacing_mm", pa.list_(pa.float64())),
    ("window", pa.string()),
    ("boxes3d", pa.list_(BOX3D)),
    ("structures", pa.list_(STRUCTURE_FACTS)),
    ("lesions", pa.list_(LESION_FACTS)),
    # findings present per the source's label table (CT-RATE); null when they come from masks
    ("labelled_findings", pa.list_(pa.string())),
]
QA3D_FIELDS = [
    ("qa_id", pa.string()),
    ("volume_id", pa.string()),
    ("case_key", pa.string()),
    ("split", pa.string()),
    ("task", pa.string()),
    ("subtask", pa.string()),
    ("family", pa.string()),
    ("question_type", pa.string()),
    ("question", pa.string()),
    ("options", pa.list_(pa.string())),
    ("answer", pa.string()),
    ("answer_text", pa.string()),
    ("answer_value", pa.float64()),
    ("answer_unit", pa.string()),
    ("answer_tolerance", pa.float64()),
    ("template_id", pa.string()),
]

# -- the ``ood`` config: perturbed copies of stored images (2D) or volumes (3D) --------

OOD_FIELDS = [
    ("ood_id", pa.string()),
    ("image_id", pa.string()),
    ("image", IMAGE_STRUCT),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("family", pa.string()),
    ("strength", pa.string()),
    ("parameters", pa.string()),
    ("split", pa.string()),
]
OOD3D_FIELDS = [
    ("ood_id", pa.string()),
    ("volume_id", pa.string()),
    ("npy", pa.binary()),
    ("shape", pa.list_(pa.int32())),
    ("family", pa.string()),
    ("strength", pa.string()),
    ("parameters", pa.string()),
    ("split", pa.string()),
]

#: Columns decoded as images by Hugging Face ``datasets`` (``image_boxed`` and
#: ``image_boxed_easy`` are null unless the recipe asks for visual prompts).
IMAGE_COLUMNS = {"image", "image_boxed", "image_boxed_easy"}


def hf_feature(name: str, dtype: pa.DataType) -> dict:
    """Hugging Face ``features`` JSON for one Arrow field."""
    if name in IMAGE_COLUMNS and dtype == IMAGE_STRUCT:
        return {"_type": "Image"}
    if pa.types.is_list(dtype):
        return {"feature": hf_feature("", dtype.value_type), "_type": "List"}
    if pa.types.is_struct(dtype):
        return {f.name: hf_feature(f.name, f.type) for f in dtype}
    names = {
        pa.string(): "string", pa.binary(): "binary", pa.int32(): "int32",
        pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool",
    }
    return {"dtype": names[dtype], "_type": "Value"}


def with_hf_metadata(fields) -> pa.Schema:
    features = {name: hf_feature(name, dtype) for name, dtype in fields}
    meta = {"huggingface": json.dumps({"info": {"features": features}}, sort_keys=False)}
    return pa.schema(fields, metadata=meta)


IMAGES_SCHEMA = with_hf_metadata(IMAGE_FIELDS)
QA_SCHEMA = with_hf_metadata(QA_FIELDS)
STRUCTURES_SCHEMA = with_hf_metadata(STRUCTURE_FIELDS)

ALIGNMENT_SCHEMA = with_hf_metadata(ALIGNMENT_FIELDS)
INSTRUCT_SCHEMA = with_hf_metadata(INSTRUCT_FIELDS)
BENCHMARK_SCHEMA = with_hf_metadata(BENCHMARK_FIELDS)

VOLUMES_SCHEMA = with_hf_metadata(VOLUME_FIELDS)
QA3D_SCHEMA = with_hf_metadata(QA3D_FIELDS)

OOD_SCHEMA = with_hf_metadata(OOD_FIELDS)
OOD3D_SCHEMA = with_hf_metadata(OOD3D_FIELDS)

#: What a ``tree`` worker extracts per image (the ``alignment`` shard's stored columns,
#: read back by regeneration and the benchmark); never written as a config of its own.
TREE_PAYLOAD_SCHEMA = pa.schema([("image_id", pa.string()), ("image", IMAGE_STRUCT),
                                 ("modality", pa.string()), ("region", pa.string()),
                                 ("label", pa.string()), ("split", pa.string())])

#: config name -> schema of its Parquet files, for the 2D corpora (the dataset card's
#: default lookup; a kind's own ``schemas`` map wins).
SCHEMAS = {
    "images": IMAGES_SCHEMA, "qa": QA_SCHEMA, "structures": STRUCTURES_SCHEMA,
    "alignment": ALIGNMENT_SCHEMA, "instruct": INSTRUCT_SCHEMA, "benchmark": BENCHMARK_SCHEMA,
}


def all_schemas() -> dict:
    """Every config schema, the volume-level and ``ood`` ones included (``qa3d``: the ``qa``
    config of volume-level corpora; ``ood3d``: their ``ood`` config)."""
    return SCHEMAS | {"volumes": VOLUMES_SCHEMA, "qa3d": QA3D_SCHEMA, "ood": OOD_SCHEMA,
                      "ood3d": OOD3D_SCHEMA}


def features_for_card(schema: pa.Schema) -> list[dict]:
    """``dataset_info.features`` entries (name + feature JSON) for the dataset card."""
    return [{"name": f.name, **_card_feature(f.name, f.type)} for f in schema]


def _card_feature(name: str, dtype: pa.DataType) -> dict:
    if name in IMAGE_COLUMNS and dtype == IMAGE_STRUCT:
        return {"dtype": "image"}
    if pa.types.is_list(dtype):
        inner = _card_feature("", dtype.value_type)
        return {"list": inner.get("dtype", inner)} if "dtype" in inner else {"list": inner["struct"]}
    if pa.types.is_struct(dtype):
        return {"struct": [{"name": f.name, **_card_feature(f.name, f.type)} for f in dtype]}
    return {"dtype": hf_feature(name, dtype)["dtype"]}
