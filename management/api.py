"""The management HTTP API (FastAPI): the MMS/TorchServe model API, ML Server pools, services, health.

Thin: each route validates its parameters, calls :class:`management.model_manager.ModelManager` in a
worker thread (its Serve calls block) and shapes the answer. Everything but health needs
``Authorization: Bearer <token>``. Bodies are read with the replicas' limits (--max-body-bytes,
--body-timeout-s), and error messages lose server paths and tracebacks unless --debug.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import re
from typing import Any, Callable, Optional
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from deployments.errors import RequestError
from deployments.http_routes import check_inference_token, error_response, protocol_error, read_body
from deployments.serving_options import ServingOptions
from management import repository
from management.openapi_docs import describe
from management.params import ListParams, PoolParams, RegisterParams, ScaleParams
from cluster.version import __version__

IDEMPOTENCY_HEADER = "Idempotency-Key"

api = FastAPI(
    title="modelpool management API",
    version=__version__,
    description="Model registration and scaling in the shape of the MXNet Model Server / TorchServe management API, "
                "session pools in the shape of Machine Learning Server.",
    # FastAPI would serve these without the token (and /docs pulls scripts from a CDN); the description
    # is served below, behind the token like everything but health.
    openapi_url=None, docs_url=None, redoc_url=None,
)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation (path and query types) in the project's error shape."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part not in ("path", "query", "body")]
    field = ".".join(loc) or None
    return JSONResponse({"error": f"{field}: {error.get('msg', 'invalid value')}" if field else str(error.get("msg")),
                         "field": field}, status_code=400)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> Response:
    """The replicas' error answer: loader and Serve messages lose server paths and tracebacks unless --debug."""
    return error_response(exc, None, state.debug)


class _State:
    """What the routes need from the replica. Module-level on purpose: Serve serves a copy of
    ``api``, so ``api.state`` set in the replica is not the one the routes see."""

    manager: Any = None
    batches: Any = None
    token: str = ""
    debug: bool = False
    max_body_bytes: int = 16 << 20
    body_timeout_s: float = 60.0
    readiness: Callable[[], dict] = staticmethod(lambda: {"ready": False})
    serving: ServingOptions = ServingOptions()  # the inference token, for the inference routes served here


state = _State()


class TrailingSlashAsNone:
    """``/models/noop/`` is ``/models/noop``, as TorchServe routes it.

    Starlette would answer a trailing slash with a 307 to the path without it, which a scripted
    ``curl -X DELETE`` does not follow: the call would silently do nothing.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)


api.add_middleware(TrailingSlashAsNone)


def _manager(_: Request):
    return state.manager


async def require_token(request: Request) -> None:
    """Constant-time bearer token check; the token never appears in an error or a log.

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency on its thread
    pool, a hop that cost more than the check itself on every management call.
    """
    check_management_token(request.headers.get("authorization", ""))


def check_management_token(header: str) -> None:
    """401 unless ``header`` is ``Bearer <the management token>`` (REST header or gRPC metadata alike)."""
    expected: str = state.token
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise RequestError("missing or wrong management token; send 'Authorization: Bearer <token>' "
                           "(the token file's path is printed by `modelpool start`)", status=401, field="authorization")


async def _call(function: Callable, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params)


async def _body(request: Request) -> bytes:
    """The body within --max-body-bytes (413) and --body-timeout-s (408), like a model replica reads it."""
    return await read_body(request, state.max_body_bytes, state.body_timeout_s)


async def _params_from(request: Request) -> dict[str, Any]:
    """Query parameters, and a JSON object body when one is sent (both forms are accepted)."""
    values: dict[str, Any] = dict(request.query_params)
    body = await _body(request)
    if body.strip():
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise RequestError("the body is not valid JSON; send parameters as a JSON object or as query parameters",
                               field="body") from None
        if not isinstance(parsed, dict):
            raise RequestError("the body must be a JSON object of parameters", field="body")
        values.update(parsed)
    return values


authorized = [Depends(require_token)]
SERVER_NAME = "modelpool"
#: The V2 extensions served (REST and gRPC alike), as ServerMetadata lists them.
SERVER_EXTENSIONS = ("binary_tensor_data", "model_repository")


# ---------------------------------------------------------------------------------- health
@api.get("/ping", tags=["health"])
async def ping() -> dict:
    return {"status": "Healthy"}


@api.get("/v2/health/live", tags=["health"])
async def live() -> dict:
    return {"live": True}


@api.get("/v2/health/ready", tags=["health"])
async def ready(request: Request) -> JSONResponse:
    body = await _call(state.readiness)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@api.get("/v2", tags=["health"])
async def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(SERVER_EXTENSIONS)}


_generated_openapi = api.openapi


def _described_openapi() -> dict:
    """FastAPI's description, completed once with what it cannot see and the inference APIs, as OpenAPI
    3.0.1 (management/openapi_docs.py); built on the first call, then kept."""
    if _description.get("spec") is None:
        _description["spec"] = describe(_generated_openapi())
    return _description["spec"]


_description: dict[str, Optional[dict]] = {"spec": None}


api.openapi = _described_openapi  # type: ignore[method-assign]


@api.options("/", tags=["management"], dependencies=authorized)
async def describe_api() -> dict:
    """The OpenAPI 3.0.1 description of the inference and management APIs, as MMS answers ``OPTIONS /``."""
    return api.openapi()


@api.get("/openapi.json", tags=["management"], dependencies=authorized, include_in_schema=False)
async def openapi_json() -> dict:
    """The same description where OpenAPI tools look for it (send the token: schemathesis -H ...)."""
    return api.openapi()


# ---------------------------------------------------------------------------------- models
@api.post("/models", tags=["models"], dependencies=authorized)
async def register_model(request: Request) -> JSONResponse:
    """Register a model archive: url, model_name, handler, runtime, batch_size, max_batch_delay (ms),
    initial_workers, synchronous, response_timeout (s: each inference call), startup_timeout (s: the
    synchronous wait).

    Parameters come as a query string or, as TorchServe also takes them, as a JSON object body
    (``Content-Type: application/json``). An ``Idempotency-Key`` header makes the request safe to retry
    when its answer was lost (the connection dropped, the management replica died after the registry
    write): the same key gets the first answer again instead of a 409."""
    is_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
    query = await _params_from(request) if is_json else _query(request)  # TorchServe reads a body only if JSON
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        query["idempotency_key"] = key
    params = RegisterParams.parse(query)
    status, body = await _call(_manager(request).register, params)
    return JSONResponse(body, status_code=status)


@api.get("/models", tags=["models"], dependencies=authorized)
async def list_models(request: Request) -> dict:
    return await _call(_manager(request).list_models, ListParams.parse(_query(request)))


@api.get("/models/{model_name}", tags=["models"], dependencies=authorized)
async def describe_model(request: Request, model_name: str) -> list:
    return await _call(_manager(request).describe, model_name, None)


@api.get("/models/{model_name}/{model_version}", tags=["models"], dependencies=authorized)
async def describe_model_version(request: Request, model_name: str, model_version: str) -> list:
    """A version, or ``all`` for every version."""
    return await _call(_manager(request).describe, model_name, model_version)


async def _scale(request: Request, name: str, version: Optional[str]) -> JSONResponse:
    params = ScaleParams.parse(_query(request))
    status, body = await _call(_manager(request).scale, name, version, params)
    return JSONResponse(body, status_code=status)


@api.put("/models/{model_name}", tags=["models"], dependencies=authorized)
async def scale_model(request: Request, model_name: str) -> JSONResponse:
    """Scale workers: min_worker, max_worker, number_gpu, synchronous, timeout (and batch_size, max_batch_delay)."""
    return await _scale(request, model_name, None)


@api.put("/models/{model_name}/{model_version}", tags=["models"], dependencies=authorized)
async def scale_model_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return await _scale(request, model_name, model_version)


@api.put("/models/{model_name}/{model_version}/set-default", tags=["models"], dependencies=authorized)
async def set_default(request: Request, model_name: str, model_version: str) -> dict:
    return await _call(_manager(request).set_default, model_name, model_version)


@api.delete("/models/{model_name}", tags=["models"], dependencies=authorized)
async def unregister_model(request: Request, model_name: str) -> dict:
    return await _call(_manager(request).unregister, model_name, None)


@api.delete("/models/{model_name}/{model_version}", tags=["models"], dependencies=authorized)
async def unregister_model_version(request: Request, model_name: str, model_version: str) -> dict:
    return await _call(_manager(request).unregister, model_name, model_version)


# ---------------------------------------------------------------------------------- explanations
# described with the inference routes (management/openapi_inference.py)
@api.api_route("/explanations/{model_name}", methods=["POST", "PUT"], include_in_schema=False)
async def explain(request: Request, model_name: str) -> Response:
    return await _no_explainer(request, model_name, None)


@api.api_route("/explanations/{model_name}/{model_version}", methods=["POST", "PUT"], include_in_schema=False)
async def explain_version(request: Request, model_name: str, model_version: str) -> Response:
    return await _no_explainer(request, model_name, model_version)


async def _no_explainer(request: Request, name: str, version: Optional[str]) -> Response:
    """TorchServe's explanations route: 501 for a registered model, 404 for an unknown one, in TorchServe's shape.

    modelpool's handler contract has no explain step (KServe V1's ``:explain`` answers 501 alike). Served
    here because ``/explanations`` is under management's route prefix; the inference token guards it.
    """
    try:
        check_inference_token(request, state.serving)
        await _call(state.manager.record, name, version)
        raise RequestError(f"model '{name}' has no explainer (modelpool's handler contract has no explain step); "
                           f"use /predictions/{name}", status=501, field="path")
    except RequestError as exc:
        status, payload, headers = protocol_error("torchserve", exc, {}, state.debug)
        return Response(payload, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------- pools
@api.put("/pools/{name}/{version}", tags=["pools"], dependencies=authorized)
async def create_or_update_pool(request: Request, name: str, version: str) -> dict:
    """A dedicated session pool: initial_pool_size replicas preloaded, up to max_pool_size."""
    params = PoolParams.parse(await _params_from(request))
    return await _call(_manager(request).put_pool, name, version, params)


@api.get("/pools/{name}/{version}", tags=["pools"], dependencies=authorized)
async def pool_status(request: Request, name: str, version: str) -> list:
    return await _call(_manager(request).pool_status, name, version)


@api.delete("/pools/{name}/{version}", tags=["pools"], dependencies=authorized)
async def delete_pool(request: Request, name: str, version: str) -> dict:
    return await _call(_manager(request).delete_pool, name, version)


@api.get("/services", tags=["services"], dependencies=authorized)
async def services(request: Request) -> list:
    return await _call(_manager(request).services)


# ---------------------------------------------------------------------------------- model repository (V2)
# The Open Inference Protocol's model repository extension, in Triton's shape (MLServer's is the same):
# the store is the repository, the registry what is loaded. Behind the token, unlike Triton's.
@api.post("/v2/repository/index", tags=["repository"], dependencies=authorized)
async def repository_index(request: Request) -> JSONResponse:
    """Every registered model version with its state (READY, LOADING, UNLOADING, UNAVAILABLE) and every
    model store archive that is not registered (UNAVAILABLE); the body ``{"ready": true}`` keeps the READY ones."""
    ready_only = repository.parse_index_request(await _body(request))
    return JSONResponse(await _call(_manager(request).repository_index, ready_only))


@api.post("/v2/repository/models/{model_name}/load", tags=["repository"], dependencies=authorized,
          response_class=Response)
async def repository_load(request: Request, model_name: str) -> Response:
    """Register the model's archives from the model store and answer once it serves: 200, empty body, as Triton.

    Already registered: nothing changes. ``parameters`` are ignored but for Triton's ``config`` and
    ``file:`` ones, which are refused (modelpool cannot honour them)."""
    repository.parse_load_request(await _body(request))
    await _call(_manager(request).load, model_name)
    return Response(status_code=200)


@api.post("/v2/repository/models/{model_name}/unload", tags=["repository"], dependencies=authorized,
          response_class=Response)
async def repository_unload(request: Request, model_name: str) -> Response:
    """Unregister every version of the model: 200, empty body, as Triton. ``unload_dependents`` is ignored."""
    repository.parse_unload_request(await _body(request))
    await _call(_manager(request).unload, model_name)
    return Response(status_code=200)


# ---------------------------------------------------------------------------------- batches
async def _json_body(request: Request) -> Any:
    body = await _body(request)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise RequestError("the body is not valid JSON; send {\"service\", \"version\", \"records\" | \"input_uri\"}",
                           field="body") from None


@api.post("/batches", tags=["batches"], dependencies=authorized, status_code=202)
async def start_batch(request: Request) -> JSONResponse:
    """Score records (or a Parquet, CSV or TSV input_uri) asynchronously on Ray tasks: 202 with an executionId.

    An ``Idempotency-Key`` header makes the request safe to retry: the same key gets the job it
    started the first time, not a second job."""
    answer = await _call(state.batches.submit, await _json_body(request), request.headers.get(IDEMPOTENCY_HEADER))
    return JSONResponse(answer, status_code=202)


@api.get("/batches", tags=["batches"], dependencies=authorized)
async def list_batches(request: Request, service: Optional[str] = None, version: Optional[str] = None) -> list:
    return await _call(state.batches.list, service, version)


@api.get("/batches/{execution_id}", tags=["batches"], dependencies=authorized)
async def batch_state(request: Request, execution_id: str, show_partial_results: bool = False,
                      offset: int = 0, limit: int = 1000) -> dict:
    """State and totals; with show_partial_results, the rows scored so far in index order, a page
    at a time (offset, limit; nextOffset is null on the last page)."""
    return await _call(state.batches.state, execution_id, show_partial_results, offset, limit)


@api.get("/batches/{execution_id}/results/{index}", tags=["batches"], dependencies=authorized)
async def batch_result(request: Request, execution_id: str, index: int) -> dict:
    return await _call(state.batches.result, execution_id, index)


@api.get("/batches/{execution_id}/results/{index}/artifacts", tags=["batches"], dependencies=authorized)
async def batch_artifacts(request: Request, execution_id: str, index: int) -> list:
    return await _call(state.batches.artifacts, execution_id, index)


@api.get("/batches/{execution_id}/results/{index}/artifacts/{name}", tags=["batches"], dependencies=authorized)
async def batch_artifact(request: Request, execution_id: str, index: int, name: str) -> Response:
    data = await _call(state.batches.artifact, execution_id, index, name)
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": attachment(name)})


def attachment(name: str) -> str:
    """RFC 6266 ``Content-Disposition``: an ASCII stand-in and the exact name percent-encoded.

    Artifact names are whatever a handler wrote; a quote, ';' or a non-Latin-1 character quoted
    as is would break or extend the header (or fail to encode: a 500).
    """
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@api.delete("/batches/{execution_id}", tags=["batches"], dependencies=authorized)
async def cancel_batch(request: Request, execution_id: str) -> dict:
    return await _call(state.batches.cancel, execution_id)


@api.post("/batches/{execution_id}/cancel", tags=["batches"], dependencies=authorized)
async def cancel_batch_post(request: Request, execution_id: str) -> dict:
    return await _call(state.batches.cancel, execution_id)
