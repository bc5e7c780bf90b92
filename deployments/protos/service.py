"""The V2 gRPC service, declared by hand under Triton's name over our package-renamed messages.

open_inference.proto puts its messages in package ``modelpool.inference`` so that they can share a
process with tritonclient's and KServe's generated code (which own ``inference.*`` in protobuf's
descriptor pool). A full message name never goes on the wire, but the method path does: clients call
``/inference.GRPCInferenceService/<Call>``. A ``service`` block in that file would register
``/modelpool.inference.GRPCInferenceService/<Call>`` instead, so the service lives here, where its
name is a plain string. tests/unit/test_protos.py checks ``METHODS`` against tritonclient's service.
"""
from __future__ import annotations

from typing import Any, Callable

import grpc

from modelpool.deployments.protos import open_inference_pb2 as pb

SERVICE_NAME = "inference.GRPCInferenceService"
"""Triton's (and KServe's) service name: the first part of every method path clients call."""

METHODS: dict[str, tuple[type, type]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse),
}
"""Every call we serve (all unary-unary) -> (request message class, response message class)."""

SERVICER_FUNCTION = "modelpool.deployments.protos.service.add_inference_servicer_to_server"
"""The import path to list in Serve's ``gRPCOptions.grpc_servicer_functions``."""


def method_path(name: str) -> str:
    """The HTTP/2 path of one call, e.g. ``/inference.GRPCInferenceService/ModelInfer``."""
    return f"/{SERVICE_NAME}/{name}"


def _unimplemented(name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A handler for a call the servicer lacks: UNIMPLEMENTED, as a generated base servicer answers."""

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"{name} is not implemented")
        raise NotImplementedError(f"{name} is not implemented")

    return handler


def add_inference_servicer_to_server(servicer: Any, server: Any) -> None:
    """Register all the calls of ``servicer`` on ``server`` (a grpc or grpc.aio server).

    Every call in ``METHODS`` is registered, whatever the servicer implements: Serve calls this with
    a ``unittest.mock.Mock`` as servicer only to learn the method paths (it then swaps each handler
    for one that routes to the replica method named after the call), and a plain server given a
    servicer without some call answers that call UNIMPLEMENTED rather than not knowing the path.
    Serve's server reads the handler's ``_method_handlers``, so this passes exactly one handler made
    by ``grpc.method_handlers_generic_handler``, as the code grpcio-tools generates does.
    """
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name, None) or _unimplemented(name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class InferenceStub:
    """A minimal client of the service, for tests and benchmarks (grpc.Channel or grpc.aio.Channel).

    Each call in ``METHODS`` is an attribute, e.g. ``InferenceStub(channel).ServerLive(request)``.
    """

    # Multi-callables: called with a request message (and call options), they return the response.
    ServerLive: Any
    ServerReady: Any
    ModelReady: Any
    ServerMetadata: Any
    ModelMetadata: Any
    ModelInfer: Any
    RepositoryIndex: Any
    RepositoryModelLoad: Any
    RepositoryModelUnload: Any

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        for name, (request, response) in METHODS.items():
            setattr(self, name, channel.unary_unary(
                method_path(name),
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            ))
