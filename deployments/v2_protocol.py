"""Codec for the Open Inference Protocol V2 (KServe / Triton REST) and the plain JSON form.

Pure functions over bytes, dicts and numpy arrays: no Ray and no web framework, so the codec is
unit-testable on its own and costs nothing but parsing on the request path.

Speed and safety on the hot path:

* ``json.loads`` / ``json.dumps`` only; tensor data becomes numpy in ONE ``np.asarray(values,
  dtype=<declared dtype>)`` call on a flat list.
* Element types are checked *before* that call with ``set(map(type, values))``: a C-speed pass
  (~10% of the cost of ``json.loads``) that is exact. Letting numpy infer a dtype first and then
  inspecting ``dtype.kind`` is cheaper by that 10% but wrong twice over: numpy silently turns
  ``[1, true]`` into ``[1, 1]``, and a numeric list holding one long string becomes a fixed-width
  unicode array as wide as that string *per element* (a 40 kB body allocates gigabytes). With
  the declared dtype fixed up front, memory is bounded by the element count.
* Per-element Python loops run only on the error path, to name the element at fault.

Every problem with a request raises :class:`~deployments.errors.RequestError` (status 400) whose
message says what is wrong and how to fix it and whose ``field`` is the JSON path at fault;
nothing else escapes ``parse_*`` whatever the input.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterable, Optional, Union

import numpy as np

from deployments.errors import RequestError

__all__ = [
    "V2_DATATYPES",
    "Tensor",
    "InferenceRequest",
    "parse_infer_request",
    "tensor_from_array",
    "encode_infer_response",
    "parse_predict_request",
    "encode_predict_response",
    "model_metadata",
    "error_body",
]

V2_DATATYPES: dict[str, Union[np.dtype, type]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # values are Python str
}

# The JSON value types each datatype accepts, exactly (bool is not an int, str is not a number).
_JSON_TYPES: dict[str, frozenset[type]] = {
    name: frozenset({bool}) if name == "BOOL"
    else frozenset({str}) if name == "BYTES"
    else frozenset({int, float}) if name.startswith("FP")
    else frozenset({int})
    for name in V2_DATATYPES
}

# What to tell a client whose element does not fit: (what the datatype needs, how to fix it).
_NEEDS: dict[str, tuple[str, str]] = {
    name: ("JSON booleans", "send true/false, or declare an integer datatype such as INT64 for 0/1 values")
    if name == "BOOL"
    else ("JSON strings", "send every element as a string, or declare a numeric datatype")
    if name == "BYTES"
    else ("JSON numbers", "send unquoted numbers (not strings, booleans or null)")
    if name.startswith("FP")
    else ("JSON integers", "send whole numbers without a decimal point, or declare FP32/FP64 for fractions")
    for name in V2_DATATYPES
}

# numpy (kind, itemsize) -> V2 datatype, for outputs; keyed this way so byte order does not matter.
_OUTPUT_DATATYPES: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in V2_DATATYPES.items() if name != "BYTES"
}

_ARRAY_TYPES = frozenset({list, tuple})
_FEATURE_TYPES = frozenset({int, float, bool, str})
_MAX_DIMS = 64  # numpy's limit on array dimensions
#: Most input (and requested output) tensors per request. Each costs ~12 us of Python, so without a
#: cap a body within --max-body-bytes could hold a replica's event loop for seconds; 4096 is ~50 ms.
MAX_TENSORS = 4096
_V2_EXAMPLE = '{"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}'
_PREDICT_EXAMPLE = '{"instances": [[1.5, 2.5], [3.5, 4.5]]}'
_V2_RAGGED_HINT = ("nested data must be rectangular (same length and depth everywhere), "
                   "or send it flat in row-major order")
_PREDICT_RAGGED_HINT = "every instance must be a flat list with the same number of feature values"


@dataclass(frozen=True)
class Tensor:
    """One decoded request input: ``data`` is already typed and shaped, ready for a model."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded V2 request; ``requested_outputs`` is None when the client wants every output."""

    id: Optional[str]
    inputs: tuple[Tensor, ...]
    parameters: dict
    requested_outputs: Optional[tuple[str, ...]]


# --- V2 requests ---------------------------------------------------------------------------------


def parse_infer_request(body: Union[bytes, str, dict]) -> InferenceRequest:
    """Decode and fully validate a V2 ``/infer`` body, so handlers only ever see well-formed tensors."""
    request = _load_object(body, _V2_EXAMPLE)
    request_id = request.get("id")
    if request_id is not None and type(request_id) is not str:
        raise RequestError(f'"id" must be a string, got {_describe(request_id)}; send e.g. "id": "42" or leave it out',
                           field="id")
    parameters = _optional_object(request.get("parameters"), "parameters")
    _refuse_binary(parameters, "parameters", "binary_data_output")
    return InferenceRequest(
        id=request_id,
        inputs=_parse_inputs(request),
        parameters=parameters,
        requested_outputs=_requested_outputs(request.get("outputs")),
    )


def _parse_inputs(request: dict) -> tuple[Tensor, ...]:
    """Validate the "inputs" list and each tensor in it; names must be unique to address them."""
    inputs = request.get("inputs")
    if type(inputs) is not list or not inputs:
        got = "is missing" if inputs is None else f"is {_describe(inputs)}"
        hint = " (this looks like the plain JSON form: send it to the predict route)" if "instances" in request else ""
        raise RequestError(f'"inputs" {got}; a V2 request needs a non-empty list of tensors, e.g. {_V2_EXAMPLE}{hint}',
                           field="inputs")
    if len(inputs) > MAX_TENSORS:
        raise RequestError(f'"inputs" has {len(inputs)} tensors; at most {MAX_TENSORS} are accepted, so put '
                           "values of the same datatype into one tensor with a wider shape", field="inputs")
    seen: dict[str, int] = {}
    tensors: list[Tensor] = []
    for i, item in enumerate(inputs):
        tensor = _parse_input(item, f"inputs[{i}]")
        if tensor.name in seen:
            raise RequestError(f"inputs[{i}].name is {_describe(tensor.name)}, like inputs[{seen[tensor.name]}].name; "
                               "give every input a unique name", field=f"inputs[{i}].name")
        seen[tensor.name] = i
        tensors.append(tensor)
    return tuple(tensors)


def _parse_input(item: Any, where: str) -> Tensor:
    """Check one input tensor in the order a client would fix it: name, datatype, shape, data."""
    if type(item) is not dict:
        raise RequestError(f'{where} is {_describe(item)}; each input must be an object with "name", "shape", '
                           f'"datatype" and "data", e.g. {_V2_EXAMPLE}', field=where)
    name = item.get("name")
    if type(name) is not str or not name:
        raise RequestError(f'{where}.name must be a non-empty string, got {_describe(name)}; name the input, '
                           'e.g. "name": "input-0"', field=f"{where}.name")
    datatype = _check_datatype(item.get("datatype"), f"{where}.datatype")
    shape = _check_shape(item.get("shape"), f"{where}.shape")
    parameters = _optional_object(item.get("parameters"), f"{where}.parameters")
    _refuse_binary(parameters, f"{where}.parameters", "binary_data_size", "binary_data")
    if "data" not in item:
        raise RequestError(f'{where}.data is missing; send the tensor values as a JSON array (flat or nested, '
                           f'row-major), e.g. {_V2_EXAMPLE}', field=f"{where}.data")
    data = _tensor_data(item["data"], datatype, shape, f"{where}.data")
    return Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters)


def _check_datatype(datatype: Any, field: str) -> str:
    """Only the V2 datatype names are accepted; a near miss (lower case) gets a precise suggestion."""
    if type(datatype) is str and datatype in V2_DATATYPES:
        return datatype
    allowed = ", ".join(V2_DATATYPES)
    near_miss = type(datatype) is str and datatype.upper() in V2_DATATYPES
    hint = f' (did you mean "{datatype.upper()}"?)' if near_miss else ""
    got = "is missing" if datatype is None else f"is {_describe(datatype)}"
    raise RequestError(f"{field} {got}{hint}; use one of {allowed}", field=field)


def _check_shape(shape: Any, field: str) -> tuple[int, ...]:
    """A request shape is concrete: non-negative ints only (bools are not ints; -1 is metadata-only)."""
    if type(shape) is not list:
        got = "is missing" if shape is None else f"is {_describe(shape)}"
        raise RequestError(f"{field} {got}; send the tensor's dimensions as a list of non-negative integers, "
                           "e.g. [2, 3]", field=field)
    if len(shape) > _MAX_DIMS:
        raise RequestError(f"{field} has {len(shape)} dimensions; at most {_MAX_DIMS} are supported, so merge some",
                           field=field)
    for k, dim in enumerate(shape):
        if type(dim) is not int or dim < 0:
            raise RequestError(f"{field}[{k}] is {_describe(dim)}; every dimension must be a non-negative integer "
                               "(the actual size: -1 is only for model metadata), e.g. [2, 3]", field=field)
    return tuple(shape)


def _optional_object(value: Any, field: str) -> dict:
    """Optional objects may be absent or null (as KServe's own models allow); anything else is an error."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise RequestError(f"{field} must be a JSON object, got {_describe(value)}; send e.g. {{}} or leave it out",
                           field=field)
    return value


def _refuse_binary(parameters: dict, where: str, *keys: str) -> None:
    """The binary tensor extension puts data after the JSON; we only read JSON, so say so up front.

    ``binary_data: false`` is what JSON-only clients (e.g. tritonclient) send, so only true is refused;
    a ``binary_data_size`` of any value means the data is not in the JSON at all.
    """
    for key in keys:
        value = parameters.get(key)
        if (key == "binary_data_size" and key in parameters) or value is True:
            raise RequestError(f"{where}.{key}: binary tensor data is not supported; send the values as JSON "
                               f'"data" and drop the {key} parameter', field=f"{where}.{key}")


def _requested_outputs(outputs: Any) -> Optional[tuple[str, ...]]:
    """Names of the outputs the client asked for; absent, null or [] means all of them."""
    if outputs is None:
        return None
    if type(outputs) is not list:
        raise RequestError(f'"outputs" must be a list of objects like {{"name": "predict"}}, got {_describe(outputs)}; '
                           "or leave it out to get every output", field="outputs")
    if len(outputs) > MAX_TENSORS:
        raise RequestError(f'"outputs" lists {len(outputs)} outputs; at most {MAX_TENSORS} can be requested, '
                           "or leave it out to get every output", field="outputs")
    names: list[str] = []
    seen: set[str] = set()  # a set, not `in names`: a list of 200k names would be a quadratic stall
    for i, item in enumerate(outputs):
        where = f"outputs[{i}]"
        if type(item) is not dict:
            raise RequestError(f'{where} is {_describe(item)}; each requested output must be an object like '
                               '{"name": "predict"}', field=where)
        name = item.get("name")
        if type(name) is not str or not name:
            raise RequestError(f"{where}.name must be a non-empty string naming a model output, got {_describe(name)}",
                               field=f"{where}.name")
        if name in seen:
            raise RequestError(f"{where}.name is {_describe(name)}, which is already requested; list each output once",
                               field=f"{where}.name")
        parameters = _optional_object(item.get("parameters"), f"{where}.parameters")
        _refuse_binary(parameters, f"{where}.parameters", "binary_data")
        names.append(name)
        seen.add(name)
    return tuple(names) or None


# --- tensor data ---------------------------------------------------------------------------------


def _tensor_data(raw: Any, datatype: str, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Turn JSON ``data`` into an array of the declared dtype and shape, or say exactly what is off.

    Nesting is only a notation: any rectangular nesting with the right element count is accepted
    (KServe allows flat data), and the values are laid out row-major into ``shape``.
    """
    if type(raw) not in _ARRAY_TYPES:
        raise RequestError(f"{field} is {_describe(raw)}; send the tensor values as a JSON array (flat or nested, "
                           "row-major), e.g. [1.5, 2.5]", field=field)
    values, dims, types = _flatten(raw, field, _V2_RAGGED_HINT)
    expected = math.prod(shape)
    if len(values) != expected:
        raise RequestError(f"{field} has {len(values)} elements but shape {_show_shape(shape)} needs "
                           f"{_show_int(expected)}; send exactly that many values (row-major) or fix the shape",
                           field=field)
    if not types <= _JSON_TYPES[datatype]:
        _raise_bad_element(values, dims, datatype, field)
    array = _to_numpy(values, dims, datatype, field)
    try:
        return array.reshape(shape)
    except (ValueError, OverflowError) as exc:  # a zero-sized tensor with absurd other dimensions
        raise RequestError(f"shape {_show_shape(shape)} cannot be allocated ({exc}); send realistic dimensions",
                           field=field.rsplit(".", 1)[0] + ".shape") from None


def _flatten(data: Union[list, tuple], field: str, hint: str, field_depth: int = 0) -> tuple[list, list[int], set]:
    """Flatten rectangular nested lists level by level, with C-speed passes and no recursion.

    Returns (row-major leaf values, the dimensions walked, the set of leaf types). Raggedness and
    mixed depth are found per level; only then does a Python loop run, to name the element at fault.
    ``field_depth`` index components of that element are kept in the error's field (1 gives
    "instances[3]"), the rest go in the message only.
    """
    nodes: list = data if type(data) is list else list(data)
    dims = [len(nodes)]
    while True:
        types = set(map(type, nodes))
        arrays = types & _ARRAY_TYPES
        if not arrays:
            return nodes, dims, types
        if arrays != types:
            first_is_array = type(nodes[0]) in _ARRAY_TYPES
            k = next(k for k, node in enumerate(nodes) if (type(node) in _ARRAY_TYPES) != first_is_array)
            at, first = _locate(k, dims, field), _locate(0, dims, field)
            raise RequestError(f"{at} is {_describe(nodes[k])} but {first} is {_describe(nodes[0])}; {hint}",
                               field=_field_at(k, dims, field, field_depth))
        lengths = set(map(len, nodes))
        if len(lengths) > 1:
            width = len(nodes[0])
            k = next(k for k, node in enumerate(nodes) if len(node) != width)
            at, first = _locate(k, dims, field), _locate(0, dims, field)
            raise RequestError(f"{at} has length {len(nodes[k])} but {first} has length {width}; {hint}",
                               field=_field_at(k, dims, field, field_depth))
        dims.append(lengths.pop())
        nodes = list(chain.from_iterable(nodes))


def _to_numpy(values: list, dims: list[int], datatype: str, field: str) -> np.ndarray:
    """The single typed ``np.asarray`` call; range problems send us to the slow path to name the value.

    No ``np.errstate`` here: entering it costs more than converting a typical request. A float
    overflow therefore shows up as inf (checked below, vectorised), or as RuntimeWarning /
    FloatingPointError where warnings are errors, and both lead to the same 400 (otherwise numpy
    prints its overflow RuntimeWarning, once per process under the default warning filters).
    """
    try:
        array = np.asarray(values, dtype=V2_DATATYPES[datatype])
    except (OverflowError, ValueError, TypeError, RuntimeWarning, FloatingPointError):
        _raise_out_of_range(values, dims, datatype, field)
        raise  # unreachable: _raise_out_of_range always raises
    if datatype in ("FP16", "FP32") and not np.isfinite(array).all():
        _check_float_overflow(values, dims, array, datatype, field)
    return array


def _check_float_overflow(values: list, dims: list[int], array: np.ndarray, datatype: str, field: str) -> None:
    """NaN and infinities the client sent are fine (missing values); finite values that became inf are not."""
    overflowed = np.flatnonzero(np.isinf(array) & np.isfinite(np.asarray(values, dtype=np.float64)))
    if overflowed.size:
        k = int(overflowed[0])
        limit = float(np.finfo(V2_DATATYPES[datatype]).max)
        raise RequestError(f"{_locate(k, dims, field)} is {_describe(values[k])}, outside the {datatype} range "
                           f"(±{limit:g}); send smaller values or declare a wider datatype such as FP64", field=field)


def _raise_out_of_range(values: list, dims: list[int], datatype: str, field: str) -> None:
    """Slow path after numpy refused a value: find it with plain Python and say what range applies."""
    dtype = V2_DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
        k = next((k for k, v in enumerate(values) if not lo <= v <= hi), None)
        bounds = f"[{lo}, {hi}]"
    else:
        k = next((k for k, v in enumerate(values) if not _fits_float(v)), None)
        if k is None:  # only a narrower float overflowed, and warnings are errors here
            with np.errstate(over="ignore"):
                array = np.asarray(values, dtype=dtype)
            _check_float_overflow(values, dims, array, datatype, field)
        bounds = f"(±{float(np.finfo(dtype).max):g})"
    if k is None:
        raise RequestError(f"{field} could not be read as {datatype}; send {_NEEDS[datatype][0]} that fit it",
                           field=field)
    raise RequestError(f"{_locate(k, dims, field)} is {_describe(values[k])}, outside the {datatype} range "
                       f"{bounds}; send values in range or declare a datatype that holds them (INT64, or FP64 "
                       "for huge magnitudes)", field=field)


def _fits_float(value: Any) -> bool:
    """Python ints can be far larger than any float; only those fail here."""
    try:
        float(value)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


def _raise_bad_element(values: list, dims: list[int], datatype: str, field: str) -> None:
    """Name the first element whose JSON type the datatype does not accept, and what to send instead."""
    allowed = _JSON_TYPES[datatype]
    k = next(k for k, v in enumerate(values) if type(v) not in allowed)
    needs, fix = _NEEDS[datatype]
    raise RequestError(f"{_locate(k, dims, field)} is {_describe(values[k])}, but datatype {datatype} needs "
                       f"{needs}; {fix}", field=field)


# --- V2 responses --------------------------------------------------------------------------------


def tensor_from_array(name: str, array: np.ndarray) -> dict:
    """A V2 output tensor; the datatype comes from the dtype so clients can rebuild the array exactly."""
    array = np.asarray(array)
    datatype = _datatype_of(array.dtype, name)
    flat = array.ravel()  # C order: the row-major layout V2 specifies, whatever the array's strides
    data = _texts(flat.tolist()) if datatype == "BYTES" else flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _datatype_of(dtype: np.dtype, name: str) -> str:
    """Map a numpy dtype to a V2 datatype; anything V2 cannot carry is a server bug, not a 4xx."""
    if dtype.kind in "USO":
        return "BYTES"
    datatype = _OUTPUT_DATATYPES.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise TypeError(f"output {name!r} has numpy dtype {dtype}, which V2 cannot carry; "
                        f"cast it to one of {', '.join(V2_DATATYPES)} first")
    return datatype


def _texts(values: list) -> list:
    """BYTES travel as JSON strings: keep str, decode bytes as UTF-8, str() anything else."""
    if set(map(type, values)) <= {str}:
        return values
    return [v if type(v) is str else bytes(v).decode() if isinstance(v, (bytes, bytearray)) else str(v)
            for v in values]


def encode_infer_response(
    model_name: str,
    model_version: Optional[str],
    request_id: Optional[str],
    outputs: dict[str, np.ndarray],
    requested_outputs: Optional[tuple[str, ...]] = None,
    parameters: Optional[dict] = None,
) -> bytes:
    """The V2 response body; requested outputs are returned in the order the client listed them."""
    if requested_outputs is None:
        names: Iterable[str] = outputs.keys()
    else:
        for i, name in enumerate(requested_outputs):
            if name not in outputs:
                available = ", ".join(json.dumps(n) for n in outputs) or "none"
                raise RequestError(f"outputs[{i}].name is {_describe(name)}, which is not an output of model "
                                   f"{model_name}; available outputs: {available}. Ask for one of those or leave "
                                   '"outputs" out to get all', field=f"outputs[{i}].name")
        names = requested_outputs
    body: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        body["model_version"] = model_version
    if request_id is not None:
        body["id"] = request_id
    if parameters is not None:
        body["parameters"] = parameters
    body["outputs"] = [tensor_from_array(name, outputs[name]) for name in names]
    return _dumps(body)


# --- plain JSON form -----------------------------------------------------------------------------


def parse_predict_request(body: Union[bytes, str, dict]) -> np.ndarray:
    """Decode ``{"instances": rows}`` (or TF-Serving's ``{"inputs": rows}``) into a rows x features array.

    All-numeric rows become int64/float64 (bool if all booleans); rows holding any string become an
    object array that keeps each value's Python type, which is what mixed-column pipelines expect.
    """
    request = _load_object(body, _PREDICT_EXAMPLE)
    key = _instances_key(request)
    rows = request[key]
    values, dims, types = _flatten(rows, key, _PREDICT_RAGGED_HINT, field_depth=1)
    if len(dims) > 2:
        raise RequestError(f"{key}[0][0] is an array; {_PREDICT_RAGGED_HINT}", field=f"{key}[0]")
    if 0 in dims:
        raise RequestError(f"{key}[0] is empty; every instance needs at least one feature value", field=f"{key}[0]")
    if not types <= _FEATURE_TYPES:
        k = next(k for k, v in enumerate(values) if type(v) not in _FEATURE_TYPES)
        raise RequestError(f"{_locate(k, dims, key)} is {_describe(values[k])}; feature values must be numbers, "
                           "booleans or strings", field=_field_at(k, dims, key, 1))
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
    got = "is missing" if rows is None else f"is {_describe(rows)}"
    raise RequestError(f'"{key}" {got}; send a non-empty list of rows, e.g. {_PREDICT_EXAMPLE}', field=key)


def _instances_array(values: list, types: set, key: str, dims: list[int]) -> np.ndarray:
    """Pick the narrowest dtype that holds every value exactly, converting in one call."""
    if str in types:
        return np.asarray(values, dtype=object)
    dtype = np.bool_ if types == {bool} else np.int64 if float not in types else np.float64
    try:
        return np.asarray(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError):
        fits = (lambda v: -2**63 <= v < 2**63) if dtype is np.int64 else _fits_float
        k = next((k for k, v in enumerate(values) if not fits(v)), None)
        if k is None:
            raise RequestError(f"{key} could not be read as numbers; {_PREDICT_RAGGED_HINT}", field=key) from None
        raise RequestError(f"{_locate(k, dims, key)} is {_describe(values[k])}, too large to use as a feature; send "
                           "it as a float (e.g. 1e20) or scale it down", field=_field_at(k, dims, key, 1)) from None


def encode_predict_response(predictions: Union[np.ndarray, list]) -> bytes:
    """``{"predictions": [...]}``; numpy values anywhere inside serialise without a copy step."""
    if isinstance(predictions, np.ndarray):
        predictions = predictions.tolist()
    return _dumps({"predictions": predictions})


# --- metadata and errors -------------------------------------------------------------------------


def model_metadata(name: str, versions: list[str], platform: str, inputs: list[dict], outputs: list[dict]) -> dict:
    """The V2 model metadata body; tensors are trimmed to name/datatype/shape as the spec defines them."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_metadata_tensor(t) for t in inputs],
        "outputs": [_metadata_tensor(t) for t in outputs],
    }


def _metadata_tensor(tensor: dict) -> dict:
    """A wrong datatype here is a model-config bug, so it fails loudly rather than reaching clients."""
    if tensor["datatype"] not in V2_DATATYPES:
        raise ValueError(f"tensor {tensor['name']!r} has datatype {tensor['datatype']!r}; "
                         f"use one of {', '.join(V2_DATATYPES)}")
    return {"name": tensor["name"], "datatype": tensor["datatype"], "shape": list(tensor["shape"])}


def error_body(message: str, field: Optional[str] = None) -> bytes:
    """The error shape every route shares, so clients parse failures one way."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return _dumps(body)


# --- helpers -------------------------------------------------------------------------------------


def _load_object(body: Any, example: str) -> dict:
    """Parse the body (or take an already-parsed dict) and insist on a JSON object."""
    if isinstance(body, dict):
        return body
    if isinstance(body, memoryview):
        body = body.tobytes()
    if not isinstance(body, (bytes, bytearray, str)):
        raise RequestError(f"request body must be JSON text, got {type(body).__name__}; send a JSON object such as "
                           f"{example}", field="body")
    if not body.strip():
        raise RequestError(f"request body is empty; send a JSON object such as {example}", field="body")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"request body is not valid JSON ({_json_error_reason(exc)}); send a JSON object such as "
                           f"{example}", field="body") from None
    if type(parsed) is not dict:
        raise RequestError(f"request body is {_describe(parsed)}; send a JSON object such as {example}", field="body")
    return parsed


def _json_error_reason(exc: BaseException) -> str:
    """Say why in client terms (Python's own messages for some of these point at Python settings)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return "a number in it has too many digits"  # int() refuses more than 4300 digits


def json_bytes(body: Any) -> bytes:
    """Compact JSON (smaller bodies, faster to write); numpy scalars and arrays are accepted anywhere."""
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode()


_dumps = json_bytes


def _json_default(value: Any) -> Any:
    """Only called for values json cannot serialise itself, so the common path pays nothing."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _index(k: int, dims: list[int]) -> list[int]:
    """Row-major flat position -> nested index, for pointing at one element in a message."""
    index: list[int] = []
    for size in reversed(dims):
        k, rest = divmod(k, size)
        index.append(rest)
    return index[::-1]


def _locate(k: int, dims: list[int], field: str) -> str:
    return field + "".join(f"[{i}]" for i in _index(k, dims))


def _field_at(k: int, dims: list[int], field: str, depth: int) -> str:
    return field + "".join(f"[{i}]" for i in _index(k, dims)[:depth])


def _describe(value: Any) -> str:
    """Name a JSON value as the client wrote it, short and safe (no 100k-digit ints in messages)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return _show_int(value)
    if kind is float:
        return repr(value)
    if kind is str:
        return "the string " + json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
    if kind in _ARRAY_TYPES:
        return "an array"
    if kind is dict:
        return "an object"
    return f"a {kind.__name__}"


def _show_int(value: int) -> str:
    """str() refuses ints past 4300 digits, and a product of JSON dims can be that long."""
    return str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"


def _show_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(_show_int(d) for d in shape) + "]"
