"""REST on a replica's own port: a real ModelServer answering over HTTP/1.1 on the port that answers gRPC.

The port (uvicorn, HTTP/1.1 and HTTP/2 on one socket) runs in this process on 127.0.0.1; the replica is
the real ``ModelServer`` with the example iris archive, so answers are the model's own.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from modelpool.deployments.codecs import PROTOCOLS
from modelpool.deployments.examples import build_examples
from modelpool.deployments.replica_port import ReplicaPort
from modelpool.deployments.model_deployment import ModelServer
from modelpool.deployments.rest_entry import RestApp

BODY = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                    "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}


class RunningPort:
    """The replica's port on its own event loop in a thread, stopped at teardown."""

    def __init__(self, server: ModelServer) -> None:
        self.loop = asyncio.new_event_loop()
        self.rest = RestApp(server.__call__, "/v2/models/iris", "model:iris:1", log_context=lambda *_: None,
                            protocols={codec.ROUTE_PREFIX: functools.partial(server.protocol_request, protocol)
                                       for protocol, codec in PROTOCOLS.items()})
        self.port = ReplicaPort({}, {}, rest=self.rest)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.address = asyncio.run_coroutine_threadsafe(self.port.start("127.0.0.1"), self.loop).result(10)
        self.url = f"http://{self.address}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.port.stop(1.0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> ModelServer:
    store = tmp_path_factory.mktemp("store")
    build_examples(store)
    server = ModelServer(str(store / "iris-1.zip"), str(tmp_path_factory.mktemp("cache")), "iris", "1")
    server.reconfigure({})
    return server


@pytest.fixture
def port(replica: ModelServer) -> Iterator[RunningPort]:
    running = RunningPort(replica)
    yield running
    running.stop()


def test_v2_infer_answers_as_the_replica_does_with_a_request_id(port: RunningPort) -> None:
    with httpx.Client(base_url=port.url) as http:
        answer = http.post("/v2/models/iris/infer", json=BODY, headers={"x-request-id": "trace-1"})
        made_up = http.post("/v2/models/iris/versions/1/infer", json=BODY)
    assert answer.status_code == 200 and answer.http_version == "HTTP/1.1"
    assert answer.json()["outputs"][0]["data"] == [0, 2]
    assert answer.headers["x-request-id"] == "trace-1" and answer.headers["x-modelpool-replica"]
    assert made_up.status_code == 200 and len(made_up.headers["x-request-id"]) == 36


def test_bad_input_gets_the_replicas_error_shape(port: RunningPort) -> None:
    with httpx.Client(base_url=port.url) as http:
        bad = http.post("/v2/models/iris/infer", content=b"{not json")
        unknown = http.post("/v2/models/iris/versions/9/infer", json=BODY)
        wrong_method = http.get("/v2/models/iris/infer")
    assert bad.status_code == 400 and set(bad.json()) == {"error", "field"}
    assert unknown.status_code == 404 and unknown.json()["field"] == "version"
    assert wrong_method.status_code == 405 and "x-request-id" in wrong_method.headers


def test_metadata_and_ready_answer_too(port: RunningPort) -> None:
    with httpx.Client(base_url=port.url) as http:
        assert http.get("/v2/models/iris/ready").json()["ready"] is True
        assert http.get("/v2/models/iris").json()["name"] == "iris"


def test_every_call_writes_an_access_line(port: RunningPort, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ray.serve"), httpx.Client(base_url=port.url) as http:
        http.post("/v2/models/iris/infer", json=BODY)
        http.post("/v2/models/iris/infer", content=b"[]")
        deadline = time.monotonic() + 5  # the line is written once the answer is sent: the client may read first
        while len(access_lines(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = access_lines(caplog)
    assert [line.getMessage().split()[:3] for line in lines] == [
        ["POST", "/v2/models/iris/infer", "200"], ["POST", "/v2/models/iris/infer", "400"]]


def test_calls_in_flight_are_counted_and_drained(port: RunningPort) -> None:
    assert port.port.in_flight == 0
    with httpx.Client(base_url=port.url) as http:
        assert http.post("/v2/models/iris/infer", json=BODY).status_code == 200
    deadline = time.monotonic() + 5  # counted until the answer is sent: the client may read it a moment before
    while port.port.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert port.port.in_flight == 0 and port.rest.in_flight.idle.is_set()


def test_the_log_context_carries_the_request_id() -> None:
    from ray.serve import context

    seen = {}

    async def answer(request):
        seen.update(vars(context._get_serve_request_context()))
        from starlette.responses import Response
        return Response(b"{}", media_type="application/json")

    async def call() -> None:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": [(b"x-request-id", b"r-7")],
                 "query_string": b""}
        await RestApp(answer, "/v2/models/m", "model:m:1")(scope, receive, send)
        assert (b"x-request-id", b"r-7") in sent[0]["headers"]

    asyncio.run(call())
    assert (seen["request_id"], seen["route"], seen["app_name"]) == ("r-7", "/v2/models/m", "model:m:1")
    assert json.dumps(seen, default=str)


def test_torchserve_and_kserve_v1_calls_answer_in_their_own_shapes(port: RunningPort) -> None:
    with httpx.Client(base_url=port.url) as http:
        torchserve = http.post("/predictions/iris/1", json=[5.1, 3.5, 1.4, 0.2])
        kserve = http.post("/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})
        versioned = http.post("/v1/models/iris/versions/1:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
        ready = http.get("/v1/models/iris")
        other_version = http.post("/predictions/iris/7", json=[5.1, 3.5, 1.4, 0.2])
        bad = http.post("/v1/models/iris:predict", content=b"{not json")
    assert torchserve.status_code == 200 and torchserve.json() == 0 and torchserve.headers["x-request-id"]
    assert kserve.status_code == 200 and kserve.json() == {"predictions": [0, 2]}
    assert versioned.status_code == 200 and versioned.json() == {"predictions": [0]}
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert other_version.status_code == 503 and "retry" in other_version.json()["message"]
    assert bad.status_code == 400 and "error" in bad.json()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "serve_access_log", False)]


def test_an_answer_leaves_in_one_segment(port: RunningPort) -> None:
    """Head and body in one send (coalesced_writes): the first read has both, on every kept-alive call."""
    host, number = port.address.rsplit(":", 1)
    with socket.create_connection((host, int(number))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(30):
            sock.sendall(b"GET /v2/models/iris/ready HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = sock.recv(65536)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and body, f"the first read holds the head alone: {answer!r}"
