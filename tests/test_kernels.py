"""pipeline.schema.kernels: the same results as pyarrow.compute and pyarrow's own methods,
without importing pyarrow.compute."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.schema import kernels
from tests.probe import python_probe

ROOT = Path(__file__).resolve().parent.parent

S = pa.string()
IDS = pa.chunked_array([pa.array(["b", None, "é", "a"], S), pa.array(["a", "c", ""], S)])
BOXES = pa.array([[{"label": "x", "area": 3}], None, [], [None, {"label": None, "area": 1}]],
                 pa.list_(pa.struct([("label", S), ("area", pa.int64())])))
TABLE = pa.table({"id": IDS, "n": pa.chunked_array([pa.array([3, 1, 2, 5]), pa.array([4, None, 0])])})


def _same(a, b) -> None:
    assert type(a) is type(b)
    assert a.equals(b)


def test_element_wise_kernels_match_pyarrow_compute():
    value_set = pa.array(["a", "é", None], S)
    _same(kernels.equal(IDS, pa.scalar("a", S)), pc.equal(IDS, pa.scalar("a", S)))
    _same(kernels.is_in(IDS, value_set), pc.is_in(IDS, value_set=value_set))
    _same(kernels.invert(kernels.is_in(IDS, value_set)), pc.invert(pc.is_in(IDS, value_set=value_set)))
    _same(kernels.is_null(IDS), pc.is_null(IDS))
    _same(kernels.is_valid(IDS), pc.is_valid(IDS))
    _same(kernels.cast(kernels.is_null(IDS), pa.uint8()), pc.is_null(IDS).cast(pa.uint8()))
    big = pa.array([["a"], None], pa.large_list(S))
    _same(kernels.cast(big, pa.list_(S)), big.cast(pa.list_(S)))
    _same(kernels.dictionary_encode(IDS), pc.dictionary_encode(IDS))
    encoded = IDS.combine_chunks()
    _same(kernels.dictionary_encode(encoded, null_encoding="encode"),
          pc.dictionary_encode(encoded, null_encoding="encode"))
    _same(kernels.value_counts(encoded), pc.value_counts(encoded))
    _same(kernels.list_flatten(BOXES), pc.list_flatten(BOXES))
    _same(kernels.struct_field(kernels.list_flatten(BOXES), "label"),
          pc.struct_field(pc.list_flatten(BOXES), "label"))
    lengths = kernels.list_value_length(BOXES)
    _same(lengths, pc.list_value_length(BOXES))
    _same(kernels.fill_null(lengths, pa.scalar(0, lengths.type)), pc.fill_null(lengths, pa.scalar(0, lengths.type)))
    for mask in (pa.array([], pa.bool_()), pa.array([None, False]), pa.array([False, None, True])):
        assert kernels.any_true(mask) is bool(pc.any(mask).as_py())


@pytest.mark.parametrize("keys", ["id", [("id", "ascending"), ("n", "descending")], [("n", "ascending")]])
def test_sort_by_matches_table_sort_by(keys):
    _same(kernels.sort_by(TABLE, keys), TABLE.sort_by(keys))


def test_selection_kernels_match_table_and_array_methods():
    mask = pc.is_in(TABLE["id"], value_set=pa.array(["a", "c"], S))
    _same(kernels.filter(TABLE, mask), TABLE.filter(mask))
    nulls = pa.chunked_array([pa.array([True, None, False, True]), pa.array([None, True, False])])
    _same(kernels.filter(TABLE, nulls), TABLE.filter(nulls))
    at = pa.array([6, 0, 0, 3], pa.int64())
    _same(kernels.take(TABLE, at), TABLE.take(at))
    _same(kernels.take(IDS.combine_chunks(), at), IDS.combine_chunks().take(at))


def test_kernels_do_not_import_pyarrow_compute():
    # (pa.array over Python values imports it: pipeline.schema.pyarrays builds the table)
    probe = ("import sys, pyarrow as pa; from pipeline.schema import kernels, pyarrays; "
             "t = pa.table({'a': pyarrays.array(['y', 'x', None], pa.string())}); "
             "kernels.filter(kernels.sort_by(t, 'a'), kernels.is_valid(t['a'])); "
             "print('pyarrow.compute' in sys.modules)")
    assert python_probe(probe) == "False"
