"""The OpenAPI description ``OPTIONS /`` answers: FastAPI's, from the routes, completed, in OpenAPI 3.0.1.

The routes parse their parameters by hand (``RegisterParams.parse`` and friends: MMS-style query
strings or JSON, errors in the project's shape), so FastAPI cannot see them in the signatures. Each
route states them on its decorator instead, from the same pydantic models that validate the requests
(``openapi_extra=query_of(ScaleParams)``), with the answers and errors it can send
(``responses=answers(404, ok={202: status(...)})``): the helpers for that are here, and so is what holds
for every route (the bearer token, its 401, the error shape's 400, no 422), added by :func:`complete`
once, when the description is first built. A client generator or a fuzzer (schemathesis, BENCHMARKS.md
"Robustness") reads the result. As MMS does, the one document lists the inference APIs too
(``modelpool.management.openapi_inference``), and it is OpenAPI 3.0.1 as MMS and TorchServe answer
(``management.openapi30``), not FastAPI's 3.1.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from modelpool.management.openapi30 import to_openapi_30
from modelpool.management.openapi_inference import add_inference
from modelpool.management.params import IDEMPOTENCY_KEY_PATTERN

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
#: TorchServe's describe keys, and modelpool's (handler, isDefault, pool, maxQueuedRequests, Seldon's serviceType and
#: parameters).
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
    "maxQueuedRequests": {"type": "integer", "minimum": -1, "description": (
        "requests that may wait at a replica beyond those it runs, as served now (the version's own, else the "
        "server's --max-queued-requests); past them a call gets 429 with Retry-After. -1: no limit, 0: none wait")},
    "serviceType": {"type": "string", "enum": ["MODEL", "TRANSFORMER", "ROUTER", "COMBINER", "OUTLIER_DETECTOR"],
                    "description": "the handler's role in an inference graph (Seldon's --service-type)"},
    "parameters": {"type": "array", "description": "handed to the handler's constructor (Seldon's --parameters)",
                   "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"},
                                                              "value": {}}}},
    "workers": {"type": "array", "items": _WORKER},
    "jobQueueStatus": {"type": "object", "properties": {"remainingCapacity": {"type": "integer"},
                                                        "pendingRequests": {"type": "integer", "nullable": True}}},
}, "required": ["modelName", "modelVersion", "modelUrl", "engine", "runtime", "minWorkers", "maxWorkers",
                "batchSize", "maxBatchDelay", "workers"]}
LIST_SCHEMA = {"type": "object", "required": ["models"], "properties": {
    "nextPageToken": {"type": "string", "nullable": True, "description": "pass as next_page_token for the next page"},
    "models": {"type": "array", "items": {"type": "object", "properties": {
        "modelName": {"type": "string"}, "modelUrl": {"type": "string", "nullable": True}}}}}}
_PARAMETERS = {"type": "object", "description": "key/value pairs, as the Open Inference Protocol's parameters"}
# Optional JSON bodies of the model repository routes (Triton's shapes; no body is the same as {}).
INDEX_BODY = {"type": "object", "properties": {
    "ready": {"type": "boolean", "description": "true: only the models ready for inference"}}}
LOAD_BODY = {"type": "object", "properties": {"parameters": {
    **_PARAMETERS, "description": "accepted and ignored, except Triton's `config` and `file:...`, refused with 400"}}}
UNLOAD_BODY = {"type": "object", "properties": {"parameters": {
    **_PARAMETERS, "properties": {"unload_dependents": {"type": "boolean", "description": "accepted, ignored"}}}}}
INDEX_ENTRY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
                   "reason": {"type": "string"}},
    "required": ["name", "version", "state", "reason"],
}
_EMPTY_200 = {"200": {"description": "done; the body is empty, as Triton answers"}}
#: ``openapi_extra`` of the routes that need no token (health).
OPEN: dict[str, Any] = {"security": []}
EMPTY_200 = {"description": "done; the body is empty, as Triton answers"}
DESCRIBED = {"description": "the version(s), in TorchServe's keys", "content": {"application/json": {
    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/ModelDescription"}}}}}


def describe(generated: dict[str, Any]) -> dict[str, Any]:
    """The whole description from FastAPI's: management completed, inference added, as OpenAPI 3.0.1."""
    return to_openapi_30(add_inference(complete(generated)))


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """Add what holds for every route to FastAPI's description (in place): the bearer scheme on all but health,
    (the routes that need none say so: ``OPEN``) with its 401 and the 400 of the error shape, the shared schemas, and no 422 (the API never sends one)."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "the management token (`modelpool start` prints its file)"}
    schemas = spec["components"].setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, which the API never sends
        schemas.pop(unused, None)
    schemas.update({"Error": ERROR_SCHEMA, "Status": STATUS_SCHEMA, "ModelDescription": DESCRIPTION_SCHEMA,
                    "ModelList": LIST_SCHEMA})
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are 400s in the project's shape, never 422
            if operation.get("security") == OPEN["security"]:  # stated on the route: no token
                continue
            operation["security"] = [{"bearer": []}]
            for status in (400, 401):
                responses.setdefault(str(status), _error_response(status))
    return spec


# ---------------------------------------------------------------------------------- on the routes' decorators
def answers(*errors: int, ok: dict[int, dict[str, Any]] | None = None,
            params: bool = False) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: its answers (``ok={202: status("...")}``) and the error statuses it can send
    (400 and 401 hold for every route behind the token and are added by :func:`complete`).

    ``params``: the route reads a parameters model from the request line, which the ingress refuses with its
    own HTML page when it is past HAProxy's 16 kB buffer (a long url of non-ASCII characters is up to 6 bytes a
    character once percent-encoded)."""
    documented: dict[int | str, dict[str, Any]] = {str(code): answer for code, answer in (ok or {}).items()}
    for status in errors:
        documented[str(status)] = _error_response(status)
    if params:
        documented["400"] = _error_response(400)
        documented["400"]["content"]["text/html"] = {"schema": {"type": "string"}}
    return documented


def status(description: str) -> dict[str, Any]:
    """An answer of TorchServe's ``{"status": "..."}`` shape."""
    return json_answer(description, {"$ref": "#/components/schemas/Status"})


def json_answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def query_of(model: type[BaseModel]) -> dict[str, Any]:
    """A route's ``openapi_extra`` for a parameters model read from the query string."""
    return {"parameters": query_parameters(model)}


def query_or_body_of(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for parameters taken from the query string or, as TorchServe also takes them, a JSON body."""
    return {"parameters": [{**parameter, "required": False} for parameter in query_parameters(model)],
            "requestBody": {"required": False, "content": {"application/json": {"schema": json_body(model)}}}}


def body_of(schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    """``openapi_extra`` for a JSON body the route reads itself (FastAPI cannot see it in the signature)."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


IDEMPOTENCY_KEY_HEADER = {"name": "Idempotency-Key", "in": "header", "required": False, "description": (
    "a retry with the same key gets the job the first request started, not a second one"), "schema": {
    "type": "string", "minLength": 1, "maxLength": 128, "pattern": IDEMPOTENCY_KEY_PATTERN}}


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
