"""The inference APIs in the OpenAPI description that ``OPTIONS /`` answers, beside management.

MMS and TorchServe describe inference and management in OpenAPI; modelpool serves both on one port,
so one document lists both. The inference routes are not FastAPI routes (model replicas and the
protocol fronts serve them), so they are written here, from the wire formats the codecs read:

- Open Inference Protocol V2 REST (``/v2/models/...``: infer, the plain-JSON predict, metadata, ready)
- TorchServe's inference API (``/predictions/{model_name}[/{model_version}]``; ``/ping`` is management's)
- KServe V1 (``/v1/models``, ``/v1/models/{model_name}[:predict|:explain]``, versions as TF Serving names them)

Every model route takes the inference token when the operator set one (``--inference-token``), else
nothing: ``security: [{}, {"inference": []}]``.
"""
from __future__ import annotations

from typing import Any

TAG_V2, TAG_TORCHSERVE, TAG_KSERVE = "inference (V2)", "inference (TorchServe)", "inference (KServe V1)"
INFERENCE_SECURITY = [{}, {"inference": []}]
SECURITY_SCHEME = {"type": "http", "scheme": "bearer",
                   "description": "only when the operator set --inference-token (the management token works too)"}

_PARAMETERS = {"type": "object", "additionalProperties": True, "description": "key/value parameters"}
_DATATYPE = {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                        "INT64", "FP16", "FP32", "FP64", "BYTES"]}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_DATA = {"type": "array", "items": {}, "description": "row-major values, flat or nested as the shape"}
SCHEMAS: dict[str, dict[str, Any]] = {
    "V2RequestInput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": _SHAPE, "datatype": _DATATYPE, "parameters": _PARAMETERS, "data": _DATA}},
    "V2RequestOutput": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": _PARAMETERS}},
    "V2InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2RequestInput"}},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2RequestOutput"}}}},
    "V2ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": _SHAPE, "datatype": _DATATYPE, "parameters": _PARAMETERS, "data": _DATA}},
    "V2InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2ResponseOutput"}}}},
    "V2TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": _DATATYPE, "shape": _SHAPE}},
    "V2ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2TensorMetadata"}},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2TensorMetadata"}}}},
    "V2ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}}},
    "Instances": {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "items": {}, "description": "rows: arrays of feature values (or objects)"}}},
    "Predictions": {"type": "object", "required": ["predictions"], "properties": {
        "predictions": {"type": "array", "items": {}}}},
    "TorchServeError": {"type": "object", "required": ["code", "type", "message"], "properties": {
        "code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"},
        "field": {"type": "string", "nullable": True}}},
    "KServeModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "KServeModels": {"type": "object", "required": ["models"], "properties": {
        "models": {"type": "array", "items": {"type": "string"}}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


MODEL = _path_parameter("model_name", "a registered model")
VERSION = _path_parameter("model_version", "one of its versions (without it: the default version)")
_ERROR = _ref("Error")
_STARTING = {**_json("registered, but its workers are starting: retry after the Retry-After header's seconds",
                     _ERROR), "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}}


def _errors(*statuses: int, schema: dict[str, Any] = _ERROR) -> dict[str, Any]:
    texts = {400: "the request is malformed: `field` names what to fix", 401: "the inference token is missing",
             404: "no such model or version: the message lists what is served", 408: "the body came too slowly",
             413: "the body is over --max-body-bytes", 422: "the model cannot take this input",
             500: "the handler raised: its message", 501: "the model has no explainer",
             504: "the model took longer than its response_timeout"}
    answers = {str(status): _json(texts[status], schema) for status in statuses}
    answers["503"] = {**_STARTING, "content": {"application/json": {"schema": schema}}}
    return answers


def _operation(tag: str, summary: str, parameters: list, responses: dict, body: dict | None = None) -> dict:
    operation: dict[str, Any] = {"tags": [tag], "summary": summary, "parameters": parameters,
                                 "security": INFERENCE_SECURITY, "responses": responses}
    if body is not None:
        operation["requestBody"] = body
    return operation


def _v2_paths(base: str, parameters: list) -> dict[str, dict]:
    infer_body = {"required": True, "content": {
        "application/json": {"schema": _ref("V2InferenceRequest")},
        "application/octet-stream": {"schema": {
            "type": "string", "format": "binary", "description": "binary tensor extension: the JSON request, then "
            "the tensors' bytes; Inference-Header-Content-Length gives the JSON's length"}}}}
    return {
        base: {"get": _operation(TAG_V2, "model metadata", parameters,
                                 {"200": _json("inputs, outputs, versions", _ref("V2ModelMetadata")),
                                  **_errors(401, 404)})},
        f"{base}/ready": {"get": _operation(TAG_V2, "model readiness", parameters,
                                            {"200": _json("ready", _ref("V2ModelReady")), **_errors(401, 404)})},
        f"{base}/infer": {"post": _operation(
            TAG_V2, "inference (Open Inference Protocol V2, JSON or binary tensors)", parameters,
            {"200": {"description": "the outputs", "content": {
                "application/json": {"schema": _ref("V2InferenceResponse")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
             **_errors(400, 401, 404, 408, 413, 422, 500, 504)}, infer_body)},
        f"{base}/predict": {"post": _operation(
            TAG_V2, "inference on plain JSON rows", parameters,
            {"200": _json("one prediction per instance", _ref("Predictions")),
             **_errors(400, 401, 404, 408, 413, 422, 500, 504)},
            {"required": True, "content": {"application/json": {"schema": _ref("Instances")}}})},
    }


def _torchserve_operation(parameters: list) -> dict[str, Any]:
    body = {"required": True, "content": {
        "application/json": {"schema": {"description": "a row ([5.1, 3.5, 1.4, 0.2]), rows, or {\"instances\": rows}"}},
        "text/plain": {"schema": {"type": "string", "description": "comma-separated rows, or text for a text model"}},
        "text/csv": {"schema": {"type": "string"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "bytes for the model (an image, ...)"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "data": {"type": "string", "format": "binary"}, "body": {"type": "string", "format": "binary"}}}}}}
    responses = {"200": {"description": "the prediction: bare for one row, a list for several", "content": {
        "application/json": {"schema": {}}, "text/plain": {"schema": {"type": "string"}}}},
        **_errors(400, 401, 404, 408, 413, 422, 500, 504, schema=_ref("TorchServeError"))}
    return _operation(TAG_TORCHSERVE, "inference (TorchServe's inference API)", parameters, responses, body)


def _explanation_operation(parameters: list) -> dict[str, Any]:
    return _operation(TAG_TORCHSERVE, "explanation: 501, modelpool's handlers have no explainer", parameters,
                      _errors(401, 404, 501, schema=_ref("TorchServeError")))


def _kserve_paths() -> dict[str, dict]:
    paths: dict[str, dict] = {"/v1/models": {"get": _operation(
        TAG_KSERVE, "the served models", [], {"200": _json("their names", _ref("KServeModels")), **_errors(401)})}}
    for base, parameters in (("/v1/models/{model_name}", [MODEL]),
                             ("/v1/models/{model_name}/versions/{model_version}", [MODEL, VERSION])):
        paths[base] = {"get": _operation(TAG_KSERVE, "model readiness", parameters,
                                         {"200": _json("ready", _ref("KServeModelReady")), **_errors(401, 404)})}
        paths[f"{base}:predict"] = {"post": _operation(
            TAG_KSERVE, "inference (KServe V1)", parameters,
            {"200": _json("one prediction per instance", _ref("Predictions")),
             **_errors(400, 401, 404, 408, 413, 422, 500, 504)},
            {"required": True, "content": {"application/json": {"schema": _ref("Instances")}}})}
        paths[f"{base}:explain"] = {"post": _operation(
            TAG_KSERVE, "explanation: 501, modelpool's handlers have no explainer", parameters,
            _errors(401, 404, 501), {"required": False, "content": {"application/json": {"schema": _ref("Instances")}}})}
    return paths


def inference_paths() -> dict[str, dict]:
    """Every inference route, as OpenAPI path items."""
    torchserve = _torchserve_operation
    return {
        **_v2_paths("/v2/models/{model_name}", [MODEL]),
        **_v2_paths("/v2/models/{model_name}/versions/{model_version}", [MODEL, VERSION]),
        "/predictions/{model_name}": {"post": torchserve([MODEL]), "put": torchserve([MODEL])},
        "/predictions/{model_name}/{model_version}": {"post": torchserve([MODEL, VERSION]),
                                                      "put": torchserve([MODEL, VERSION])},
        "/explanations/{model_name}": {"post": _explanation_operation([MODEL]),
                                       "put": _explanation_operation([MODEL])},
        "/explanations/{model_name}/{model_version}": {"post": _explanation_operation([MODEL, VERSION]),
                                                       "put": _explanation_operation([MODEL, VERSION])},
        **_kserve_paths(),
    }


def add_inference(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the inference routes, their schemas and the inference token's scheme to ``spec`` (in place)."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("securitySchemes", {})["inference"] = SECURITY_SCHEME
    spec.setdefault("paths", {}).update(inference_paths())
    spec["tags"] = [{"name": TAG_V2, "description": "the Open Inference Protocol V2 (KServe, Triton, MLServer)"},
                    {"name": TAG_TORCHSERVE, "description": "TorchServe's inference API"},
                    {"name": TAG_KSERVE, "description": "KServe V1 (TensorFlow Serving's REST form)"}]
    return spec
