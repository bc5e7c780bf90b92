"""Codec for KServe's V1 protocol (TensorFlow Serving's REST form), served below ``/v1``.

| call | path | answer |
| --- | --- | --- |
| list models | ``GET /v1/models`` | ``{"models": [names]}`` |
| model ready | ``GET /v1/models/{m}`` | ``{"name": m, "ready": true}`` (503 while it cannot answer) |
| predict | ``POST /v1/models/{m}:predict``, ``{"instances": rows}`` (or ``"inputs"``) | ``{"predictions": [...]}`` |
| explain | ``POST /v1/models/{m}:explain`` | 501: modelpool's handlers have no explainer |

A version is named as TensorFlow Serving names it: ``/v1/models/{m}/versions/{v}[:predict]``. The
body is the plain JSON form (``plain_json``), so these requests batch with every other. Errors are
KServe's ``{"error": ...}``, with modelpool's ``field`` added.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from modelpool.deployments.codecs import plain_json
from modelpool.deployments.codecs.base import ProtocolCall
from modelpool.deployments.codecs.json_values import json_bytes
from modelpool.deployments.errors import RequestError

__all__ = ["NAME", "ROUTE_PREFIX", "parse_call", "decode", "encode", "ready_body", "models_body", "no_explainer",
           "error_body"]

NAME = "kserve-v1"
ROUTE_PREFIX = "/v1"
_ROUTES = ("KServe V1 routes are GET /v1/models, GET /v1/models/{name}[/versions/{version}] and "
           "POST /v1/models/{name}[/versions/{version}]:predict (or :explain)")
_VERBS = {"": "ready", "predict": "infer", "explain": "explain"}

decode = plain_json.decode
encode = plain_json.encode


def parse_call(path: str, method: str) -> ProtocolCall:
    """The path below ``/v1``; 404 naming the routes for any other, 405 for the wrong method."""
    if path == "/models":
        call = ProtocolCall(None, None, "models")
    else:
        call = _model_call(path)
    expected = "GET" if call.action in ("models", "ready") else "POST"
    if method != expected:
        raise RequestError(f"method {method} not allowed here; use {expected}", status=405, field="method")
    return call


def _model_call(path: str) -> ProtocolCall:
    if not path.startswith("/models/"):
        raise RequestError(f"no route '{ROUTE_PREFIX}{path}'; {_ROUTES}", status=404, field="path")
    resource, colon, verb = path[len("/models/"):].partition(":")
    if verb not in _VERBS or (colon and not verb):
        raise RequestError(f"unknown verb ':{verb}' in '{ROUTE_PREFIX}{path}'; use :predict or :explain", status=404,
                           field="path")
    parts = resource.split("/")
    if len(parts) == 1 and parts[0]:
        return ProtocolCall(parts[0], None, _VERBS[verb])
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return ProtocolCall(parts[0], parts[2], _VERBS[verb])
    raise RequestError(f"no route '{ROUTE_PREFIX}{path}'; {_ROUTES}", status=404, field="path")


def ready_body(name: str) -> bytes:
    return json_bytes({"name": name, "ready": True})


def models_body(names: Iterable[str]) -> bytes:
    return json_bytes({"models": list(names)})


def no_explainer(name: str, version: Optional[str]) -> RequestError:
    """501, as KServe answers a model with no explainer."""
    return RequestError(f"model '{name}' version '{version}' has no explainer (modelpool's handler contract has no "
                        f"explain step); use :predict", status=501, field="path")


def error_body(status: int, error: Mapping[str, Any]) -> bytes:
    """KServe answers ``{"error": message}``: modelpool's own shape already, ``field`` included."""
    return json_bytes(dict(error))
