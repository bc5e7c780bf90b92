"""The V2 gRPC entry point of model replicas: ModelInfer, ModelReady and ModelMetadata.

The gRPC twin of ``model_calls``: Serve's gRPC ingress calls the replica method named after the
call with the parsed message and a context; these functions check the inference token, run the
shared data plane through ``codecs.v2_grpc`` and turn every :class:`RequestError` into the gRPC
status V2 clients expect (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, UNAVAILABLE, ...) with the
same message the REST routes give. Metrics and the response_timeout apply as they do over REST.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from modelpool.deployments import deadlines, tracing
from modelpool.deployments.codecs import v2_grpc
from modelpool.deployments.errors import RequestError
from modelpool.deployments.http_io import check_authorization
from modelpool.deployments.model_calls import overdue_error, span_attributes
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.redact import public_message
from modelpool.deployments.serving_options import ServingOptions
from modelpool.deployments.tensors import InferenceRequest

logger = logging.getLogger("ray.serve")
GRPC_ROUTE = "grpc"  # the ``route`` label of gRPC calls in modelpool's request metrics


def check_token(context: Any, options: ServingOptions) -> None:
    """UNAUTHENTICATED unless the ``authorization`` metadata carries a token model calls accept (when one is set)."""
    if not options.inference_token_sha256:
        return
    metadata = dict(context.invocation_metadata()) if context is not None else {}
    check_authorization(metadata.get("authorization", ""), options, "the metadata 'authorization: Bearer <token>'")


def fail(context: Any, exc: RequestError, debug: bool = False) -> None:
    """Put a client error on the call's status; the message is the one REST would give."""
    if context is not None:
        context.set_code(v2_grpc.grpc_status(exc.status))
        context.set_details(exc.message if debug else public_message(exc.message))


def check_version(requested: str, name: str, version: str, versions: list[str]) -> None:
    """A dedicated app answers only for its own version (the gRPC front routes every other one elsewhere)."""
    if requested and requested != version:
        raise RequestError(f"model '{name}' has no version '{requested}' here; served versions: {', '.join(versions)}",
                           status=404, field="model_version")


async def model_infer(model, message: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    """Decode, batch with every other request of the model (REST ones too), encode; count it in the metrics."""
    started = time.perf_counter()
    status = 200
    scope = tracing.span(f"model {model.name}:{model.version} infer",
                         span_attributes(model, GRPC_ROUTE)) if tracing.active() else tracing.NO_SCOPE
    with scope as traced:
        try:
            async def decode() -> InferenceRequest:
                return v2_grpc.decode(message)

            try:
                result = await deadlines.within(model.response_timeout_s, model.infer(decode))
            except asyncio.TimeoutError:
                raise overdue_error(model) from None
            return v2_grpc.encode(result)
        except RequestError as exc:
            status = exc.status
            fail(context, exc, model.options.debug)
        except Exception as exc:  # noqa: BLE001 - the handler failed: report it, keep serving
            status = 500
            text = f"model '{model.name}' version '{model.version}' failed: {type(exc).__name__}: {exc}"
            logger.error(text, exc_info=exc if model.options.debug else None)
            if context is not None:
                context.set_code(v2_grpc.grpc_status(500))
                context.set_details(text if model.options.debug else public_message(text))
        finally:
            tracing.mark_error(traced, status)
            model.metrics.request(GRPC_ROUTE, status, (time.perf_counter() - started) * 1000)
    return pb.ModelInferResponse()


def model_ready(ready: bool) -> pb.ModelReadyResponse:
    return pb.ModelReadyResponse(ready=ready)


def model_metadata(model, versions: list[str]) -> pb.ModelMetadataResponse:
    """The same metadata as ``GET /v2/models/{name}``, as the gRPC message."""
    body = model.metadata(versions)
    response = pb.ModelMetadataResponse(name=body["name"], versions=body["versions"], platform=body["platform"])
    for kind in ("inputs", "outputs"):
        for tensor in body[kind]:
            getattr(response, kind).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response

