"""Codec for the Open Inference Protocol V2 over gRPC: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

Tensor data arrives either as ``raw_input_contents`` (one bytes entry per input, in input order,
in the raw layout of ``raw_tensors``: what tritonclient.grpc sends) or as the typed
``contents`` fields (what KServe's and MLServer's clients may send); a request uses one way for
all its inputs. Outputs always go back as ``raw_output_contents``, as Triton answers, which every
V2 gRPC client reads. Errors are :class:`RequestError` like every codec's; the gRPC entry point
turns their HTTP status into a gRPC status with :func:`grpc_status`.
"""
from __future__ import annotations

import json

import math
from typing import Any, Iterable, Mapping, Optional

import grpc
import numpy as np

from modelpool.deployments.codecs.raw_tensors import array_from_bytes, array_to_bytes, text_or_bytes
from modelpool.deployments.codecs.v2_json import MAX_TENSORS, check_datatype, check_shape
from modelpool.deployments.errors import RequestError
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.datatypes import V2_DATATYPES, datatype_of
from modelpool.deployments.tensors import InferenceRequest, InferenceResult, RequestedOutput, Tensor

__all__ = ["decode", "encode", "grpc_status", "parameters_from_proto"]

# The typed contents field each datatype travels in (FP16 has none: it must be sent raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = sorted(set(CONTENTS_FIELD.values()))

# HTTP statuses the layers below raise, as the gRPC codes V2 clients expect for them.
_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(http_status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP status (any other 4xx is INVALID_ARGUMENT, any 5xx INTERNAL)."""
    code = _GRPC_CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL


def decode(message: pb.ModelInferRequest) -> InferenceRequest:
    """Validate and decode the tensors of a ModelInferRequest (the model it names is the caller's business)."""
    count = len(message.inputs)
    if not count:
        raise RequestError("inputs is empty; a ModelInferRequest needs at least one input tensor", field="inputs")
    if count > MAX_TENSORS:
        raise RequestError(f"inputs has {count} tensors; at most {MAX_TENSORS} are accepted, so put values of the "
                           "same datatype into one tensor with a wider shape", field="inputs")
    raw = message.raw_input_contents
    if raw and len(raw) != count:
        raise RequestError(f"raw_input_contents has {len(raw)} entries for {count} inputs; send one entry per input, "
                           "in input order, or use each input's contents instead", field="raw_input_contents")
    seen: dict[str, int] = {}
    tensors: list[Tensor] = []
    for i, tensor in enumerate(message.inputs):
        decoded = _decode_input(tensor, i, raw[i] if raw else None)
        if decoded.name in seen:
            raise RequestError(f"inputs[{i}].name is {decoded.name!r}, like inputs[{seen[decoded.name]}].name; "
                               "give every input a unique name", field=f"inputs[{i}].name")
        seen[decoded.name] = i
        tensors.append(decoded)
    return InferenceRequest(id=message.id or None, inputs=tuple(tensors),
                            parameters=parameters_from_proto(message.parameters),
                            outputs=_requested_outputs(message.outputs))


def _decode_input(tensor: Any, i: int, raw: Optional[bytes]) -> Tensor:
    where = f"inputs[{i}]"
    if not tensor.name:
        raise RequestError(f"{where}.name is empty; name the input, e.g. \"input-0\"", field=f"{where}.name")
    datatype = check_datatype(tensor.datatype or None, f"{where}.datatype")
    shape = check_shape(list(tensor.shape), f"{where}.shape")
    filled = [name for name in _ALL_CONTENTS if len(getattr(tensor.contents, name))]
    if raw is not None:
        if filled:
            raise RequestError(f"{where}.contents.{filled[0]} is set although the request uses raw_input_contents; "
                               "send every input's data one way", field=f"{where}.contents")
        data = array_from_bytes(raw, datatype, shape, f"raw_input_contents[{i}]")
    else:
        data = _typed_contents(tensor.contents, filled, datatype, shape, where)
    return Tensor(name=tensor.name, datatype=datatype, shape=shape, data=data,
                  parameters=parameters_from_proto(tensor.parameters))


def _typed_contents(contents: Any, filled: list[str], datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Typed contents: only the field of the input's datatype, with one value per element, in range."""
    expected_field = CONTENTS_FIELD.get(datatype)
    if expected_field is None:
        raise RequestError(f"{where} is {datatype}, which has no typed contents field; send its data in "
                           "raw_input_contents (little-endian, as tritonclient does)", field=f"{where}.contents")
    wrong = [name for name in filled if name != expected_field]
    if wrong:
        raise RequestError(f"{where}.contents.{wrong[0]} is set, but a {datatype} input's values go in "
                           f"contents.{expected_field}", field=f"{where}.contents.{wrong[0]}")
    field = f"{where}.contents.{expected_field}"
    values = getattr(contents, expected_field)
    expected = math.prod(shape)
    if len(values) != expected:
        raise RequestError(f"{field} has {len(values)} values but shape {list(shape)} needs {expected}; send exactly "
                           "that many (row-major) or fix the shape", field=field)
    if datatype == "BYTES":
        flat = np.empty(expected, dtype=object)
        flat[:] = [text_or_bytes(v) for v in values]
    else:
        flat = _in_range(np.asarray(values), datatype, field)
    try:
        return flat.reshape(shape)
    except (ValueError, OverflowError) as exc:
        raise RequestError(f"shape {list(shape)} cannot be allocated ({exc}); send realistic dimensions",
                           field=f"{where}.shape") from None


def _in_range(values: np.ndarray, datatype: str, field: str) -> np.ndarray:
    """int_contents carries INT8/INT16 in int32 (and uint_contents UINT8/UINT16): refuse what does not fit."""
    dtype = V2_DATATYPES[datatype]
    if dtype.kind in "iu" and values.size and values.dtype.itemsize > dtype.itemsize:
        info = np.iinfo(dtype)
        outside = np.flatnonzero((values < info.min) | (values > info.max))
        if outside.size:
            k = int(outside[0])
            raise RequestError(f"{field}[{k}] is {int(values[k])}, outside the {datatype} range [{info.min}, "
                               f"{info.max}]; send values in range or declare a wider datatype", field=field)
    return values.astype(dtype)


def _requested_outputs(outputs: Iterable[Any]) -> Optional[tuple[RequestedOutput, ...]]:
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, output in enumerate(outputs):
        if i >= MAX_TENSORS:
            raise RequestError(f"outputs lists more than {MAX_TENSORS} outputs; ask for fewer, or for none to get "
                               "every output", field="outputs")
        where = f"outputs[{i}]"
        if not output.name:
            raise RequestError(f"{where}.name is empty; name a model output", field=f"{where}.name")
        if output.name in seen:
            raise RequestError(f"{where}.name is {output.name!r}, which is already requested; list each output once",
                               field=f"{where}.name")
        if "classification" in output.parameters:
            raise RequestError(f"{where}.parameters.classification: the classification extension is not supported; "
                               "ask for the model's predict_proba output and take the top classes from it",
                               field=f"{where}.parameters.classification")
        requested.append(RequestedOutput(output.name))
        seen.add(output.name)
    return tuple(requested) or None


def parameters_from_proto(parameters: Mapping[str, Any]) -> dict:
    """InferParameter (or ModelRepositoryParameter) map -> plain values (the one field of each oneof that is set)."""
    plain: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        plain[key] = None if choice is None else getattr(parameter, choice)
    return plain


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """A V2 parameter: bool, int64, double or string (anything else as its JSON text)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value if isinstance(value, str) else json.dumps(value)


def encode(result: InferenceResult) -> pb.ModelInferResponse:
    """Every output's data as raw_output_contents, in the order the outputs are listed."""
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version or "",
                                     id=result.request.id or "")
    for key, value in result.parameters.items():
        set_parameter(response.parameters[key], value)
    for name, array in result.outputs.items():
        array = np.asarray(array)
        response.outputs.add(name=name, datatype=datatype_of(array.dtype, name), shape=array.shape)
        response.raw_output_contents.append(array_to_bytes(array, name))
    return response
