"""Arrow compute kernels, called without importing :mod:`pyarrow.compute`.

``import pyarrow.compute`` wraps every one of pyarrow's ~280 kernels in a Python function
whose docstring it parses from the kernel's C++ documentation (pyarrow's vendored
``docscrape``, ``pydoc``): 16-30 ms of CPU at the first use (measured), about a twentieth
of a text-only ``radvqa regenerate`` of the built-in sample, which runs a few dozen
kernels.  pyarrow's own ``Table``/``Array`` methods that run a kernel (``filter``,
``take``, ``sort_by``, ``cast``, ``value_counts``, ``is_null`` …) import it on their first
call, so the build and report code calls the functions here instead.

Each function is what the ``pyarrow.compute`` function or method of the same name does:
the same kernel through ``call_function`` (what every wrapper there calls) with the same
options (none where the wrapper passes none: the kernel's defaults), so the same result
(``tests/test_kernels.py``).  The Cython module behind them,
``pyarrow._compute``, imports in a few milliseconds.
"""

from __future__ import annotations

import pyarrow as pa
from pyarrow import _compute

_call = _compute.call_function


def equal(left, right):
    """``pc.equal``."""
    return _call("equal", [left, right])


def invert(mask):
    """``pc.invert``."""
    return _call("invert", [mask])


def is_in(values, value_set: pa.Array):
    """``pc.is_in(values, value_set=value_set)``."""
    return _call("is_in", [values], _compute.SetLookupOptions(value_set))


def any_true(mask) -> bool:
    """``pc.any(mask).as_py()`` (nulls skipped; ``False`` for no values)."""
    return bool(_call("any", [mask]).as_py())


def is_null(values):
    """``pc.is_null`` (a NaN is not null)."""
    return _call("is_null", [values])


def is_valid(values):
    """``pc.is_valid``."""
    return _call("is_valid", [values])


def cast(values, target_type: pa.DataType):
    """``values.cast(target_type)``: a safe cast."""
    return _call("cast", [values], _compute.CastOptions.safe(target_type))


def filter(data, mask):  # noqa: A001 - the kernel's name
    """``data.filter(mask)`` of a table or an array (a null in ``mask`` drops the row)."""
    return _call("filter", [data, mask], _compute.FilterOptions("drop"))


def take(data, indices):
    """``data.take(indices)`` of a table or an array."""
    return _call("take", [data, indices])


def sort_by(table: pa.Table, keys: str | list[tuple[str, str]]) -> pa.Table:
    """``table.sort_by(keys)``: one column's name (ascending) or ``[(name, order), …]``."""
    keys = [(keys, "ascending")] if isinstance(keys, str) else keys
    return take(table, _call("sort_indices", [table], _compute.SortOptions(sort_keys=keys)))


def struct_field(values, name: str):
    """``pc.struct_field(values, name)`` (null where the struct is null)."""
    return _call("struct_field", [values], _compute.StructFieldOptions(name))


def value_counts(values) -> pa.StructArray:
    """``pc.value_counts``: ``{"values", "counts"}`` structs in first-seen order."""
    return _call("value_counts", [values])


def dictionary_encode(values, null_encoding: str = "mask"):
    """``pc.dictionary_encode``."""
    return _call("dictionary_encode", [values], _compute.DictionaryEncodeOptions(null_encoding))


def list_flatten(lists):
    """``pc.list_flatten`` (one level)."""
    return _call("list_flatten", [lists])


def list_value_length(lists):
    """``pc.list_value_length`` (null for a null list)."""
    return _call("list_value_length", [lists])


def fill_null(values, fill_value: pa.Scalar):
    """``pc.fill_null`` with a scalar of ``values``' type."""
    return _call("coalesce", [values, fill_value])
