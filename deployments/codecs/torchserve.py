"""Codec for TorchServe's inference API: ``POST|PUT /predictions/{model}[/{version}]``, bodies as TorchServe takes them.

TorchServe hands its handler the request body (or each ``data``/``body`` form field) and answers each
request with that request's element of the handler's output. Here the body becomes rows of the
model's one input (``input-0``), so the data plane batches these requests with V2 ones:

| body (any method TorchServe's docs use: ``-T`` is a PUT, ``-F``/``-d``/``--data-binary`` a POST) | rows |
| --- | --- |
| a JSON array of values, ``[5.1, 3.5, 1.4, 0.2]`` | one |
| a JSON array of arrays, or ``{"instances": rows}`` (``"inputs"`` too) | one per array |
| a JSON number or string | one, of one value |
| text of comma-separated numbers (``-T rows.csv``), a first line of names skipped | one per line |
| ``text/csv`` with text cells | one per line, strings kept |
| any other text (``-T sample_text.txt``) | one holding the whole text |
| bytes that are not UTF-8 text (``-T kitten.jpg``) | one holding the bytes (BYTES) |
| a form (``-F data=@file``): each ``data``/``body`` field as above, in order | all their rows |
| a url-encoded body (what ``curl -d`` sends) with no ``data`` field: the body itself, as above | as above |

One row in, its prediction out, bare (``0``, or ``[0.97, 0.02, 0.01]``); several rows in, a JSON list of
predictions out. The prediction is the model's ``predict`` output (else its first). A string comes back
as text, as TorchServe sends a handler's ``str``. Errors have TorchServe's ``{"code", "type", "message"}``
with modelpool's ``field`` added.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from modelpool.deployments.codecs.base import Encoded, ProtocolCall
from modelpool.deployments.codecs.form_data import media_type, multipart_fields, urlencoded_fields
from modelpool.deployments.codecs.json_values import ARRAY_TYPES, describe, json_bytes, json_error_reason
from modelpool.deployments.codecs.plain_json import INPUT_NAME, parse_predict_request, rows_array
from modelpool.deployments.errors import RequestError
from modelpool.deployments.datatypes import datatype_of
from modelpool.deployments.tensors import InferenceRequest, InferenceResult, Tensor

__all__ = ["NAME", "ROUTE_PREFIX", "parse_call", "decode", "encode", "error_body"]

NAME = "torchserve"
ROUTE_PREFIX = "/predictions"
SINGLE_ROW = "torchserve_single_row"  # request parameter: one instance was sent, so one prediction goes back
INPUT_FIELDS = ("data", "body")  # the form fields TorchServe's own handlers read
METHODS = ("POST", "PUT")  # ``curl -T file`` uploads with PUT
TEXT = "text/plain; charset=utf-8"
_EXAMPLE = "[5.1, 3.5, 1.4, 0.2]"
_SHAPES = f"one row as a JSON array ({_EXAMPLE}), rows as an array of arrays or as {{\"instances\": rows}}"
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_FEATURE_TYPES = (int, float, bool, str)


def parse_call(path: str, method: str) -> ProtocolCall:
    """``/{model}[/{version}]`` below ``/predictions``; 404 for any other path, 405 for other methods."""
    parts = path.removeprefix("/").split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise RequestError(f"no TorchServe route '{ROUTE_PREFIX}{path}'; use {ROUTE_PREFIX}/{{model_name}} or "
                           f"{ROUTE_PREFIX}/{{model_name}}/{{version}}", status=404, field="path")
    if method not in METHODS:
        raise RequestError(f"method {method} not allowed here; use POST (or PUT, as curl -T sends)", status=405,
                           field="method")
    return ProtocolCall(parts[0], parts[1] if len(parts) == 2 else None, "infer")


@dataclass(frozen=True)
class _Rows:
    """Rows read from one body or form field, and whether the client sent one instance rather than a list."""

    array: np.ndarray
    single: bool


def decode(body: Union[bytes, str], headers: Optional[Mapping[str, str]] = None) -> InferenceRequest:
    """The body's rows as the one input tensor; whether one instance was sent travels in ``parameters``."""
    content_type = (headers or {}).get("content-type", "")
    payload = body.encode() if isinstance(body, str) else bytes(body)
    media = media_type(content_type)
    if media == "multipart/form-data":
        fields = [f for f in multipart_fields(payload, content_type) if f.name in INPUT_FIELDS]
        if not fields:
            raise RequestError("the form has no 'data' field; send the input as one, e.g. curl -F \"data=@input.json\"",
                               field="data")
        parts = [_rows(f.payload, f.content_type, f.name) for f in fields]
    elif media == "application/x-www-form-urlencoded":  # curl -d sends this type whatever the body is
        fields = [f for f in urlencoded_fields(payload) if f.name in INPUT_FIELDS]
        parts = [_rows(f.payload, "", f.name) for f in fields] or [_rows(payload, "", "body")]
    else:
        parts = [_rows(payload, content_type, "body")]
    rows = parts[0].array if len(parts) == 1 else _concatenate(parts)
    tensor = Tensor(INPUT_NAME, datatype_of(rows.dtype, INPUT_NAME), rows.shape, rows, {})
    return InferenceRequest(id=None, inputs=(tensor,), parameters={SINGLE_ROW: len(parts) == 1 and parts[0].single})


def _rows(payload: bytes, content_type: str, field: str) -> _Rows:
    """One body or form field -> rows, by its media type first and its content when that says little."""
    media = media_type(content_type)
    if media == "application/json" or media.endswith("+json"):
        return _json_rows(_load_json(payload, field), field)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return _Rows(_one(payload), True)  # an image, audio...: the handler gets the bytes
    stripped = text.strip()
    if not stripped:
        raise RequestError(f"{field} is empty; send {_SHAPES}", field=field)
    if stripped[0] in "[{" and not media.startswith("text/"):
        return _json_rows(_load_json(payload, field), field)  # JSON sent without its type (curl -T, curl -d)
    lines = [line for line in stripped.splitlines() if line.strip()]
    numeric = _numeric_rows(lines, field)
    if numeric is not None:
        return numeric
    if media == "text/csv":
        rows = [[_number_or_text(cell) for cell in row] for row in csv.reader(lines)]
        return _Rows(rows_array(rows, field), len(rows) == 1)
    return _Rows(_one(text), True)


def _load_json(payload: bytes, field: str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"{field} is not valid JSON ({json_error_reason(exc)}); send {_SHAPES}",
                           field=field) from None


def _json_rows(value: Any, field: str) -> _Rows:
    kind = type(value)
    if kind is dict:
        if "instances" in value or "inputs" in value:
            return _Rows(parse_predict_request(value), False)
        raise RequestError(f'{field} is a JSON object without "instances"; send {_SHAPES}', field=field)
    if kind in ARRAY_TYPES:
        if not value:
            raise RequestError(f"{field} is an empty array; send {_SHAPES}", field=field)
        if any(type(v) in ARRAY_TYPES for v in value):
            return _Rows(rows_array(value, field), False)
        return _Rows(rows_array(value, field).reshape(1, -1), True)  # the values of one row: errors name body[k]
    if kind in _FEATURE_TYPES:
        return _Rows(rows_array([value], field), True)
    raise RequestError(f"{field} is {describe(value)}; send {_SHAPES}", field=field)


def _numeric_rows(lines: list[str], field: str) -> Optional[_Rows]:
    """Comma-separated numbers, a line per row (a first line of column names is skipped); None if not that."""
    cells = [line.split(",") for line in lines]
    numeric = [all(_NUMBER.fullmatch(cell.strip()) for cell in row) for row in cells]
    if len(cells) > 1 and not numeric[0] and all(numeric[1:]):
        cells, numeric = cells[1:], numeric[1:]  # a header line, as the CLI's --csv skips it
    if not all(numeric):
        return None
    width = len(cells[0])
    for k, row in enumerate(cells):
        if len(row) != width:
            raise RequestError(f"line {k + 1} of {field} has {len(row)} values but line 1 has {width}; every line "
                               "is one row and needs the same number of values", field=field)
    rows = [[_number(cell) for cell in row] for row in cells]
    return _Rows(rows_array(rows, field), len(rows) == 1)


def _number(cell: str) -> Union[int, float]:
    cell = cell.strip()
    return int(cell) if _INTEGER.fullmatch(cell) else float(cell)


def _number_or_text(cell: str) -> Union[int, float, str]:
    return _number(cell) if _NUMBER.fullmatch(cell.strip()) else cell


def _one(value: Union[str, bytes]) -> np.ndarray:
    """A single row holding one value (text or bytes): a BYTES tensor of shape [1, 1]."""
    array = np.empty((1, 1), dtype=object)
    array[0, 0] = value
    return array


def _concatenate(parts: list[_Rows]) -> np.ndarray:
    """Several form fields are rows of one request: they must have the same width and kind of values."""
    first = parts[0].array
    for k, part in enumerate(parts[1:], start=1):
        if part.array.shape[1:] != first.shape[1:] or (part.array.dtype == object) != (first.dtype == object):
            raise RequestError(f"form field {k} holds rows of {part.array.shape[1]} {_kind(part.array)} values but "
                               f"field 0 holds rows of {first.shape[1]} {_kind(first)} values; send fields of the "
                               "same kind and width, or one request per input", field="data")
    return np.concatenate([part.array for part in parts])


def _kind(array: np.ndarray) -> str:
    return "text or binary" if array.dtype == object else "numeric"


def encode(result: InferenceResult) -> Encoded:
    """One row sent: its prediction bare; several: a JSON list. Text goes back as text, as TorchServe sends a str."""
    outputs = result.outputs
    predictions = outputs["predict"] if "predict" in outputs else next(iter(outputs.values()))
    value: Any = predictions
    if result.request.parameters.get(SINGLE_ROW) and len(predictions) == 1:
        value = predictions[0]
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, str):
        return Encoded(value.encode(), TEXT)
    if isinstance(value, (bytes, bytearray)):
        return Encoded(bytes(value), "application/octet-stream")
    return Encoded(json_bytes(value))


# TorchServe's exception names, which its clients show and some match on
_TYPES = {400: "BadRequestException", 401: "InvalidKeyException", 404: "ModelNotFoundException",
          405: "MethodNotAllowedException", 408: "RequestTimeoutException", 500: "InternalServerException",
          503: "ServiceUnavailableException", 504: "RequestTimeoutException"}


def error_type(status: int, field: Optional[str]) -> str:
    if status == 404 and field == "version":
        return "ModelVersionNotFoundException"
    if status == 404 and field == "path":
        return "ResourceNotFoundException"
    return _TYPES.get(status, "BadRequestException" if status < 500 else "InternalServerException")


def error_body(status: int, error: Mapping[str, Any]) -> bytes:
    """modelpool's ``{"error", "field"}`` in TorchServe's ``{"code", "type", "message"}`` (``field`` kept)."""
    body: dict[str, Any] = {"code": status, "type": error_type(status, error.get("field")),
                            "message": error.get("error", "")}
    body.update((key, value) for key, value in error.items() if key != "error")
    return json_bytes(body)
