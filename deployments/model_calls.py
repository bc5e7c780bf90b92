"""Answering a model call: which call a path names, running it on a loaded model through its codec, and the
answer (or refusal) in the caller's shape: V2 and plain JSON, or another server's (TorchServe, KServe V1).

A model route is ``/v2/models/{name}[/versions/{version}][/infer|/predict|/ready]``; a dedicated
app sees only the part after its route prefix, the generic pool the part after ``/v2/models``.
Every call, whatever its entry point, takes the model's response_timeout and lands in its metrics
here. The HTTP plumbing around it (bodies, tokens, error responses) is ``modelpool.deployments.http_io``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Optional

from starlette.responses import Response

from modelpool.deployments import deadlines, tracing
from modelpool.deployments.codecs import PROTOCOLS, REST_CODECS
from modelpool.deployments.errors import RequestError
from modelpool.deployments.graph_runtime import GRAPH_PATH, PATH_HEADER
from modelpool.deployments.http_io import JSON, RETRY_AFTER_S, error_body, error_response, forwarded_headers, json_response
from modelpool.deployments.redact import public_message
from modelpool.deployments.tensors import InferenceRequest

logger = logging.getLogger("ray.serve")  # Serve's replica logger: its lines carry the request id
ACTIONS = {"/infer": ("POST", "infer"), "/predict": ("POST", "predict"), "/ready": ("GET", "ready"), "": ("GET", "metadata")}
ProtocolAnswer = tuple[int, bytes, dict]  # (status, body, headers): what a replica hands back to a protocol front


@dataclass(frozen=True)
class ModelCall:
    """What a request asks of a model: which version (None = default) and which action."""

    version: Optional[str]
    action: str


def parse_model_call(path: str, method: str) -> ModelCall:
    """Split ``[/versions/{v}][/action]`` into a :class:`ModelCall`; 404/405 for anything else."""
    version: Optional[str] = None
    if path.startswith("/versions/"):
        version, _, rest = path[len("/versions/"):].partition("/")
        path = "/" + rest if rest else ""
        if not version:
            raise RequestError("empty version in the path; use /versions/{version}/infer", status=404, field="version")
    route = ACTIONS.get(path)
    if route is None:
        raise RequestError(f"no model route '{path}'; model routes are /infer, /predict, /ready and the model path itself",
                           status=404, field="path")
    expected_method, action = route
    if method != expected_method:
        raise RequestError(f"method {method} not allowed here; use {expected_method}", status=405, field="method")
    return ModelCall(version, action)


def split_model_path(path: str) -> tuple[str, str]:
    """``/{name}[rest]`` below ``/v2/models`` -> (name, rest)."""
    name, slash, rest = path.lstrip("/").partition("/")
    if not name:
        raise RequestError("no model name in the path; use /v2/models/{name}/infer", status=404, field="model_name")
    return name, (slash + rest if slash else "")


def failure_response(name: str, version: str, exc: BaseException, headers: Optional[dict] = None,
                     debug: bool = False) -> Response:
    """A handler raised: 500 with the model's own message (and traceback under --debug); the replica keeps serving.

    The error is logged too, through Serve's logger, so the line carries the request's id. Without
    --debug the answer's message loses server paths (the log keeps them).
    """
    message = f"model '{name}' version '{version}' failed: {type(exc).__name__}: {exc}"
    logger.error(message, exc_info=exc if debug else None)
    body: dict = {"error": message if debug else public_message(message)}
    if debug:
        body["traceback"] = traceback.format_exception(exc)
    return json_response(body, 500, headers)


async def answer_model_call(model, call: ModelCall, read: Callable[[], Awaitable[bytes]],
                            versions: list[str], headers: dict, request_headers: Mapping[str, str]) -> Response:
    """Run one call on a loaded model, turn the outcome into a response and count it in the metrics."""
    started = time.perf_counter()
    # the span's name and attributes are built only while tracing: this is every request's path
    scope = tracing.span(f"model {model.name}:{model.version} {call.action}",
                         span_attributes(model, call.action)) if tracing.active() else tracing.NO_SCOPE
    with scope as traced:
        try:
            response = await deadlines.within(model.response_timeout_s,
                                              _answer(model, call, read, versions, headers, request_headers))
        except asyncio.TimeoutError:
            response = error_response(overdue_error(model), headers, model.options.debug)
        tracing.mark_error(traced, response.status_code)
    model.metrics.request(call.action, response.status_code, (time.perf_counter() - started) * 1000)
    if response.status_code >= 400:  # the status page's recent errors
        model.metrics.error(response.status_code, getattr(response, "body", b""))
    return response


def span_attributes(model, action: str) -> dict:
    """What a replica's span of a model call says (``tracing``): which model, version and replica, and the action."""
    return {"modelpool.model": model.name, "modelpool.version": model.version, "modelpool.action": action,
            "modelpool.replica": getattr(model, "replica", "")}  # a graph has no replica id of its own


def check_not_overdue(model) -> None:
    """For a replica's health check: raise while ``model``'s handler call runs past its response_timeout."""
    overdue_s = model.overdue_call_s()
    if overdue_s is not None:
        raise RuntimeError(f"model '{model.name}' version '{model.version}': a handler call has run {overdue_s:.0f} s, "
                           f"past its response_timeout of {model.response_timeout_s:g} s; replacing this replica")


def overdue_error(model) -> RequestError:
    """504 for a call past the model's response_timeout (registered per model, 120 s by default).

    Enforced here, in the replica, rather than left to Serve's request timeout: a client can turn
    that one off with an ``x-request-timeout-seconds: 0`` header, and must not be able to hold a
    replica for as long as it likes.
    """
    return RequestError(f"model '{model.name}' version '{model.version}' did not answer within its response_timeout "
                        f"of {model.response_timeout_s:g} s; send fewer rows per request, or register the model "
                        f"with a larger response_timeout", status=504, field="response_timeout")


async def _answer(model, call: ModelCall, read: Callable[[], Awaitable[bytes]],
                  versions: list[str], headers: dict, request_headers: Mapping[str, str]) -> Response:
    try:
        codec = REST_CODECS.get(call.action)
        if codec is not None and model.takes_raw_payloads:
            raw = await model.raw(read, request_headers.get("content-type", ""))
            return Response(raw.payload, media_type=raw.media_type, headers=headers)
        if codec is not None:
            async def decode() -> InferenceRequest:
                return codec.decode(await read(), request_headers)

            result = await model.infer(decode)
            encoded = codec.encode(result)
        elif call.action == "ready":
            return json_response({"name": model.name, "version": model.version, "ready": True}, headers=headers)
        else:
            return json_response(model.metadata(versions), headers=headers)
    except RequestError as exc:
        return error_response(exc, headers, model.options.debug)
    except Exception as exc:  # noqa: BLE001 - the handler failed: report it, keep serving
        return failure_response(model.name, model.version, exc, headers, model.options.debug)
    answer_headers = {**headers, **encoded.headers, "x-modelpool-batch-size": str(result.batch_size)}
    if GRAPH_PATH in result.parameters:  # an inference graph's answer says which nodes it went through
        answer_headers[PATH_HEADER] = result.parameters[GRAPH_PATH]
    return Response(encoded.payload, media_type=encoded.media_type, headers=answer_headers)


# --- calls in other servers' URL schemes (TorchServe, KServe V1), passed on by modelpool.deployments.protocol_front ---


async def answer_protocol_call(model, protocol: str, action: str, body: bytes, versions: list[str], headers: dict,
                               request_headers: Mapping[str, str]) -> ProtocolAnswer:
    """Run a TorchServe or KServe V1 call on a loaded model: the same batcher, timeout and metrics as V2.

    ``action`` is ``infer`` (decoded and encoded by the protocol's codec), ``ready`` or ``explain``.
    """
    codec = PROTOCOLS[protocol]
    if action == "ready":
        return 200, codec.ready_body(model.name), {**headers, "content-type": JSON}
    if action == "explain":
        raise codec.no_explainer(model.name, model.version)
    if action != "infer":
        raise RequestError(f"unknown action '{action}'", status=404, field="path")

    async def read() -> bytes:
        return body

    response = await answer_model_call(model, ModelCall(model.version, protocol), read, versions, headers,
                                       request_headers)
    answer_headers = forwarded_headers(response.headers)
    if response.status_code < 400:
        return response.status_code, bytes(response.body), answer_headers
    return protocol_answer(protocol, response.status_code, json.loads(response.body), answer_headers)


def protocol_error(protocol: str, exc: RequestError, headers: dict, debug: bool = False) -> ProtocolAnswer:
    """A refused call in the protocol's error shape (TorchServe's, KServe's)."""
    if exc.status == 401:
        headers = {**headers, "WWW-Authenticate": "Bearer"}
    return protocol_answer(protocol, exc.status, json.loads(error_body(exc, debug)), headers)


def protocol_answer(protocol: str, status: int, error: dict, headers: dict) -> ProtocolAnswer:
    """modelpool's ``{"error", "field"}`` reshaped by the codec; a 503 or 429 says when to retry."""
    headers = {**headers, "content-type": JSON}
    if status in (429, 503):
        headers["Retry-After"] = RETRY_AFTER_S
    return status, PROTOCOLS[protocol].error_body(status, error), headers
