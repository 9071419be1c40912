"""Arrow arrays and tables from Python values, without pyarrow's pandas probe.

``pa.array`` over Python objects — and everything that calls it: ``Table.from_pylist``,
``pa.table`` over lists, ``pa.scalar``, a compute function given a Python value, an
Arrow array's ``to_numpy`` — first asks pyarrow's pandas shim whether its argument is a
pandas object, and the shim imports pandas to answer when pandas is installed (``datasets``
installs it).  That import is 0.13–0.19 s of CPU: a fifth of a text-only ``radvqa
regenerate`` of the built-in sample (measured with ``python -X importtime``), paid for
converting a few thousand rows.  The builders here make the same arrays (``equals`` them
and give the same Parquet bytes: ``tests/test_pyarrays.py``) from numpy buffers and
pyarrow's ``StringBuilder``, which never ask.

Types: strings and binary, integers, floats, booleans, and lists and structs of them;
any other type goes to ``pa.array`` (the pandas probe included).  A string costs about
80 ns here against pa.array's 26 ns (1M strings, measured): ``large`` conversions, where
pandas' one-time import is the smaller cost, go to ``pa.array`` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

#: Values above which :func:`array` leaves the conversion to ``pa.array``: its C++ loop is
#: about 50 ns a string faster, so past a few million values the pandas import is the
#: smaller cost; a regenerate of the sample converts a few thousand.
LARGE = 2_000_000

_NUMPY = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
          pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32,
          pa.uint64(): np.uint64, pa.float32(): np.float32, pa.float64(): np.float64}
_BYTES = (pa.string(), pa.binary())


def array(values: Iterable, type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)`` for the types this module builds (see the module
    docstring); ``None`` is null, a struct's missing key is a null field."""
    values = values if isinstance(values, list) else list(values)
    if len(values) > LARGE:
        return pa.array(values, type)
    built = _build(values, type)
    return pa.array(values, type) if built is None else built


def from_numpy(values: np.ndarray) -> pa.Array:
    """``pa.array(values)`` of a 1-D numeric numpy array (which asks the probe too), sharing
    its buffer."""
    a = np.ascontiguousarray(values)
    if a.ndim != 1 or a.dtype.kind not in "iuf":
        raise ValueError(f"from_numpy: a 1-D numeric array, got {a.dtype} of shape {a.shape}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(a.dtype), len(a), [None, pa.py_buffer(a)])


def scalar(value, type: pa.DataType) -> pa.Scalar:
    """``pa.scalar(value, type)``, e.g. for a compute function's operand (given a plain
    Python value, it converts it with the probe)."""
    return array([value], type)[0]


def table(rows: Sequence[Mapping], schema: pa.Schema) -> pa.Table:
    """``pa.Table.from_pylist(rows, schema=schema)``: one chunk per column, the schema's
    metadata kept."""
    try:
        data = {name: [row[name] for row in rows] for name in schema.names}
    except KeyError:  # a missing key is a null
        data = {name: [row.get(name) for row in rows] for name in schema.names}
    return columns(data, schema)


def columns(data: Mapping[str, Iterable], schema: pa.Schema) -> pa.Table:
    """``pa.table(data, schema=schema)`` for a column list per field of ``schema``."""
    return pa.Table.from_arrays([array(data[f.name], f.type) for f in schema], schema=schema)


def _build(values: list, type: pa.DataType) -> pa.Array | None:
    n = len(values)
    if type in _BYTES:
        builder = pa.lib.StringBuilder()
        try:
            builder.append_values(values)
        except TypeError:  # not str / bytes: pa.array raises its own error
            return None
        out = builder.finish()
        return out if type == pa.string() else out.view(type)
    if type in _NUMPY:
        return _numbers(values, _NUMPY[type], type)
    if type == pa.bool_():
        valid = _validity(values)
        data = np.array([False if v is None else v for v in values] if valid is not None else values)
        if data.dtype.kind != "b" and len(data):
            return None
        bits = np.packbits(data.astype(bool), bitorder="little")
        return _from_buffers(type, n, valid, [pa.py_buffer(bits)])
    if type == pa.null():
        return pa.nulls(n)
    if pa.types.is_list(type):
        lengths, flat, nulls = [], [], False
        for v in values:
            if v is None:
                nulls = True
                lengths.append(0)
            else:
                flat.extend(v)
                lengths.append(len(v))
        child = array(flat, type.value_type)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] > np.iinfo(np.int32).max:
            return None
        valid = np.array([v is not None for v in values]) if nulls else None
        return _from_buffers(type, n, valid, [pa.py_buffer(offsets.astype(np.int32))], [child])
    if pa.types.is_struct(type):
        if not all(v is None or isinstance(v, Mapping) for v in values):
            return None
        children = [array([None if v is None else v.get(f.name) for v in values], f.type)
                    for f in type]
        return _from_buffers(type, n, _validity(values), [], children)
    return None


def _numbers(values: list, dtype, type: pa.DataType) -> pa.Array | None:
    """Integers from Python or numpy integers only, floats from any of those or floats, in
    range; anything else (strings, booleans, a float for an integer) is ``pa.array``'s to
    convert or refuse."""
    valid = _validity(values)
    if valid is not None:
        values = [0 if v is None else v for v in values]
    if not values:
        return _from_buffers(type, 0, None, [pa.py_buffer(np.zeros(0, dtype))])
    try:
        found = np.array(values)
    except (OverflowError, ValueError, TypeError):
        return None
    if found.ndim != 1 or found.dtype.kind not in ("iu" if np.dtype(dtype).kind in "iu" else "iuf"):
        return None
    if found.dtype.kind in "iu":
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        if info is not None and (found.min() < info.min or found.max() > info.max):
            return None
    return _from_buffers(type, len(values), valid, [pa.py_buffer(found.astype(dtype))])


def _validity(values: list) -> np.ndarray | None:
    """True where a value is present, or None when none is missing."""
    if not any(v is None for v in values):
        return None
    return np.array([v is not None for v in values])


def _from_buffers(type, n: int, valid, buffers: list, children=None) -> pa.Array:
    if valid is None:
        return pa.Array.from_buffers(type, n, [None, *buffers], null_count=0, children=children)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(type, n, [bitmap, *buffers], null_count=int(n - valid.sum()),
                                 children=children)


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``values.to_numpy(zero_copy_only=False)``, whose conversion (Arrow's pandas
    converter) imports pandas too: integers and floats without nulls are read from their
    buffer here (read-only, as Arrow's view is); anything else is Arrow's to convert."""
    if isinstance(values, pa.ChunkedArray):
        if values.type in _NUMPY and values.null_count == 0:
            parts = [to_numpy(c) for c in values.chunks]
            return parts[0] if len(parts) == 1 else np.concatenate(
                parts or [np.zeros(0, _NUMPY[values.type])])
        return values.to_numpy()
    if values.type not in _NUMPY or values.null_count:
        return values.to_numpy(zero_copy_only=False)
    dtype = np.dtype(_NUMPY[values.type])
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values),
                         offset=values.offset * dtype.itemsize)
