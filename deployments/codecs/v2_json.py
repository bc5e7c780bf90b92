"""Codec for the Open Inference Protocol V2 over REST with JSON bodies (KServe / Triton / MLServer).

Pure functions over bytes, dicts and numpy arrays: no Ray and no web framework, so the codec is
unit-testable on its own and costs nothing but parsing on the request path. The binary tensor
extension (``v2_binary``) reuses this parser for its JSON header and hands it a reader for the
tensors whose data follows the JSON.

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

Every problem with a request raises :class:`~modelpool.deployments.errors.RequestError` (status 400) whose
message says what is wrong and how to fix it and whose ``field`` is the JSON path at fault;
nothing else escapes ``parse_*`` whatever the input.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import numpy as np

from modelpool.deployments.codecs.json_values import (
    ARRAY_TYPES, describe, fits_float, flatten, json_bytes, load_object, locate, show_int, show_shape,
)
from modelpool.deployments.errors import RequestError
from modelpool.deployments.datatypes import V2_DATATYPES, datatype_of
from modelpool.deployments.tensors import InferenceRequest, InferenceResult, RequestedOutput, Tensor

__all__ = ["MAX_TENSORS", "BinaryReader", "parse_infer_request", "tensor_from_array", "encode_infer_response",
           "check_datatype", "check_shape"]

#: Reads the binary data of one input: (binary_data_size as sent, datatype, shape, field) -> array.
BinaryReader = Callable[[Any, str, tuple, str], np.ndarray]
MAX_DIMS = 64  # numpy's limit on array dimensions

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

#: Most input (and requested output) tensors per request. Each costs ~12 us of Python, so without a
#: cap a body within --max-body-bytes could hold a replica's event loop for seconds; 4096 is ~50 ms.
MAX_TENSORS = 4096
_V2_EXAMPLE = '{"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}'
_V2_RAGGED_HINT = ("nested data must be rectangular (same length and depth everywhere), "
                   "or send it flat in row-major order")

# --- requests ---

def parse_infer_request(body: Union[bytes, str, dict], binary: Optional[BinaryReader] = None) -> InferenceRequest:
    """Decode and fully validate a V2 ``/infer`` body, so handlers only ever see well-formed tensors.

    ``binary`` reads the data of inputs that carry ``parameters.binary_data_size`` (the binary
    tensor extension); without it such inputs are refused with the header the client forgot.
    """
    request = load_object(body, _V2_EXAMPLE)
    request_id = request.get("id")
    if request_id is not None and type(request_id) is not str:
        raise RequestError(f'"id" must be a string, got {describe(request_id)}; send e.g. "id": "42" or leave it out',
                           field="id")
    parameters = _optional_object(request.get("parameters"), "parameters")
    return InferenceRequest(
        id=request_id,
        inputs=_parse_inputs(request, binary),
        parameters=parameters,
        outputs=_requested_outputs(request.get("outputs")),
        binary_output=_optional_bool(parameters, "binary_data_output", "parameters"),
    )

def _parse_inputs(request: dict, binary: Optional[BinaryReader]) -> tuple[Tensor, ...]:
    """Validate the "inputs" list and each tensor in it; names must be unique to address them."""
    inputs = request.get("inputs")
    if type(inputs) is not list or not inputs:
        got = "is missing" if inputs is None else f"is {describe(inputs)}"
        hint = " (this looks like the plain JSON form: send it to the predict route)" if "instances" in request else ""
        raise RequestError(f'"inputs" {got}; a V2 request needs a non-empty list of tensors, e.g. {_V2_EXAMPLE}{hint}',
                           field="inputs")
    if len(inputs) > MAX_TENSORS:
        raise RequestError(f'"inputs" has {len(inputs)} tensors; at most {MAX_TENSORS} are accepted, so put '
                           "values of the same datatype into one tensor with a wider shape", field="inputs")
    seen: dict[str, int] = {}
    tensors: list[Tensor] = []
    for i, item in enumerate(inputs):
        tensor = _parse_input(item, f"inputs[{i}]", binary)
        if tensor.name in seen:
            raise RequestError(f"inputs[{i}].name is {describe(tensor.name)}, like inputs[{seen[tensor.name]}].name; "
                               "give every input a unique name", field=f"inputs[{i}].name")
        seen[tensor.name] = i
        tensors.append(tensor)
    return tuple(tensors)

def _parse_input(item: Any, where: str, binary: Optional[BinaryReader]) -> Tensor:
    """Check one input tensor in the order a client would fix it: name, datatype, shape, data."""
    if type(item) is not dict:
        raise RequestError(f'{where} is {describe(item)}; each input must be an object with "name", "shape", '
                           f'"datatype" and "data", e.g. {_V2_EXAMPLE}', field=where)
    name = item.get("name")
    if type(name) is not str or not name:
        raise RequestError(f'{where}.name must be a non-empty string, got {describe(name)}; name the input, '
                           'e.g. "name": "input-0"', field=f"{where}.name")
    datatype = check_datatype(item.get("datatype"), f"{where}.datatype")
    shape = check_shape(item.get("shape"), f"{where}.shape")
    parameters = _optional_object(item.get("parameters"), f"{where}.parameters")
    if "binary_data_size" in parameters:
        data = _binary_input(item, parameters["binary_data_size"], datatype, shape, where, binary)
    elif "data" not in item:
        raise RequestError(f'{where}.data is missing; send the tensor values as a JSON array (flat or nested, '
                           f'row-major), e.g. {_V2_EXAMPLE}, or binary data with parameters.binary_data_size',
                           field=f"{where}.data")
    else:
        data = _tensor_data(item["data"], datatype, shape, f"{where}.data")
    return Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters)

def _binary_input(item: dict, size: Any, datatype: str, shape: tuple[int, ...], where: str,
                  binary: Optional[BinaryReader]) -> np.ndarray:
    """An input whose data follows the JSON; only readable when the request declared where the JSON ends."""
    field = f"{where}.parameters.binary_data_size"
    if binary is None:
        raise RequestError(f"{field} is set, but the request has no binary section; send the "
                           "Inference-Header-Content-Length header with the byte length of the JSON part "
                           'followed by the tensor bytes, or send the values as JSON "data" without binary_data_size',
                           field=field)
    if "data" in item:
        raise RequestError(f'{where} has both "data" and parameters.binary_data_size; send the values one way only',
                           field=f"{where}.data")
    return binary(size, datatype, shape, field)

def check_datatype(datatype: Any, field: str) -> str:
    """Only the V2 datatype names are accepted; a near miss (lower case) gets a precise suggestion."""
    if type(datatype) is str and datatype in V2_DATATYPES:
        return datatype
    allowed = ", ".join(V2_DATATYPES)
    near_miss = type(datatype) is str and datatype.upper() in V2_DATATYPES
    hint = f' (did you mean "{datatype.upper()}"?)' if near_miss else ""
    got = "is missing" if datatype is None else f"is {describe(datatype)}"
    raise RequestError(f"{field} {got}{hint}; use one of {allowed}", field=field)

def check_shape(shape: Any, field: str) -> tuple[int, ...]:
    """A request shape is concrete: non-negative ints only (bools are not ints; -1 is metadata-only)."""
    if type(shape) is not list:
        got = "is missing" if shape is None else f"is {describe(shape)}"
        raise RequestError(f"{field} {got}; send the tensor's dimensions as a list of non-negative integers, "
                           "e.g. [2, 3]", field=field)
    if len(shape) > MAX_DIMS:
        raise RequestError(f"{field} has {len(shape)} dimensions; at most {MAX_DIMS} are supported, so merge some",
                           field=field)
    for k, dim in enumerate(shape):
        if type(dim) is not int or dim < 0:
            raise RequestError(f"{field}[{k}] is {describe(dim)}; every dimension must be a non-negative integer "
                               "(the actual size: -1 is only for model metadata), e.g. [2, 3]", field=field)
    return tuple(shape)

def _optional_object(value: Any, field: str) -> dict:
    """Optional objects may be absent or null (as KServe's own models allow); anything else is an error."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise RequestError(f"{field} must be a JSON object, got {describe(value)}; send e.g. {{}} or leave it out",
                           field=field)
    return value

def _optional_bool(parameters: dict, key: str, where: str) -> bool:
    """A binary-data switch: absent or null is False; anything but a JSON boolean is refused."""
    value = parameters.get(key)
    if value is None:
        return False
    if type(value) is not bool:
        raise RequestError(f"{where}.{key} must be true or false, got {describe(value)}", field=f"{where}.{key}")
    return value

def _requested_outputs(outputs: Any) -> Optional[tuple[RequestedOutput, ...]]:
    """The outputs the client asked for, with their binary-data wishes; absent, null or [] means all."""
    if outputs is None:
        return None
    if type(outputs) is not list:
        raise RequestError(f'"outputs" must be a list of objects like {{"name": "predict"}}, got {describe(outputs)}; '
                           "or leave it out to get every output", field="outputs")
    if len(outputs) > MAX_TENSORS:
        raise RequestError(f'"outputs" lists {len(outputs)} outputs; at most {MAX_TENSORS} can be requested, '
                           "or leave it out to get every output", field="outputs")
    requested: list[RequestedOutput] = []
    seen: set[str] = set()  # a set, not a list scan: a list of 200k names would be a quadratic stall
    for i, item in enumerate(outputs):
        where = f"outputs[{i}]"
        if type(item) is not dict:
            raise RequestError(f'{where} is {describe(item)}; each requested output must be an object like '
                               '{"name": "predict"}', field=where)
        name = item.get("name")
        if type(name) is not str or not name:
            raise RequestError(f"{where}.name must be a non-empty string naming a model output, got {describe(name)}",
                               field=f"{where}.name")
        if name in seen:
            raise RequestError(f"{where}.name is {describe(name)}, which is already requested; list each output once",
                               field=f"{where}.name")
        parameters = _optional_object(item.get("parameters"), f"{where}.parameters")
        if parameters.get("classification") is not None:
            raise RequestError(f"{where}.parameters.classification: the classification extension is not supported; "
                               "ask for the model's predict_proba output and take the top classes from it",
                               field=f"{where}.parameters.classification")
        binary = _optional_bool(parameters, "binary_data", f"{where}.parameters") if "binary_data" in parameters else None
        requested.append(RequestedOutput(name, binary))
        seen.add(name)
    return tuple(requested) or None

# --- tensor data ---

def _tensor_data(raw: Any, datatype: str, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Turn JSON ``data`` into an array of the declared dtype and shape, or say exactly what is off.

    Nesting is only a notation: any rectangular nesting with the right element count is accepted
    (KServe allows flat data), and the values are laid out row-major into ``shape``.
    """
    if type(raw) not in ARRAY_TYPES:
        raise RequestError(f"{field} is {describe(raw)}; send the tensor values as a JSON array (flat or nested, "
                           "row-major), e.g. [1.5, 2.5]", field=field)
    values, dims, types = flatten(raw, field, _V2_RAGGED_HINT)
    expected = math.prod(shape)
    if len(values) != expected:
        raise RequestError(f"{field} has {len(values)} elements but shape {show_shape(shape)} needs "
                           f"{show_int(expected)}; send exactly that many values (row-major) or fix the shape",
                           field=field)
    if not types <= _JSON_TYPES[datatype]:
        _raise_bad_element(values, dims, datatype, field)
    array = _to_numpy(values, dims, datatype, field)
    try:
        return array.reshape(shape)
    except (ValueError, OverflowError) as exc:  # a zero-sized tensor with absurd other dimensions
        raise RequestError(f"shape {show_shape(shape)} cannot be allocated ({exc}); send realistic dimensions",
                           field=field.rsplit(".", 1)[0] + ".shape") from None

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
        raise RequestError(f"{locate(k, dims, field)} is {describe(values[k])}, outside the {datatype} range "
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
        k = next((k for k, v in enumerate(values) if not fits_float(v)), None)
        if k is None:  # only a narrower float overflowed, and warnings are errors here
            with np.errstate(over="ignore"):
                array = np.asarray(values, dtype=dtype)
            _check_float_overflow(values, dims, array, datatype, field)
        bounds = f"(±{float(np.finfo(dtype).max):g})"
    if k is None:
        raise RequestError(f"{field} could not be read as {datatype}; send {_NEEDS[datatype][0]} that fit it",
                           field=field)
    raise RequestError(f"{locate(k, dims, field)} is {describe(values[k])}, outside the {datatype} range "
                       f"{bounds}; send values in range or declare a datatype that holds them (INT64, or FP64 "
                       "for huge magnitudes)", field=field)

def _raise_bad_element(values: list, dims: list[int], datatype: str, field: str) -> None:
    """Name the first element whose JSON type the datatype does not accept, and what to send instead."""
    allowed = _JSON_TYPES[datatype]
    k = next(k for k, v in enumerate(values) if type(v) not in allowed)
    needs, fix = _NEEDS[datatype]
    raise RequestError(f"{locate(k, dims, field)} is {describe(values[k])}, but datatype {datatype} needs "
                       f"{needs}; {fix}", field=field)

# --- responses ---

def tensor_from_array(name: str, array: np.ndarray) -> dict:
    """A V2 output tensor; the datatype comes from the dtype so clients can rebuild the array exactly."""
    array = np.asarray(array)
    datatype = datatype_of(array.dtype, name)
    flat = array.ravel()  # C order: the row-major layout V2 specifies, whatever the array's strides
    data = _texts(flat.tolist()) if datatype == "BYTES" else flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}

def _texts(values: list) -> list:
    """BYTES travel as JSON strings: keep str, decode bytes as UTF-8, str() anything else."""
    if set(map(type, values)) <= {str}:
        return values
    return [v if type(v) is str else bytes(v).decode() if isinstance(v, (bytes, bytearray)) else str(v)
            for v in values]

def encode_infer_response(result: InferenceResult) -> bytes:
    """The V2 JSON response body, every output's values inline."""
    return json_bytes(response_header(result, {}))

def response_header(result: InferenceResult, binary_sizes: dict[str, int]) -> dict:
    """The response object; outputs named in ``binary_sizes`` carry that size instead of their data."""
    body: dict[str, Any] = {"model_name": result.model_name}
    if result.model_version is not None:
        body["model_version"] = result.model_version
    if result.request.id is not None:
        body["id"] = result.request.id
    if result.parameters:
        body["parameters"] = dict(result.parameters)
    body["outputs"] = [
        _binary_output(name, array, binary_sizes[name]) if name in binary_sizes else tensor_from_array(name, array)
        for name, array in result.outputs.items()
    ]
    return body

def _binary_output(name: str, array: np.ndarray, size: int) -> dict:
    return {"name": name, "datatype": datatype_of(array.dtype, name), "shape": list(array.shape),
            "parameters": {"binary_data_size": size}}