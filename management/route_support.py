"""What every management route needs: the replica's state, the token check, reading parameters and bodies.

The routes live in ``modelpool.management.api`` (health, the description), ``modelpool.management.model_routes`` (models, pools,
services, the model repository) and ``modelpool.management.batch_routes`` (batches); they share these helpers.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any, Callable

from fastapi import Depends, Request

from modelpool.cluster.settings import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, Settings
from modelpool.deployments.errors import RequestError
from modelpool.deployments.http_io import read_body
from modelpool.deployments.serving_options import ServingOptions
from modelpool.management import ui_session

IDEMPOTENCY_HEADER = "Idempotency-Key"


class _State:
    """What the routes need from the replica. Module-level on purpose: Serve serves a copy of
    ``api``, so ``api.state`` set in the replica is not the one the routes see."""

    manager: Any = None
    batches: Any = None
    token: str = ""
    debug: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    readiness: Callable[[], dict] = staticmethod(lambda: {"ready": False})
    serving: ServingOptions = ServingOptions()  # the inference token, for the inference routes served here
    status: Any = None  # what GET /ui/state shows (management/status_sources.py); made on first use if unset
    metrics_path: str = Settings.model_fields["metrics_path"].default  # --metrics-path (management/metrics_route.py)
    replica_id: str = ""  # Serve's id of this management replica: answers name it (x-modelpool-replica), unless empty


state = _State()


def manager_of(_: Request):
    return state.manager


async def require_token(request: Request) -> None:
    """Constant-time bearer token check; the token never appears in an error or a log.

    Without an ``Authorization`` header, the status page's session cookie is taken instead, with its
    CSRF header on anything but GET/HEAD/OPTIONS (``modelpool.management.ui_session``).

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency on its thread
    pool, a hop that cost more than the check itself on every management call.
    """
    header = request.headers.get("authorization")
    if header is None:
        session = request.cookies.get(ui_session.SESSION_COOKIE)
        if session is not None:
            ui_session.check_session(request.method, session, request.headers.get(ui_session.CSRF_HEADER),
                                     state.token, time.time())
            return
    check_management_token(header or "")


def check_management_token(header: str) -> None:
    """401 unless ``header`` is ``Bearer <the management token>`` (REST header or gRPC metadata alike)."""
    expected: str = state.token
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise RequestError("missing or wrong management token; send 'Authorization: Bearer <token>' "
                           "(the token file's path is printed by `modelpool start`)", status=401, field="authorization")


async def in_thread(function: Callable, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def query_values(request: Request) -> dict[str, str]:
    return dict(request.query_params)


async def limited_body(request: Request) -> bytes:
    """The body within --max-body-bytes (413) and --body-timeout-s (408), like a model replica reads it."""
    return await read_body(request, state.max_body_bytes, state.body_timeout_s)


async def params_from(request: Request) -> dict[str, Any]:
    """Query parameters, and a JSON object body when one is sent (both forms are accepted)."""
    values: dict[str, Any] = dict(request.query_params)
    body = await limited_body(request)
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
