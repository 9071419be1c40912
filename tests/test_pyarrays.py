"""pipeline.schema.pyarrays: the same arrays and Parquet bytes as pyarrow's own conversion,
without importing pandas."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io import shards
from pipeline.schema import pyarrays
from pipeline.schema.arrow import all_schemas
from tests.probe import python_probe

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "strings with null and non-ASCII": (["a", None, "é", ""], pa.string()),
    "binary": ([b"\x89PNG", None, b""], pa.binary()),
    "int32 with null": ([1, None, -3], pa.int32()),
    "numpy integers": ([np.int64(5), 6], pa.int32()),
    "float64 from ints, nan kept": ([1.5, None, 2, float("nan")], pa.float64()),
    "bool": ([True, None, False], pa.bool_()),
    "empty int64": ([], pa.int64()),
    "empty bool": ([], pa.bool_()),
    "all null": ([None, None], pa.string()),
    "list of int32": ([[1, 2], None, [], [3]], pa.list_(pa.int32())),
    "list of strings": ([["a"], None, []], pa.list_(pa.string())),
    "list of floats from numpy and tuples": ([np.array([1.0, 2.0]), (3.0,)], pa.list_(pa.float64())),
    "struct, missing key is null": ([{"a": 1, "b": "x"}, None, {"a": None}],
                                    pa.struct([("a", pa.int64()), ("b", pa.string())])),
    "list of structs": ([[{"a": 1}], None, [], [None, {"a": 2}]],
                        pa.list_(pa.struct([("a", pa.int64())]))),
}


@pytest.mark.parametrize("values, type_", CASES.values(), ids=CASES.keys())
def test_array_equals_pyarrows_conversion(values, type_):
    got = pyarrays.array(values, type_)
    got.validate(full=True)
    assert got.type == type_
    expected = pa.array(values, type_)
    assert got.equals(expected) or repr(got.to_pylist()) == repr(expected.to_pylist())  # nan != nan
    assert shards.table_bytes(pa.table({"v": got})) == shards.table_bytes(pa.table({"v": expected}))


@pytest.mark.parametrize("values, type_", [
    (["1", 2], pa.int32()),  # a string for a number
    ([2**40], pa.int32()),  # out of range
    ([True], pa.int32()),  # a boolean for a number
    ([1], pa.bool_()),
    ([1, "x"], pa.string()),
])
def test_values_pyarrow_refuses_are_refused_as_pyarrow_does(values, type_):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)) as ours:
        pyarrays.array(values, type_)
    with pytest.raises(type(ours.value)):
        pa.array(values, type_)


def _value(type_: pa.DataType, rng: random.Random):
    if rng.random() < 0.15:
        return None
    if pa.types.is_struct(type_):
        return {f.name: _value(f.type, rng) for f in type_ if rng.random() < 0.9}
    if pa.types.is_list(type_):
        return [_value(type_.value_type, rng) for _ in range(rng.randrange(4))]
    if type_ == pa.string():
        return rng.choice(["", "liver", "Is the {{ x }} left?", "größe", "肝臓"])
    if type_ == pa.binary():
        return rng.randbytes(rng.randrange(6))
    if type_ == pa.bool_():
        return rng.random() < 0.5
    if type_ == pa.float64():
        return rng.choice([0.0, -1.25, 1e300, rng.random()])
    return rng.randrange(-2**31, 2**31) if type_ == pa.int32() else rng.randrange(-2**62, 2**62)


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_table_gives_the_parquet_bytes_of_from_pylist(name):
    schema = all_schemas()[name]
    rng = random.Random(name)
    rows = [{f.name: _value(f.type, rng) for f in schema} for _ in range(40)]
    rows[3].pop(schema.names[-1])  # a missing key is a null, as from_pylist has it
    ours, theirs = pyarrays.table(rows, schema), pa.Table.from_pylist(rows, schema=schema)
    assert ours.schema.equals(theirs.schema, check_metadata=True)
    assert shards.table_bytes(ours) == shards.table_bytes(theirs)
    empty = pyarrays.table([], schema)
    assert shards.table_bytes(empty) == shards.table_bytes(pa.Table.from_pylist([], schema=schema))


def test_to_numpy_reads_numbers_as_arrow_converts_them():
    ints = pa.chunked_array([pa.array([1, 2, 3], pa.int32()), pa.array([4], pa.int32())])
    sliced = pa.array([1.5, 2.5, 3.5]).slice(1)
    for values in (ints, sliced, pa.array([1, None], pa.int64()), pa.chunked_array([], pa.int64()),
                   pa.array(["a", "b"])):
        ours = pyarrays.to_numpy(values)
        theirs = values.to_numpy() if isinstance(values, pa.ChunkedArray) else values.to_numpy(
            zero_copy_only=False)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_from_numpy_equals_pyarrows_conversion():
    for a in (np.arange(5, dtype=np.int64), np.arange(6, dtype=np.uint32)[::2],
              np.array([0.5, -1.0], np.float32), np.zeros(0, np.int64)):
        ours = pyarrays.from_numpy(a)
        assert ours.equals(pa.array(a)) and ours.type == pa.array(a).type
    with pytest.raises(ValueError, match="1-D numeric"):
        pyarrays.from_numpy(np.array(["a"]))


def test_nothing_here_imports_pandas():
    probe = (
        "import sys, pyarrow as pa, pyarrow.compute as pc; "
        "from pipeline.schema import pyarrays; from pipeline.schema.arrow import QA_SCHEMA; "
        "t = pyarrays.table([{'qa_id': 'a', 'options': ['x'], 'answer_box': [1, 2]}], QA_SCHEMA); "
        "pc.equal(t['qa_id'], pyarrays.scalar('a', pa.string())); "
        "pyarrays.to_numpy(pyarrays.array([1.0, 2.0], pa.float64())); "
        "import numpy as np; t.take(pyarrays.from_numpy(np.zeros(1, np.int64))); "
        "print('pandas' in sys.modules)")
    assert python_probe(probe) == "False"
