"""The management HTTP API (FastAPI): the MMS/TorchServe model API, ML Server pools and batches, services, health.

This module holds the application: its error answers, the trailing-slash rule, health and the OpenAPI
description; the routes come from routers (``modelpool.management.model_routes``, ``modelpool.management.batch_routes``) that
share ``modelpool.management.route_support``. Everything but health and --metrics-path
(``modelpool.management.metrics_route``) needs ``Authorization: Bearer <token>``, or the status page's session
cookie with its CSRF header (``modelpool.management.ui_routes``: the page's login form and static files are open). Bodies
are read with the replicas' limits (--max-body-bytes, --body-timeout-s), and error messages lose server
paths and tracebacks unless --debug.
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import exceptions as ray_errors

from modelpool.deployments.app_names import REPLICA_HEADER
from modelpool.deployments.errors import RequestError
from modelpool.deployments.http_io import error_response
from modelpool.management import batch_routes, graph_routes, metrics_route, model_routes, ui_routes
from modelpool.management.openapi_docs import OPEN, describe, json_answer
from modelpool.management.route_support import in_thread, authorized, check_management_token, state
from modelpool.cluster.version import __version__

__all__ = ["api", "state", "check_management_token"]


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



#: What a call needs beyond this replica and may find again on a retry: a Ray actor or node lost (a worker node
#: died, an actor is being restarted), a task or object gone with it, object storage not answering (OSError).
UNAVAILABLE_ERRORS = (ray_errors.RayActorError, ray_errors.GetTimeoutError, ray_errors.ObjectLostError,
                      ray_errors.NodeDiedError, ray_errors.RaySystemError, OSError)


def unexpected_error(exc: Exception) -> RequestError:
    """What a caller is told of an error no route expected: a retryable 503 when a part of the cluster was lost,
    else a 500, in the one JSON shape either way (never Starlette's bare text, which the front reads as a lost
    replica). The traceback goes to the replica's log: Starlette raises the error on after this answer."""
    name = type(exc).__name__
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return RequestError(f"a part of the cluster this call needs did not answer ({name}); retry after the "
                            "Retry-After seconds", status=503)
    return RequestError(f"internal error ({name}) in the management replica; its log holds the traceback, and "
                        "the call may be retried", status=500)


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> Response:
    error = unexpected_error(exc)
    if state.debug:
        error.message += f": {exc}"
    return error_response(error, None, state.debug)


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


class NameReplica:
    """Every answer names the management replica that gave it (``x-modelpool-replica``, as model replicas'
    answers do): with several management replicas, which one answered is what a log line or a test needs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        replica = state.replica_id
        if scope["type"] != "http" or not replica:
            await self.app(scope, receive, send)
            return
        header = (REPLICA_HEADER.encode(), replica.encode("latin-1"))

        async def named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)
        await self.app(scope, receive, named)


api.add_middleware(NameReplica)



SERVER_NAME = "modelpool"
#: The V2 extensions served (REST and gRPC alike), as ServerMetadata lists them.
SERVER_EXTENSIONS = ("binary_tensor_data", "model_repository")


# ---------------------------------------------------------------------------------- health
@api.get("/ping", tags=["health"], openapi_extra=OPEN)
async def ping() -> dict:
    return {"status": "Healthy"}


@api.get("/v2/health/live", tags=["health"], openapi_extra=OPEN)
async def live() -> dict:
    return {"live": True}


@api.get("/v2/health/ready", tags=["health"], openapi_extra=OPEN, response_model=None, responses={
    200: json_answer("every application runs", {"type": "object", "properties": {
        "ready": {"type": "boolean", "const": True}}, "required": ["ready"]}),
    503: json_answer("not ready: what is not, and why", {"type": "object", "properties": {
        "ready": {"type": "boolean", "const": False},
        "notReady": {"type": "object", "additionalProperties": {"type": "string"}}}, "required": ["ready", "notReady"]})})
async def ready(request: Request) -> JSONResponse:
    body = await in_thread(state.readiness)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@api.get("/v2", tags=["health"], openapi_extra=OPEN)
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


api.include_router(model_routes.router)
api.include_router(model_routes.explanations)
api.include_router(batch_routes.router)
api.include_router(graph_routes.router)
api.include_router(ui_routes.router)  # the status page: /ui, /ui/state, /ui/static/...
api.routes.append(metrics_route.route)  # GET --metrics-path: a path known only in the replica (not a router's)
