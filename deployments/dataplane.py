"""The data plane: decoded requests in, output arrays out, with no transport in sight.

REST (JSON, binary, plain JSON) and gRPC share it: each entry point decodes with its codec, calls
:meth:`LoadedModel.infer <modelpool.deployments.loaded_model.LoadedModel.infer>`, which runs the functions
here around the batcher, and encodes the :class:`~modelpool.deployments.tensors.InferenceResult` it gets.
This module checks what every transport must check the same way: that inputs are rows of one
batch that fit the model's declared shape, and that requested outputs exist.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from modelpool.deployments.codecs.json_values import describe
from modelpool.deployments.errors import RequestError
from modelpool.deployments.datatypes import datatype_of
from modelpool.deployments.tensors import InferenceRequest, RequestedOutput, Tensor

__all__ = ["ModelRequest", "model_request", "message_request", "check_declared_shape", "batch_key", "concatenate", "split_outputs",
           "select_outputs"]


@dataclass(frozen=True)
class ModelRequest:
    """What the batcher holds: named input arrays that share their first (row) dimension."""

    inputs: dict[str, np.ndarray]
    rows: int
    requested_outputs: Optional[tuple[str, ...]] = None
    trace: Any = None  # the traced request's span context (``tracing``): the batch's span links it


def model_request(request: InferenceRequest, manifest_inputs: list) -> ModelRequest:
    """Check that the tensors are rows of one batch and fit the model's declared input."""
    rows: Optional[int] = None
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        data = tensor.data
        if data.ndim == 0:
            raise RequestError(f"input '{tensor.name}' is a scalar; send shape [rows, ...] with one row per instance",
                               field=f"inputs[{i}].shape")
        if rows is None:
            rows = data.shape[0]
        elif data.shape[0] != rows:
            raise RequestError(f"input '{tensor.name}' has {data.shape[0]} rows but the first input has {rows}; "
                               "every input needs the same first dimension", field=f"inputs[{i}].shape")
        inputs[tensor.name] = data
    if len(manifest_inputs) == 1 and len(request.inputs) == 1:
        check_declared_shape(request.inputs[0].data, manifest_inputs[0], "inputs[0].shape")
    return ModelRequest(inputs=inputs, rows=rows or 0, requested_outputs=request.requested_outputs)


def check_declared_shape(data: np.ndarray, declared: Any, field: str) -> None:
    shape = list(declared.shape or [])
    if not shape:
        return
    expected_tail = shape[1:]
    actual_tail = list(data.shape[1:])
    fits = len(expected_tail) == len(actual_tail) and all(e in (-1, a) for e, a in zip(expected_tail, actual_tail))
    if not fits:
        raise RequestError(f"the model expects input shape {shape} (rows first) but got {list(data.shape)}; "
                           f"send rows of {expected_tail or 'scalars'}", status=422, field=field)


def batch_key(request: ModelRequest) -> tuple:
    """Requests share a model call only when their arrays concatenate and they want the same outputs."""
    return (tuple((name, array.shape[1:], array.dtype.str) for name, array in request.inputs.items()),
            request.requested_outputs)


def concatenate(requests: list[ModelRequest]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return requests[0].inputs
    return {name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs}


def split_outputs(outputs: dict[str, np.ndarray], requests: list[ModelRequest]) -> list[dict[str, np.ndarray]]:
    if len(requests) == 1:
        return [outputs]
    results: list[dict[str, np.ndarray]] = []
    start = 0
    for request in requests:
        stop = start + request.rows
        results.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return results


def select_outputs(outputs: dict[str, np.ndarray], request: InferenceRequest, model_name: str) -> dict[str, np.ndarray]:
    """The outputs to send, in the order the client listed them (all, in the model's order, when it listed none)."""
    wanted = request.requested_outputs
    if wanted is None:
        return outputs
    for i, name in enumerate(wanted):
        if name not in outputs:
            available = ", ".join(json.dumps(n) for n in outputs) or "none"
            raise RequestError(f"outputs[{i}].name is {describe(name)}, which is not an output of model {model_name}; "
                               f"available outputs: {available}. Ask for one of those or leave \"outputs\" out to get "
                               "all", field=f"outputs[{i}].name")
    return {name: outputs[name] for name in wanted}


def message_request(message: dict[str, np.ndarray], outputs: Optional[tuple[str, ...]]) -> InferenceRequest:
    """A graph node's message (named arrays) as the decoded request a model's batcher takes."""
    tensors = []
    for name, data in message.items():
        array = np.asarray(data)
        try:
            datatype = datatype_of(array.dtype, name)
        except ValueError as exc:
            raise RequestError(str(exc), status=400, field=f"inputs.{name}") from None
        tensors.append(Tensor(name=name, datatype=datatype, shape=tuple(array.shape), data=array, parameters={}))
    wanted = None if outputs is None else tuple(RequestedOutput(name) for name in outputs)
    return InferenceRequest(id=None, inputs=tuple(tensors), parameters={}, outputs=wanted)
