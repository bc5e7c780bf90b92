"""The OpenAPI description ``OPTIONS /`` answers: management completed, inference added, in OpenAPI 3.0.1.

The routes parse their parameters by hand (``RegisterParams.parse`` and friends: MMS-style query
strings or JSON, errors in the project's shape), so FastAPI's generated description lists no query
parameters, no bodies, no bearer token and a 422 the API never sends. A client generator or a fuzzer
(schemathesis, BENCHMARKS.md "Robustness") needs the real contract, so it is added here from the
same pydantic models that validate the requests, once, when the description is first built. As MMS
does, the one document lists the inference APIs too (``management.openapi_inference``), and it is
OpenAPI 3.0.1 as MMS and TorchServe answer (``management.openapi30``), not FastAPI's 3.1.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

from management.openapi30 import to_openapi_30
from management.openapi_inference import add_inference
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
STATUS_SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
_WORKER = {"type": "object", "properties": {
    "id": {"type": "string"}, "startTime": {"type": "string", "nullable": True},
    "status": {"type": "string", "enum": ["READY", "LOADING", "STOPPING"]}, "gpu": {"type": "boolean"},
    "memoryUsage": {"type": "integer", "nullable": True}, "pid": {"type": "integer", "nullable": True},
    "gpuUsage": {"type": "string"}, "node": {"type": "string", "nullable": True}}}
#: TorchServe's describe keys, and modelpool's (handler, isDefault, pool).
DESCRIPTION_SCHEMA = {"type": "object", "properties": {
    **{key: {"type": "string"} for key in ("modelName", "modelVersion", "modelUrl", "engine", "runtime",
                                           "parallelType", "deviceType", "handler")},
    **{key: {"type": "integer"} for key in ("minWorkers", "maxWorkers", "batchSize", "maxRetryTimeoutInSec",
                                            "clientTimeoutInMills", "parallelLevel", "sequenceMaxIdleMSec",
                                            "sequenceTimeoutMSec", "maxNumSequence", "maxSequenceJobQueueSize")},
    **{key: {"type": "number"} for key in ("maxBatchDelay", "responseTimeout", "startupTimeout")},
    **{key: {"type": "boolean"} for key in ("continuousBatching", "useJobTicket", "useVenv", "stateful",
                                            "loadedAtStartup", "isDefault")},
    "deviceIds": {"type": "array", "items": {"type": "integer"}},
    "pool": {"type": "string", "enum": ["dedicated", "generic"]},
    "workers": {"type": "array", "items": _WORKER},
    "jobQueueStatus": {"type": "object", "properties": {"remainingCapacity": {"type": "integer"},
                                                        "pendingRequests": {"type": "integer", "nullable": True}}},
}, "required": ["modelName", "modelVersion", "modelUrl", "engine", "runtime", "minWorkers", "maxWorkers",
                "batchSize", "maxBatchDelay", "workers"]}
LIST_SCHEMA = {"type": "object", "required": ["models"], "properties": {
    "nextPageToken": {"type": "string", "nullable": True, "description": "pass as next_page_token for the next page"},
    "models": {"type": "array", "items": {"type": "object", "properties": {
        "modelName": {"type": "string"}, "modelUrl": {"type": "string", "nullable": True}}}}}}
BATCH_BODY = {
    "type": "object",
    "properties": {
        "service": {"type": "string"}, "version": {"type": "string"},
        "records": {"type": "array", "items": {"type": ["array", "object"]}},
        "input_uri": {"type": "string", "description": (
            "s3://bucket/key or objects://key: Parquet (.parquet, .pq), CSV (.csv) or TSV (.tsv, .tab), CSV and TSV "
            "with a header line and optionally compressed (.gz, .bz2, .zst, .lz4); another name is read as Parquet, "
            "else as TSV when its first line has a tab and no comma, else as CSV")},
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
def _status(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}


_SCALED = {"200": _status('synchronous: the workers run ("Workers scaled to N for model: ...")'),
           "202": _status('asynchronous: "Processing worker updates..."')}
_DESCRIBED = {"200": {"description": "the version(s), in TorchServe's keys", "content": {"application/json": {
    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/ModelDescription"}}}}}}
# Answers FastAPI cannot see in the route's signature (found by the fuzzer with real batch ids).
RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/models"): {
        "200": _status('registered; nothing pending: no workers asked for ("... registered with 0 initial workers. '
                       '..."), or synchronous and the workers run'),
        "202": _status('registered; the workers start asynchronously ("Processing worker updates...")')},
    ("get", "/models"): {"200": {"description": "a page of models, in name order", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}}}},
    ("get", "/models/{model_name}"): _DESCRIBED,
    ("get", "/models/{model_name}/{model_version}"): _DESCRIBED,
    ("put", "/models/{model_name}"): _SCALED,
    ("put", "/models/{model_name}/{model_version}"): _SCALED,
    ("put", "/models/{model_name}/{model_version}/set-default"): {"200": _status("the default version changed")},
    ("delete", "/models/{model_name}"): {"200": _status('"Model \"...\" unregistered"')},
    ("delete", "/models/{model_name}/{model_version}"): {"200": _status('"Model \"...\" unregistered"')},
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


def describe(generated: dict[str, Any]) -> dict[str, Any]:
    """The whole description from FastAPI's: management completed, inference added, as OpenAPI 3.0.1."""
    return to_openapi_30(add_inference(complete(generated)))


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """Add parameters, bodies, the bearer scheme and the real answers to FastAPI's description (in place)."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "the management token (`modelpool start` prints its file)"}
    schemas = spec["components"].setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, which the API never sends
        schemas.pop(unused, None)
    schemas.update({"Error": ERROR_SCHEMA, "Status": STATUS_SCHEMA, "ModelDescription": DESCRIPTION_SCHEMA,
                    "ModelList": LIST_SCHEMA})
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are 400s in the project's shape, never 422
            if (method, path) in RESPONSES:
                responses.pop("200", None)  # FastAPI's untyped "Successful Response"
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
            if (method, path) == ("post", "/models"):  # TorchServe takes the same parameters as a JSON body
                operation["requestBody"] = {"required": False, "content": {
                    "application/json": {"schema": json_body(RegisterParams)}}}
                for parameter in operation["parameters"]:
                    parameter["required"] = False  # url comes in the query or in the body
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


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """A parameters model as a JSON object body (the header fields stay headers)."""
    schema = model.model_json_schema()
    properties = {name: {**_plain(prop), **({"description": prop["description"]} if prop.get("description") else {})}
                  for name, prop in schema.get("properties", {}).items() if name not in HEADER_FIELDS}
    return {"type": "object", "properties": properties,
            "required": [name for name in schema.get("required", []) if name in properties]}


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
