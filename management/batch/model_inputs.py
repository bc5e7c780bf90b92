"""A batch table's rows as the handler's input arrays: built column-wise, typed as the model declares.

Scoring (``modelpool.management.batch.scoring``) calls this once per partition; nothing here reads or writes
storage. Declared V2 datatypes map to numpy through the one table (``modelpool.deployments.datatypes``); a column
that cannot take the declared type without changing a value is passed as float64 or objects, and the
model decides.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pyarrow as pa

from modelpool.deployments.datatypes import FIXED_SIZE_DATATYPES
from modelpool.deployments.errors import RequestError

#: The single input a model gets when it declares none (the V2 convention for unnamed tensors).
DEFAULT_INPUT = "input-0"


#: ``rows(start, stop)``: the handler's input arrays for rows [start, stop) of one table.
InputRows = Callable[[int, int], dict[str, np.ndarray]]


def build_inputs(table: pa.Table, columns: list[str], model_inputs: list[dict]) -> dict[str, np.ndarray]:
    """The handler's input arrays for all rows of ``table`` (see :func:`input_rows`)."""
    return input_rows(table, columns, model_inputs)(0, table.num_rows)


def input_rows(table: pa.Table, columns: list[str], model_inputs: list[dict]) -> InputRows:
    """Builds the handler's input arrays for any rows of ``table``, column-wise (no per-row work).

    No or one declared input: one matrix of every input column, named like the declared input
    (``input-0`` when none is declared). Several declared inputs: one array per input, taken from
    the column of the same name.

    Every type is decided here, once, from the whole table (a column's nulls anywhere make it
    float64 for every chunk), so chunks built apart get the same dtypes as the whole would. Scoring
    builds each chunk just before the model reads it: a 50,000-row matrix stays in the CPU's cache
    between being filled and being read, where a whole partition's (32 MB for 1M rows of four
    doubles) went out to memory and back (measured for 10M rows: 0.17-0.41 CPU-seconds before, 0.10 now).
    """
    if len(model_inputs) <= 1:
        name = model_inputs[0]["name"] if model_inputs else DEFAULT_INPUT
        dtype = _declared_dtype(model_inputs[0]) if model_inputs else None
        matrix = _matrix_rows([table.column(c) for c in columns], dtype)
        return lambda start, stop: {name: matrix(start, stop)}
    missing = [spec["name"] for spec in model_inputs if spec["name"] not in columns]
    if missing:
        raise RequestError(
            f"the model declares inputs {[s['name'] for s in model_inputs]} but the input table has "
            f"no column {missing}; name the columns after the model's inputs", status=422,
            field="inputs",
        )
    arrays = {spec["name"]: _array_rows(table.column(spec["name"]), _declared_dtype(spec)) for spec in model_inputs}
    return lambda start, stop: {name: rows(start, stop) for name, rows in arrays.items()}


def _declared_dtype(spec: dict) -> Optional[np.dtype]:
    return FIXED_SIZE_DATATYPES.get(str(spec.get("datatype", "")).upper())


def _is_plain_numeric(column: pa.ChunkedArray) -> bool:
    kind = column.type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _matrix_rows(columns: list[pa.ChunkedArray], dtype: Optional[np.dtype]) -> Callable[[int, int], np.ndarray]:
    """Rows x columns. Numbers become one numeric matrix (the declared type, else float64);
    anything else an object matrix the model can accept or reject row by row."""
    if len(columns) == 1 and _is_list(columns[0].type):
        return _array_rows(columns[0], dtype)  # one list column holding whole feature vectors
    if columns and all(_is_plain_numeric(c) for c in columns):
        target = dtype if _fits(dtype, columns) else np.dtype(np.float64)
    else:
        target = np.dtype(object)

    def rows(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, len(columns)), dtype=target)
        for j, column in enumerate(columns):
            out[:, j] = column.slice(start, stop - start).to_numpy(zero_copy_only=False)
        return out
    return rows


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _array_rows(column: pa.ChunkedArray, dtype: Optional[np.dtype]) -> Callable[[int, int], np.ndarray]:
    """One column as an array: list columns become a 2-D array (rows x list length), built whole
    once (whether it is ragged is decided over all its rows) and sliced."""
    if _is_list(column.type):
        values = column.to_pylist()
        try:
            whole = np.asarray(values, dtype=dtype)
        except (ValueError, TypeError):
            whole = np.asarray(values, dtype=object) if _same_lengths(values) else _object_rows(values)
        return lambda start, stop: whole[start:stop]
    cast = dtype if _is_plain_numeric(column) and _fits(dtype, [column]) else None

    def rows(start: int, stop: int) -> np.ndarray:
        values = column.slice(start, stop - start).to_numpy(zero_copy_only=False)
        return values if cast is None else values.astype(cast, copy=False)
    return rows


def _fits(dtype: Optional[np.dtype], columns: list[pa.ChunkedArray]) -> bool:
    """Can the columns take the declared type without silently changing a value?

    Floats take any numbers (nulls become NaN); integers only integer or boolean columns
    without nulls; booleans only boolean columns without nulls. Otherwise float64 is used and
    the model decides.
    """
    if dtype is None:
        return False
    if dtype.kind == "f":
        return True
    if any(c.null_count for c in columns):
        return False
    if dtype.kind in "iu":
        return all(pa.types.is_integer(c.type) or pa.types.is_boolean(c.type) for c in columns)
    return dtype.kind == "b" and all(pa.types.is_boolean(c.type) for c in columns)


def _same_lengths(values: list) -> bool:
    return len({len(v) if v is not None else -1 for v in values}) <= 1


def _object_rows(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
