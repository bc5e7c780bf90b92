"""Codec for the plain JSON form: ``{"instances": rows}`` in, ``{"predictions": [...]}`` out.

The form of KServe V1 and TF Serving's row format, served on ``/predict``. Its rows become one
input tensor ``input-0`` (rows x features), so the data plane treats it like any V2 request.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

from modelpool.deployments.codecs.base import Encoded
from modelpool.deployments.codecs.json_values import describe, field_at, fits_float, flatten, json_bytes, load_object, locate
from modelpool.deployments.errors import RequestError
from modelpool.deployments.datatypes import datatype_of
from modelpool.deployments.tensors import InferenceRequest, InferenceResult, Tensor

__all__ = ["INPUT_NAME", "decode", "encode", "parse_predict_request", "rows_array", "encode_predict_response"]

INPUT_NAME = "input-0"
_FEATURE_TYPES = frozenset({int, float, bool, str})
_PREDICT_EXAMPLE = '{"instances": [[1.5, 2.5], [3.5, 4.5]]}'
_PREDICT_RAGGED_HINT = "every instance must be a flat list with the same number of feature values"

def parse_predict_request(body: Union[bytes, str, dict]) -> np.ndarray:
    """Decode ``{"instances": rows}`` (or TF-Serving's ``{"inputs": rows}``) into a rows x features array.

    All-numeric rows become int64/float64 (bool if all booleans); rows holding any string become an
    object array that keeps each value's Python type, which is what mixed-column pipelines expect.
    """
    request = load_object(body, _PREDICT_EXAMPLE)
    key = _instances_key(request)
    return rows_array(request[key], key)

def rows_array(rows: list, key: str) -> np.ndarray:
    """A non-empty JSON list of rows (flat lists of numbers, booleans or strings) -> rows x features.

    ``key`` names the rows in errors (``instances[3]``); other codecs that take rows call this too.
    """
    values, dims, types = flatten(rows, key, _PREDICT_RAGGED_HINT, field_depth=1)
    if len(dims) > 2:
        raise RequestError(f"{key}[0][0] is an array; {_PREDICT_RAGGED_HINT}", field=f"{key}[0]")
    if 0 in dims:
        raise RequestError(f"{key}[0] is empty; every instance needs at least one feature value", field=f"{key}[0]")
    if not types <= _FEATURE_TYPES:
        k = next(k for k, v in enumerate(values) if type(v) not in _FEATURE_TYPES)
        raise RequestError(f"{locate(k, dims, key)} is {describe(values[k])}; feature values must be numbers, "
                           "booleans or strings", field=field_at(k, dims, key, 1))
    return _instances_array(values, types, key, dims).reshape(dims[0], -1)

def _instances_key(request: dict) -> str:
    """Find the rows under "instances" or "inputs"; accepting both at once would be ambiguous."""
    if "instances" in request and "inputs" in request:
        raise RequestError('send either "instances" or "inputs", not both', field="body")
    key = "instances" if "instances" in request or "inputs" not in request else "inputs"
    rows = request.get(key)
    if type(rows) is list and rows:
        if key == "inputs" and type(rows[0]) is dict:
            raise RequestError(f'"inputs" holds V2 tensors; send this body to the V2 infer route, or send rows as '
                               f"{_PREDICT_EXAMPLE}", field="inputs[0]")
        return key
    got = "is missing" if rows is None else f"is {describe(rows)}"
    raise RequestError(f'"{key}" {got}; send a non-empty list of rows, e.g. {_PREDICT_EXAMPLE}', field=key)

def _instances_array(values: list, types: set, key: str, dims: list[int]) -> np.ndarray:
    """Pick the narrowest dtype that holds every value exactly, converting in one call."""
    if str in types:
        return np.asarray(values, dtype=object)
    dtype = np.bool_ if types == {bool} else np.int64 if float not in types else np.float64
    try:
        return np.asarray(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError):
        fits = (lambda v: -2**63 <= v < 2**63) if dtype is np.int64 else fits_float
        k = next((k for k, v in enumerate(values) if not fits(v)), None)
        if k is None:
            raise RequestError(f"{key} could not be read as numbers; {_PREDICT_RAGGED_HINT}", field=key) from None
        raise RequestError(f"{locate(k, dims, key)} is {describe(values[k])}, too large to use as a feature; send "
                           "it as a float (e.g. 1e20) or scale it down", field=field_at(k, dims, key, 1)) from None

def encode_predict_response(predictions: Union[np.ndarray, list]) -> bytes:
    """``{"predictions": [...]}``; numpy values anywhere inside serialise without a copy step."""
    if isinstance(predictions, np.ndarray):
        predictions = predictions.tolist()
    return json_bytes({"predictions": predictions})

def decode(body: Union[bytes, str, dict], headers: Optional[Mapping[str, str]] = None) -> InferenceRequest:
    """The rows as a one-tensor request, so the data plane serves both forms alike (headers play no part)."""
    rows = parse_predict_request(body)
    tensor = Tensor(INPUT_NAME, datatype_of(rows.dtype, INPUT_NAME), rows.shape, rows, {})
    return InferenceRequest(id=None, inputs=(tensor,), parameters={})

def encode(result: InferenceResult) -> Encoded:
    """``predictions`` is the model's ``predict`` output, or its first output when it has none by that name."""
    outputs = result.outputs
    return Encoded(encode_predict_response(outputs["predict"] if "predict" in outputs else next(iter(outputs.values()))))
