"""The management API's OpenAPI description, completed where FastAPI cannot see the routes' contract.

The routes parse their parameters by hand (``RegisterParams.parse`` and friends: MMS-style query
strings or JSON, errors in the project's shape), so FastAPI's generated description lists no query
parameters, no bodies, no bearer token and a 422 the API never sends. A client generator or a fuzzer
(schemathesis, BENCHMARKS.md "Robustness") needs the real contract, so it is added here from the
same pydantic models that validate the requests, once, when the description is first built.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

from management.params import IDEMPOTENCY_KEY_PATTERN, ListParams, PoolParams, RegisterParams, ScaleParams

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": ["string", "null"]}},
    "required": ["error"],
}
STATUS_TEXT = {
    400: "a parameter is wrong: `field` names it, `error` says how to fix it",
    401: "missing or wrong `Authorization: Bearer <token>`",
    403: "the URL is not in the allow-list",
    404: "no such model, version, pool, batch or row",
    408: "the request body did not arrive in time",
    409: "already registered",
    413: "the request body is over the limit",
    500: "a model or Serve failed; the message says which",
    503: "not ready yet",
    504: "a synchronous call outlived its timeout",
}
HEADER_FIELDS = {"idempotency_key": "Idempotency-Key"}
BATCH_BODY = {
    "type": "object",
    "properties": {
        "service": {"type": "string"}, "version": {"type": "string"},
        "records": {"type": "array", "items": {"type": ["array", "object"]}},
        "input_uri": {"type": "string", "description": "s3://... or objects://... (Parquet or CSV)"},
        "parallel_count": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    "required": ["service"],
}
REPOSITORY_INDEX = "/v2/repository/index"
REPOSITORY_LOAD = "/v2/repository/models/{model_name}/load"
REPOSITORY_UNLOAD = "/v2/repository/models/{model_name}/unload"
_PARAMETERS = {"type": "object", "description": "key/value pairs, as the Open Inference Protocol's parameters"}
# Optional JSON bodies of the model repository routes (Triton's shapes; no body is the same as {}).
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", REPOSITORY_INDEX): {"type": "object", "properties": {
        "ready": {"type": "boolean", "description": "true: only the models ready for inference"}}},
    ("post", REPOSITORY_LOAD): {"type": "object", "properties": {"parameters": {
        **_PARAMETERS, "description": "accepted and ignored, except Triton's `config` and `file:...`, refused with 400"}}},
    ("post", REPOSITORY_UNLOAD): {"type": "object", "properties": {"parameters": {
        **_PARAMETERS, "properties": {"unload_dependents": {"type": "boolean", "description": "accepted, ignored"}}}}},
}
INDEX_ENTRY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
                   "reason": {"type": "string"}},
    "required": ["name", "version", "state", "reason"],
}
_EMPTY_200 = {"200": {"description": "done; the body is empty, as Triton answers"}}
# (method, path) -> (parameters model, where it goes, the error statuses the route can answer)
ROUTES: dict[tuple[str, str], tuple[Optional[type[BaseModel]], str, tuple[int, ...]]] = {
    ("post", "/models"): (RegisterParams, "query", (400, 403, 404, 408, 409, 413, 500, 504)),
    ("get", "/models"): (ListParams, "query", (400,)),
    ("get", "/models/{model_name}"): (None, "", (400, 404)),
    ("get", "/models/{model_name}/{model_version}"): (None, "", (400, 404)),
    ("put", "/models/{model_name}"): (ScaleParams, "query", (400, 404, 500, 504)),
    ("put", "/models/{model_name}/{model_version}"): (ScaleParams, "query", (400, 404, 500, 504)),
    ("put", "/models/{model_name}/{model_version}/set-default"): (None, "", (400, 404)),
    ("delete", "/models/{model_name}"): (None, "", (400, 404)),
    ("delete", "/models/{model_name}/{model_version}"): (None, "", (400, 404)),
    ("put", "/pools/{name}/{version}"): (PoolParams, "query", (400, 404, 408, 413, 500)),
    ("get", "/pools/{name}/{version}"): (None, "", (400, 404)),
    ("delete", "/pools/{name}/{version}"): (None, "", (400, 404)),
    ("post", "/batches"): (None, "batch-body", (400, 404, 408, 413)),
    ("get", "/batches"): (None, "", (400,)),
    ("get", "/batches/{execution_id}"): (None, "", (400, 404)),
    ("delete", "/batches/{execution_id}"): (None, "", (400, 404)),
    ("post", "/batches/{execution_id}/cancel"): (None, "", (400, 404)),
    ("get", "/batches/{execution_id}/results/{index}"): (None, "", (400, 404)),
    ("get", "/batches/{execution_id}/results/{index}/artifacts"): (None, "", (400, 404)),
    ("get", "/batches/{execution_id}/results/{index}/artifacts/{name}"): (None, "", (400, 404)),
    ("post", REPOSITORY_INDEX): (None, "", (400, 408, 413)),
    ("post", REPOSITORY_LOAD): (None, "", (400, 404, 408, 413, 500, 504)),
    ("post", REPOSITORY_UNLOAD): (None, "", (400, 404, 408, 413)),
}
OPEN_PATHS = {"/ping", "/v2/health/live", "/v2/health/ready", "/v2"}  # health: no token
# Answers FastAPI cannot see in the route's signature (found by the fuzzer with real batch ids).
RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/batches/{execution_id}/results/{index}/artifacts/{name}"): {
        "200": {"description": "the file, as the handler wrote it",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    ("post", REPOSITORY_INDEX): {"200": {"description": "the index, sorted by name and version",
                                         "content": {"application/json": {"schema": {"type": "array", "items": INDEX_ENTRY}}}}},
    ("post", REPOSITORY_LOAD): _EMPTY_200,
    ("post", REPOSITORY_UNLOAD): _EMPTY_200,
    ("get", "/v2/health/ready"): {
        "200": {"description": "every application runs", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"ready": {"type": "boolean", "const": True}}, "required": ["ready"]}}}},
        "503": {"description": "not ready: what is not, and why", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"ready": {"type": "boolean", "const": False},
                                             "notReady": {"type": "object", "additionalProperties": {"type": "string"}}},
            "required": ["ready", "notReady"]}}}}},
}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """Add parameters, bodies, the bearer scheme and the real error answers to FastAPI's description."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "the management token (`modelpool start` prints its file)"}
    spec["components"].setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are 400s in the project's shape, never 422
            responses.update(RESPONSES.get((method, path), {}))
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": []}]
            model, where, statuses = ROUTES.get((method, path), (None, "", (400,)))
            for status in (401, *statuses):
                responses.setdefault(str(status), _error_response(status))
            if model is not None:
                operation["parameters"] = operation.get("parameters", []) + query_parameters(model)
                # A request line past HAProxy's 16 kB buffer (a long url of non-ASCII characters is up to
                # 6 bytes a character once percent-encoded) is refused by the ingress with its own HTML page.
                responses["400"].setdefault("content", {})["text/html"] = {"schema": {"type": "string"}}
            if (method, path) in REQUEST_BODIES:
                operation["requestBody"] = {"required": False, "content": {
                    "application/json": {"schema": REQUEST_BODIES[(method, path)]}}}
            if where == "batch-body":
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": BATCH_BODY}}}
                operation["parameters"] = operation.get("parameters", []) + [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "a retry with the same key gets the job the first request started, not a second one",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": IDEMPOTENCY_KEY_PATTERN}}]
    return spec


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A parameters model as OpenAPI query parameters (and the headers it reads, e.g. Idempotency-Key)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        parameters.append({
            "name": HEADER_FIELDS.get(name, name), "in": "header" if name in HEADER_FIELDS else "query",
            "required": name in required, "description": prop.get("description", ""), "schema": _plain(prop),
        })
    return parameters


def _plain(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without pydantic's title and its ``null`` branch (a query value is never null)."""
    prop = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
    options = [option for option in prop.pop("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        prop.update(options[0])
    elif options:
        prop["anyOf"] = options
    return prop


def _error_response(status: int) -> dict[str, Any]:
    return {"description": STATUS_TEXT.get(status, "error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
