"""A replica's own gRPC port (HTTP/2 on uvicorn) answering grpcio's own client: messages, statuses, drain.

The port runs on an event loop in a background thread, as it does on a replica's loop; the
methods are small stand-ins for a replica's ModelInfer/ModelReady, so each test sees what the
port itself does: framing, trailers, status codes and messages, metadata, shutdown.
"""
from __future__ import annotations

import socket
import time
from typing import Iterator

import grpc
import pytest

from modelpool.deployments.replica_port import frame, status_trailers, unframe
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.protos.service import InferenceStub
from tests.unit.running_port import RunningPort

@pytest.fixture()
def running() -> Iterator[RunningPort]:
    port = RunningPort()
    try:
        yield port
    finally:
        port.close()


@pytest.fixture()
def stub(running) -> Iterator[InferenceStub]:
    with grpc.insecure_channel(running.address) as channel:
        yield InferenceStub(channel)


def test_a_call_is_answered_with_its_message_and_sees_its_metadata(stub):
    reply, call = stub.ModelInfer.with_call(pb.ModelInferRequest(model_name="iris"),
                                            metadata=[("authorization", "Bearer t")], timeout=10)
    assert reply.model_name == "iris" and reply.id == "Bearer t"
    assert dict(call.initial_metadata())["x-modelpool-replica"] == "replica-1", "the port's headers go out"
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris"), timeout=10).ready is True


def test_a_status_set_by_the_method_reaches_the_client_with_its_message_whole(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="fail"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "unknown model 'fail' — naïve 100% wrong", "percent-encoded, then decoded"


def test_a_malformed_message_is_invalid_argument_naming_the_call(running):
    with grpc.insecure_channel(running.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInfer request" in caught.value.details()


def test_a_call_the_port_does_not_answer_is_unimplemented(running):
    with grpc.insecure_channel(running.address) as channel:
        for path in ("/inference.GRPCInferenceService/ServerLive", "/other.Service/ModelInfer"):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(path)(b"", timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, path
            assert "ModelInfer" in caught.value.details()


def test_a_method_that_raises_is_internal_and_the_port_keeps_serving(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="crash"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL and "a bug in the replica" in caught.value.details()
    assert stub.ModelInfer(pb.ModelInferRequest(model_name="iris"), timeout=10).model_name == "iris"


def test_stop_answers_the_calls_in_flight_then_closes_the_port():
    running = RunningPort()
    host, port = running.address.rsplit(":", 1)
    with grpc.insecure_channel(running.address) as channel:
        pending = InferenceStub(channel).ModelInfer.future(pb.ModelInferRequest(model_name="slow"), timeout=10)
        deadline = time.monotonic() + 5
        while running.port.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.port.in_flight == 1
        running.close()
        assert pending.result().model_name == "slow", "a call in flight is answered, not cut"
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), 1).close()


def test_framing_is_checked_and_trailers_follow_the_protocol():
    assert unframe(frame(b"abc")) == b"abc"
    for body, words in ((b"\x00\x00", "5-byte prefix"), (b"\x01\x00\x00\x00\x00", "uncompressed"),
                        (b"\x00\x00\x00\x00\x09abc", "says 9 bytes but 3 follow")):
        with pytest.raises(ValueError, match=words):
            unframe(body)
    assert status_trailers(grpc.StatusCode.OK, "") == [(b"grpc-status", b"0")]
    assert status_trailers(grpc.StatusCode.UNAVAILABLE, "50% done\n") == [(b"grpc-status", b"14"),
                                                                          (b"grpc-message", b"50%25 done%0A")]
