"""The gRPC front with a real HAProxy: calls reach the application serving the model they name.

Upstream is a plain grpcio server standing in for Serve's gRPC ingress: it answers every call with
the ``application`` header it received (in trailing metadata) and the status a client chose, so
each test sees exactly where HAProxy sent the call and that codes and details come back whole.
"""
from __future__ import annotations

from concurrent import futures
from typing import Iterator

import grpc
import pytest

from modelpool.cluster.net import free_port
from modelpool.deployments.front import FrontProcess
from modelpool.deployments.front_config import PORT_GONE_MESSAGE, Listeners, render_config, render_map, route_key
from modelpool.deployments.protos import open_inference_pb2 as pb

PATH = "/inference.GRPCInferenceService/"


class _Echo(grpc.GenericRpcHandler):
    """Any call: trailing metadata says which application and method it reached; ``fail-with`` sets a status."""

    def service(self, details: grpc.HandlerCallDetails):
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = dict(context.invocation_metadata())
            context.set_trailing_metadata((("routed-to", metadata.get("application", "")),
                                           ("method", details.method), ("size", str(len(request)))))
            if "fail-with" in metadata:
                context.abort(grpc.StatusCode[metadata["fail-with"]], metadata.get("fail-details", "details from the replica"))
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture()
def front(upstream) -> Iterator[tuple[FrontProcess, grpc.Channel]]:
    port = free_port()
    process = FrontProcess(Listeners("127.0.0.1", grpc_port=port, grpc_upstream=upstream), workers=1, management_app="management",
                           pool_app="generic-pool", routes={"iris/": "model:iris:2", "iris/1": "model:iris:1",
                                                             "iris/2": "model:iris:2"})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield process, channel
    finally:
        channel.close()
        process.close()


def call(channel: grpc.Channel, method: str, message, metadata=()) -> dict:
    stub = channel.unary_unary(PATH + method, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=lambda b: b)
    _, outcome = stub.with_call(message, metadata=metadata, timeout=10)
    return dict(outcome.trailing_metadata())


def routed(channel: grpc.Channel, name: str, version: str = "", method: str = "ModelInfer") -> str:
    message = {"ModelInfer": pb.ModelInferRequest(model_name=name, model_version=version),
               "ModelReady": pb.ModelReadyRequest(name=name, version=version),
               "ModelMetadata": pb.ModelMetadataRequest(name=name, version=version)}[method]
    return call(channel, method, message)["routed-to"]


def test_model_calls_go_to_the_app_of_the_model_and_version_they_name(front):
    _, channel = front
    assert routed(channel, "iris") == "model:iris:2"
    assert routed(channel, "iris", "1") == "model:iris:1"
    assert routed(channel, "iris", "2", "ModelReady") == "model:iris:2"
    assert routed(channel, "iris", "1", "ModelMetadata") == "model:iris:1"


def test_models_without_an_app_and_unknown_ones_go_to_the_generic_pool(front):
    _, channel = front
    assert routed(channel, "textlen") == "generic-pool"
    assert routed(channel, "iris", "7") == "generic-pool"  # the pool answers NOT_FOUND naming the versions
    assert routed(channel, "") == "generic-pool"


def test_calls_that_name_no_model_go_to_management_whatever_header_the_client_sent(front):
    _, channel = front
    assert call(channel, "ServerLive", pb.ServerLiveRequest())["routed-to"] == "management"
    assert call(channel, "RepositoryIndex", pb.RepositoryIndexRequest(),
                metadata=(("application", "model:iris:1"),))["routed-to"] == "management"


def test_a_large_message_is_routed_by_its_first_fields(front):
    _, channel = front
    message = pb.ModelInferRequest(model_name="iris", model_version="1", raw_input_contents=[b"\x00" * 600_000])
    trailers = call(channel, "ModelInfer", message)
    assert trailers["routed-to"] == "model:iris:1" and int(trailers["size"]) == message.ByteSize()


def test_statuses_and_details_from_the_replica_come_back_whole(front):
    _, channel = front
    with pytest.raises(grpc.RpcError) as failed:
        call(channel, "ModelInfer", pb.ModelInferRequest(model_name="iris"), metadata=(("fail-with", "NOT_FOUND"),))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND and failed.value.details() == "details from the replica"


def test_an_application_serve_does_not_know_yet_is_unavailable_not_not_found(front):
    """Serve's NOT_FOUND for a routed app with no running replica becomes V2's retryable UNAVAILABLE."""
    _, channel = front
    serve_says = (("fail-with", "NOT_FOUND"),
                  ("fail-details", "Application 'model:iris:1' not found. Ping /ray.serve.RayServeAPIService/..."))
    with pytest.raises(grpc.RpcError) as starting:
        call(channel, "ModelInfer", pb.ModelInferRequest(model_name="iris", model_version="1"), metadata=serve_says)
    assert starting.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in starting.value.details()
    with pytest.raises(grpc.RpcError) as model_says:
        call(channel, "ModelInfer", pb.ModelInferRequest(model_name="x"),
             metadata=(("fail-with", "NOT_FOUND"), ("fail-details", "unknown model 'x'; served models: iris")))
    assert model_says.value.code() == grpc.StatusCode.NOT_FOUND and model_says.value.details().startswith("unknown")


def test_a_call_cancelled_by_the_server_is_unavailable_to_the_client(front):
    """Serve's path answers CANCELLED when the replica it chose died under the call: a client that did not cancel
    gets V2's retryable UNAVAILABLE."""
    _, channel = front
    with pytest.raises(grpc.RpcError) as gone:
        call(channel, "ModelInfer", pb.ModelInferRequest(model_name="iris"), metadata=(("fail-with", "CANCELLED"),))
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE and gone.value.details() == PORT_GONE_MESSAGE


def test_a_compressed_model_call_is_unimplemented_with_the_fix(front):
    _, channel = front
    stub = channel.unary_unary(PATH + "ModelInfer", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as compressed:
        stub(pb.ModelInferRequest(model_name="iris", raw_input_contents=[b"\x00" * 4096]), timeout=10,
             compression=grpc.Compression.Gzip)
    assert compressed.value.code() == grpc.StatusCode.UNIMPLEMENTED and "uncompressed" in compressed.value.details()


def test_a_new_routing_table_is_seen_by_the_next_call(front):
    process, channel = front
    process.set_routes({"iris/": "model:iris:1", "textlen/": "model:textlen:1"})
    assert routed(channel, "iris") == "model:iris:1"
    assert routed(channel, "textlen") == "model:textlen:1"
    assert routed(channel, "iris", "2") == "generic-pool"  # gone from the table
    assert render_map({"b/": "x", "a/1": "y"}) == "a/1 y\nb/ x\n"
    assert route_key("iris") == "iris/" and route_key("iris", "3") == "iris/3"


def test_a_busy_port_is_a_clear_error_and_leaves_nothing(upstream):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match="in use"):
            FrontProcess(Listeners("127.0.0.1", grpc_port=port, grpc_upstream=upstream), workers=1, management_app="m",
                         pool_app="p", start_timeout_s=5)


def test_the_config_binds_the_given_host_and_threads():
    from pathlib import Path

    text = render_config(Listeners("::1", grpc_port=8001, grpc_upstream="127.0.0.1:9001"), workers=3, map_path=Path("/m"),
                         socket_path=Path("/s"), management_app="management", pool_app="generic-pool",
                         ports_path=Path("/p"), limits_path=Path("/l"))
    assert "bind [::1]:8001 proto h2" in text and "nbthread 3" in text and "server serve 127.0.0.1:9001 proto h2" in text
