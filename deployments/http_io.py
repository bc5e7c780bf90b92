"""HTTP plumbing of the replicas and the fronts: the sub-path, the inference token, bodies read within limits,
the headers passed between replicas, and error responses in modelpool's ``{"error", "field"}`` shape.

Nothing here knows a model: answering a model call is ``modelpool.deployments.model_calls``. Management's API reads
bodies and answers refusals through the same functions, so every entry point shares one set of limits.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Mapping, Optional

from starlette.requests import Request
from starlette.responses import Response

from modelpool.cluster.tokens import bearer_matches
from modelpool.deployments import deadlines
from modelpool.deployments.codecs import v2_binary
from modelpool.deployments.codecs.base import BODY_ACTIONS, ProtocolCall
from modelpool.deployments.errors import RequestError
from modelpool.deployments.redact import public_message
from modelpool.deployments.serving_options import ServingOptions

JSON = "application/json"
CODEC_HEADERS = ("content-type", v2_binary.HEADER)
#: Seconds a client is told to wait (``Retry-After``) when a model is registered but not ready to answer yet.
RETRY_AFTER_S = "1"

_HEADERS_KEY = "modelpool.headers"  # where request_headers keeps its dict, in the ASGI scope


def sub_path(request: Request) -> str:
    """The path below the app's route prefix (Serve passes the prefix as ``root_path``).

    Read from the ASGI scope, not ``request.url``: building a URL object costs more than the rest
    of the routing together, on every request.
    """
    scope = request.scope
    return scope["path"][len(scope.get("root_path", "")):].rstrip("/")


def check_authorization(authorization: str, options: ServingOptions,
                        how: str = "'Authorization: Bearer <token>'") -> None:
    """401 unless ``authorization`` carries a token model calls accept (only when --inference-token is set).

    REST and gRPC share it; ``how`` says how the client sends the token (a header, gRPC metadata).
    """
    if options.inference_token_sha256 and not bearer_matches(authorization, options.inference_token_sha256):
        raise RequestError(f"missing or wrong inference token; send {how} with the "
                           "token the operator set (--inference-token) or the management token", status=401,
                           field="authorization")


def request_headers(request: Request) -> dict[str, str]:
    """The request's headers as a plain dict of lower-case names, made once per request.

    Starlette's ``request.headers`` scans the raw list on every lookup and raises and catches a
    KeyError for a missing name; a model call asks for several that are usually absent
    (``authorization``, ``inference-header-content-length``). A repeated header keeps its last value.
    """
    scope = request.scope
    found = scope.get(_HEADERS_KEY)
    if found is None:
        found = scope[_HEADERS_KEY] = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    return found


def check_inference_token(request: Request, options: ServingOptions) -> None:
    """401 unless the request carries a token model routes accept (only when --inference-token is set).

    Checked before the path is even parsed, so a caller without the token learns nothing, not even
    which models exist (a 404 lists them).
    """
    if options.inference_token_sha256:
        check_authorization(request_headers(request).get("authorization", ""), options)


async def read_body(request: Request, max_bytes: int, timeout_s: Optional[float] = None) -> bytes:
    """The body, refused with 413 as soon as it passes ``max_bytes`` and with 408 when it takes longer than ``timeout_s``.

    Read chunk by chunk rather than with ``request.body()``: a chunked body declares no length,
    and buffering all of it before measuring it would let one request fill the replica's memory.
    The deadline covers the whole body, so a client trickling a byte at a time cannot hold a
    replica slot for longer than that.
    """
    declared = request_headers(request).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"request body of {declared} bytes exceeds the limit of {max_bytes}; send fewer rows per request",
                           status=413, field="body")
    if not timeout_s:
        return await _read_capped(request, max_bytes)
    try:
        return await deadlines.within(timeout_s, _read_capped(request, max_bytes))
    except asyncio.TimeoutError:
        raise RequestError(f"the request body did not arrive within {timeout_s:g}s; send it at once "
                           "(the limit is --body-timeout-s)", status=408, field="body") from None


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(f"request body exceeds the limit of {max_bytes} bytes; send fewer rows per request",
                               status=413, field="body")
        if chunk:  # Starlette ends the stream with an empty chunk
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def body_reader(request: Request, max_bytes: int, timeout_s: Optional[float] = None) -> Callable[[], Awaitable[bytes]]:
    """Reads the body when called: a model call reads it only once it is sure to answer the request."""
    return lambda: read_body(request, max_bytes, timeout_s)


def json_response(body: dict, status: int = 200, headers: Optional[dict] = None) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type=JSON, headers=headers)


def error_body(exc: RequestError, debug: bool = False) -> bytes:
    """``{"error", "field"}``; without --debug the message is stripped of server paths and tracebacks."""
    if debug:
        return exc.to_json()
    return RequestError(public_message(exc.message), status=exc.status, field=exc.field).to_json()


def error_response(exc: RequestError, headers: Optional[dict] = None, debug: bool = False) -> Response:
    if exc.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    if exc.status == 503:  # a model still starting, a route moving: early, not wrong; say when to come back
        headers = {**(headers or {}), "Retry-After": RETRY_AFTER_S}
    return Response(error_body(exc, debug), status_code=exc.status, media_type=JSON, headers=headers)


async def read_protocol_request(request: Request, codec: Any, options: ServingOptions,
                                max_body_bytes: int) -> tuple[ProtocolCall, bytes]:
    """Another server's request (TorchServe's, KServe V1's): the token checked, the path parsed by the protocol's
    ``codec`` and, for a call that carries one, the body read within the limits; RequestError says what is wrong.
    The protocol front and a replica's own port read them alike."""
    check_inference_token(request, options)
    call = codec.parse_call(sub_path(request), request.method)
    body = await read_body(request, max_body_bytes, options.body_timeout_s) if call.action in BODY_ACTIONS else b""
    return call, body


def codec_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers a codec may read, for passing a request on to another replica."""
    return {name: headers[name] for name in CODEC_HEADERS if name in headers}


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """An answer's headers worth passing back through a forwarding replica: its own, its type and binary length."""
    return {name: value for name, value in headers.items()
            if name.startswith("x-") or name in CODEC_HEADERS}
