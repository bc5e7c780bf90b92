"""Codec for the V2 REST binary tensor extension (KServe / Triton): tensor bytes after a JSON header.

A request with the ``Inference-Header-Content-Length`` header is that many bytes of V2 JSON
followed by the data of every input that carries ``parameters.binary_data_size``, in the order
those inputs appear. Outputs go back the same way when the client asks for it, for all outputs
(``parameters.binary_data_output``) or one by one (``outputs[i].parameters.binary_data``); the
response then carries the header too. JSON and binary inputs mix freely in one request.

This is the codec of the V2 ``/infer`` route: a request without the header, that wants no binary
output, is plain V2 JSON and takes ``v2_json``'s path unchanged.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from modelpool.deployments.codecs import v2_json
from modelpool.deployments.codecs.base import JSON, Encoded
from modelpool.deployments.codecs.json_values import describe, json_bytes
from modelpool.deployments.codecs.raw_tensors import array_from_bytes, array_to_bytes
from modelpool.deployments.datatypes import V2_DATATYPES, datatype_of
from modelpool.deployments.errors import RequestError
from modelpool.deployments.tensors import InferenceRequest, InferenceResult

__all__ = ["HEADER", "MEDIA_TYPE", "decode", "encode", "wants_binary_output", "client_request", "client_response"]

HEADER = "inference-header-content-length"
MEDIA_TYPE = "application/octet-stream"
_FIELD = "Inference-Header-Content-Length"


def decode(body: bytes, headers: Mapping[str, str]) -> InferenceRequest:
    """Split the body at the declared JSON length and read each binary input from what follows."""
    declared = headers.get(HEADER)
    if declared is None:
        return v2_json.parse_infer_request(body)
    json_length = _json_length(declared, len(body))
    section = _BinarySection(memoryview(body)[json_length:])
    request = v2_json.parse_infer_request(body[:json_length], section.read)
    section.finish()
    return request


def _json_length(declared: str, body_size: int) -> int:
    if not declared.strip().isdigit():
        raise RequestError(f"the {_FIELD} header is {describe(declared)}; send the byte length of the JSON part "
                           "as a whole number", field=_FIELD)
    length = int(declared)
    if length > body_size:
        raise RequestError(f"the {_FIELD} header says the JSON part has {length} bytes, but the body has only "
                           f"{body_size}; send the JSON's byte length (not its character count) and the whole body",
                           field=_FIELD)
    if length == 0:
        raise RequestError(f"the {_FIELD} header is 0; the body must start with the V2 JSON request, and the "
                           "header gives its byte length", field=_FIELD)
    return length


class _BinarySection:
    """The bytes after the JSON, handed out to inputs in order; what is left over is an error too."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0
        self.sizes: list[str] = []

    def read(self, size: Any, datatype: str, shape: tuple[int, ...], field: str) -> np.ndarray:
        if type(size) is not int or size < 0:
            raise RequestError(f"{field} is {describe(size)}; send the byte length of this input's binary data "
                               "as a non-negative integer", field=field)
        end = self.offset + size
        if end > len(self.data):
            remaining = len(self.data) - self.offset
            raise RequestError(f"{field} is {size}, but only {remaining} bytes of binary data remain after the "
                               f"JSON and the inputs before it; the body is cut short, or {_FIELD} or a "
                               "binary_data_size is wrong", field=field)
        chunk = self.data[self.offset:end]
        self.offset = end
        self.sizes.append(field)
        return array_from_bytes(chunk, datatype, shape, field)

    def finish(self) -> None:
        extra = len(self.data) - self.offset
        if extra:
            raise RequestError(f"{extra} bytes follow the binary data of the inputs with binary_data_size "
                               f"({len(self.sizes)} of them, {self.offset} bytes); every byte after the JSON must "
                               f"belong to an input: check {_FIELD} and each binary_data_size", field="body")


def wants_binary_output(request: InferenceRequest) -> bool:
    return request.binary_output or any(output.binary for output in request.outputs or ())


def encode(result: InferenceResult) -> Encoded:
    """Binary outputs after the JSON, with the header that says where the JSON ends; plain JSON otherwise."""
    if not wants_binary_output(result.request):
        return Encoded(v2_json.encode_infer_response(result), JSON)
    sizes: dict[str, int] = {}
    parts: list[bytes] = []
    for name, array in result.outputs.items():
        if result.request.wants_binary(name):
            data = array_to_bytes(array, name)
            sizes[name] = len(data)
            parts.append(data)
    header = json_bytes(v2_json.response_header(result, sizes))
    return Encoded(header + b"".join(parts), MEDIA_TYPE, {_FIELD: str(len(header))})



# --- the client side, for a graph calling a model replica's own port (modelpool.deployments.node_ports) ---------


def client_request(arrays: Mapping[str, np.ndarray], outputs: Any = None) -> tuple[bytes, int]:
    """Named arrays as a binary V2 request asking for binary outputs: (body, length of its JSON part)."""
    inputs, parts = [], []
    for name, array in arrays.items():
        array = np.asarray(array)
        data = array_to_bytes(array, name)
        inputs.append({"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype, name),
                       "parameters": {"binary_data_size": len(data)}})
        parts.append(data)
    request: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if outputs:
        request["outputs"] = [{"name": name} for name in outputs]
    header = json_bytes(request)
    return header + b"".join(parts), len(header)


def client_response(body: bytes, json_length: Any) -> dict[str, np.ndarray]:
    """The outputs of a V2 answer (binary, or plain JSON when ``json_length`` is None) as named arrays."""
    length = int(json_length) if json_length is not None else len(body)
    answer = json.loads(body[:length])
    arrays: dict[str, np.ndarray] = {}
    offset = length
    for i, output in enumerate(answer.get("outputs", [])):
        shape, datatype = tuple(output["shape"]), output["datatype"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.asarray(output["data"], dtype=V2_DATATYPES[datatype]).reshape(shape)
            continue
        arrays[output["name"]] = array_from_bytes(memoryview(body)[offset:offset + size], datatype, shape,
                                                  f"outputs[{i}]")
        offset += size
    return arrays
