"""A batch table's rows as the handler's input arrays: built column-wise, typed as the model declares.

Scoring (``modelpool.management.batch.scoring``) calls this once per partition; nothing here reads or writes
storage. Declared V2 datatypes map to numpy through the one table (``modelpool.deployments.datatypes``); a column
that cannot take the declared type without changing a value is passed as float64 or objects, and the
model decides.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from modelpool.deployments.datatypes import FIXED_SIZE_DATATYPES
from modelpool.deployments.errors import RequestError

#: The single input a model gets when it declares none (the V2 convention for unnamed tensors).
DEFAULT_INPUT = "input-0"


def build_inputs(table: pa.Table, columns: list[str], model_inputs: list[dict]) -> dict[str, np.ndarray]:
    """The handler's input arrays for all rows of ``table``, built column-wise (no per-row work).

    No or one declared input: one matrix of every input column, named like the declared input
    (``input-0`` when none is declared). Several declared inputs: one array per input, taken from
    the column of the same name.
    """
    if len(model_inputs) <= 1:
        name = model_inputs[0]["name"] if model_inputs else DEFAULT_INPUT
        dtype = _declared_dtype(model_inputs[0]) if model_inputs else None
        return {name: _matrix([table.column(c) for c in columns], dtype)}
    missing = [spec["name"] for spec in model_inputs if spec["name"] not in columns]
    if missing:
        raise RequestError(
            f"the model declares inputs {[s['name'] for s in model_inputs]} but the input table has "
            f"no column {missing}; name the columns after the model's inputs", status=422,
            field="inputs",
        )
    return {spec["name"]: _array(table.column(spec["name"]), _declared_dtype(spec))
            for spec in model_inputs}


def _declared_dtype(spec: dict) -> Optional[np.dtype]:
    return FIXED_SIZE_DATATYPES.get(str(spec.get("datatype", "")).upper())


def _is_plain_numeric(column: pa.ChunkedArray) -> bool:
    kind = column.type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _matrix(columns: list[pa.ChunkedArray], dtype: Optional[np.dtype]) -> np.ndarray:
    """Rows x columns. Numbers become one numeric matrix (the declared type, else float64);
    anything else an object matrix the model can accept or reject row by row."""
    if len(columns) == 1 and _is_list(columns[0].type):
        return _array(columns[0], dtype)  # one list column holding whole feature vectors
    rows = len(columns[0]) if columns else 0
    if columns and all(_is_plain_numeric(c) for c in columns):
        target = dtype if _fits(dtype, columns) else np.dtype(np.float64)
        out = np.empty((rows, len(columns)), dtype=target)
    else:
        out = np.empty((rows, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        out[:, j] = column.to_numpy(zero_copy_only=False)
    return out


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _array(column: pa.ChunkedArray, dtype: Optional[np.dtype]) -> np.ndarray:
    """One column as an array: list columns become a 2-D array (rows x list length)."""
    if _is_list(column.type):
        values = column.to_pylist()
        try:
            return np.asarray(values, dtype=dtype)
        except (ValueError, TypeError):
            return np.asarray(values, dtype=object) if _same_lengths(values) else _object_rows(values)
    values = column.to_numpy(zero_copy_only=False)
    if _is_plain_numeric(column) and _fits(dtype, [column]):
        return values.astype(dtype, copy=False)
    return values


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
