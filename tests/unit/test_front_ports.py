"""The gRPC front with real HAProxy and real replica ports: registered ports get their app's calls.

``Front`` is the class Serve runs (here without Serve): it starts the front's HAProxy, takes
registrations and probes ports. The replicas are real ``ReplicaPort`` servers answering with their
own name; "Serve's gRPC ingress" is a grpcio server answering ``serve``. So each test sees where
HAProxy sent a call.
"""
from __future__ import annotations

import time
from concurrent import futures
from typing import Iterator

import grpc
import pytest

from modelpool.cluster.net import free_port
from modelpool.deployments.front import Front
from modelpool.deployments.front_config import PORT_SLOTS, port_slots
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.protos.service import InferenceStub
from tests.unit.running_port import RunningPort

APP = "model:iris:1"


def _serve_ingress(request: bytes, context: grpc.ServicerContext) -> bytes:
    return pb.ModelInferResponse(id="serve").SerializeToString()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(_serve_ingress)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture()
def front(upstream) -> Iterator[tuple[Front, InferenceStub]]:
    port = free_port()
    front = Front({"host": "127.0.0.1", "grpc_port": port, "grpc_upstream": upstream}, 1, "management", "generic-pool")
    front.reconfigure({"routes": {"iris/": APP, "iris/1": APP}})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield front, InferenceStub(channel)
    finally:
        channel.close()
        front.__del__()


def served_by(stub: InferenceStub, name: str = "iris", version: str = "") -> str:
    return stub.ModelInfer(pb.ModelInferRequest(model_name=name, model_version=version), timeout=10).id


def test_calls_of_an_app_go_to_its_registered_ports_and_others_to_serve(front):
    process, stub = front
    assert served_by(stub) == "serve", "no port registered yet: Serve's path"
    replicas = [RunningPort("replica-a"), RunningPort("replica-b")]
    try:
        for replica in replicas:
            process.register(APP, replica.served_by, replica.address)
        answers = {served_by(stub, version=v) for v in ("", "1") for _ in range(40)}
        assert answers == {"replica-a", "replica-b"}, "both replicas take calls, by the name or by the version"
        assert served_by(stub, "textlen") == "serve", "the generic pool's models keep Serve's path"
        process.unregister(APP, "replica-a")
        assert {served_by(stub) for _ in range(30)} == {"replica-b"}, "the very next call sees the withdrawal"
    finally:
        for replica in replicas:
            replica.close()


def test_a_port_that_dies_costs_no_call_and_is_dropped(front):
    """The port refuses connections: HAProxy passes the call to Serve's gRPC ingress instead."""
    process, stub = front
    replica = RunningPort("replica-a")
    process.register(APP, replica.served_by, replica.address)
    assert served_by(stub) == "replica-a"
    replica.close()
    assert [served_by(stub) for _ in range(10)] == ["serve"] * 10
    deadline = time.monotonic() + 5
    while process.ports and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process.ports, "the prober drops a port that stopped answering"
    assert served_by(stub) == "serve"


def test_many_calls_over_one_connection_all_succeed(front):
    """The front retires a connection to a port before zttp's 4,096-stream limit would drop it."""
    process, stub = front
    replica = RunningPort("replica-a")
    try:
        process.register(APP, replica.served_by, replica.address)
        failures: list[str] = []
        for _ in range(20):  # 5,000 calls, 250 in flight at a time
            calls = [stub.ModelInfer.future(pb.ModelInferRequest(model_name="iris"), timeout=60) for _ in range(250)]
            failures += [f"{f.exception().code()}: {f.exception().details()}" for f in calls if f.exception()]
        assert failures == [], failures[:5]
    finally:
        replica.close()


def test_replicas_share_the_slots_evenly():
    slots = port_slots({APP: {"a": "10.0.0.1:7001", "b": "10.0.0.2:7002", "c": "[::1]:7003"}, "empty": {}})
    assert len(slots) == PORT_SLOTS
    assert sorted(slots.values()).count("10.0.0.1|7001") == PORT_SLOTS // 3
    assert "::1|7003" in slots.values() and f"{APP}@0" in slots
