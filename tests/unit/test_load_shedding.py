"""Load shedding on a replica's own port, over real HTTP/1.1 and gRPC: a full replica answers 429 (gRPC:
RESOURCE_EXHAUSTED) at once with Retry-After, waiting calls are answered once a place frees, and readiness
and metadata are never refused.

The port is the real uvicorn server of ``replica_port`` on its own loop; the inference entry point is a
stand-in that holds each call until the test lets it go, so the gate's state is exact, not timed.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelpool.deployments.admission import Admission, Refusal, refusal_message
from modelpool.deployments.examples import build_examples
from modelpool.deployments.model_deployment import ModelServer
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.protos.service import InferenceStub
from modelpool.deployments.replica_port import CallContext, GrpcMethod, ReplicaPort
from modelpool.deployments.rest_entry import RestApp

MESSAGE = refusal_message("iris", "1", 1, 1)


class HeldPort:
    """A replica port whose inference calls (REST POST and gRPC ModelInfer) wait until ``release``."""

    def __init__(self, max_ongoing: int = 1, max_queued: int = 1) -> None:
        self.refused: list[str] = []
        self.admission = Admission(max_ongoing, max_queued, Refusal.of(MESSAGE, {"x-modelpool-replica": "r1"}),
                                   on_refuse=self.refused.append)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gate = self.run(self._event())
        self.entered = 0
        rest = RestApp(self.answer, "/v2/models/iris", "model:iris:1", log_context=lambda *_: None,
                       admission=self.admission)
        self.port = ReplicaPort({"ModelInfer": GrpcMethod(pb.ModelInferRequest, self.infer),
                                 "ModelReady": GrpcMethod(pb.ModelReadyRequest, self.ready)}, {}, rest=rest,
                                admission=self.admission)
        self.url = "http://" + self.run(self.port.start("127.0.0.1"))
        self.address = self.url.removeprefix("http://")

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def answer(self, request: Request) -> Response:
        if request.method == "POST":
            self.entered += 1
            await self.gate.wait()
        return JSONResponse({"ok": True, "path": request.url.path})

    async def infer(self, request: pb.ModelInferRequest, context: CallContext) -> pb.ModelInferResponse:
        self.entered += 1
        await self.gate.wait()
        return pb.ModelInferResponse(model_name=request.model_name)

    async def ready(self, request: pb.ModelReadyRequest, context: CallContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def wait_for(self, predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)

    def close(self) -> None:
        self.release()
        self.run(self.port.stop(5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture()
def held() -> Iterator[HeldPort]:
    port = HeldPort()
    try:
        yield port
    finally:
        port.close()


def test_a_full_replica_refuses_at_once_with_retry_after_and_answers_the_calls_it_took(held):
    with ThreadPoolExecutor(2) as pool, httpx.Client(base_url=held.url, timeout=10) as client:
        running = pool.submit(httpx.post, held.url + "/v2/models/iris/infer", json={}, timeout=10)
        held.wait_for(lambda: held.entered == 1)
        waiting = pool.submit(httpx.post, held.url + "/v2/models/iris/infer", json={}, timeout=10)
        held.wait_for(lambda: held.admission.queued == 1)

        started = time.perf_counter()
        refused = client.post("/v2/models/iris/infer", json={"inputs": []}, headers={"x-request-id": "shed-1"})
        took = time.perf_counter() - started
        assert refused.status_code == 429 and took < 0.5
        assert refused.headers["retry-after"] == "1" and refused.headers["x-request-id"] == "shed-1"
        assert refused.headers["x-modelpool-replica"] == "r1"
        assert refused.json() == {"error": MESSAGE, "field": "max_queued_requests"}
        assert "iris" in MESSAGE and "max_queued_requests" in MESSAGE and "add workers" in MESSAGE

        ready = client.get("/v2/models/iris/ready")
        assert ready.status_code == 200, "a read is never shed, even when the queue is full"

        held.release()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
        assert held.entered == 2 and held.refused == ["rest"]
    assert held.admission.ongoing == 0 and held.admission.queued == 0


def test_a_full_replica_answers_grpc_resource_exhausted_and_still_answers_readiness(held):
    with grpc.insecure_channel(held.address) as channel, ThreadPoolExecutor(2) as pool:
        stub = InferenceStub(channel)
        running = pool.submit(stub.ModelInfer, pb.ModelInferRequest(model_name="iris"), timeout=10)
        held.wait_for(lambda: held.entered == 1)
        waiting = pool.submit(stub.ModelInfer, pb.ModelInferRequest(model_name="iris"), timeout=10)
        held.wait_for(lambda: held.admission.queued == 1)

        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(pb.ModelInferRequest(model_name="iris"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == MESSAGE
        assert stub.ModelReady(pb.ModelReadyRequest(name="iris"), timeout=10).ready

        held.release()
        assert running.result().model_name == "iris" and waiting.result().model_name == "iris"
        assert held.refused == ["grpc"]


def test_rest_and_grpc_share_one_queue(held):
    with grpc.insecure_channel(held.address) as channel, ThreadPoolExecutor(2) as pool:
        running = pool.submit(InferenceStub(channel).ModelInfer, pb.ModelInferRequest(model_name="iris"), timeout=10)
        held.wait_for(lambda: held.entered == 1)
        waiting = pool.submit(httpx.post, held.url + "/v2/models/iris/infer", json={}, timeout=10)
        held.wait_for(lambda: held.admission.queued == 1)
        assert httpx.post(held.url + "/v2/models/iris/infer", json={}, timeout=10).status_code == 429
        held.release()
        assert running.result().model_name == "iris" and waiting.result().status_code == 200


@pytest.fixture(scope="module")
def iris_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    build_examples(store)
    return store


def test_a_model_replica_takes_its_limits_from_user_config_live(iris_store, tmp_path):
    server = ModelServer(str(iris_store / "iris-1.zip"), str(tmp_path), "iris", "1")
    server.reconfigure({"max_ongoing_requests": 8, "max_queued_requests": 3})
    assert (server.admission.max_ongoing, server.admission.max_queued) == (8, 3)
    refusal = json.loads(server.admission.refusal.body)
    assert refusal == {"error": refusal_message("iris", "1", 8, 3), "field": "max_queued_requests"}
    assert (b"x-modelpool-replica", server.replica_id.encode()) in server.admission.refusal.headers
    server.reconfigure({"max_ongoing_requests": 8, "max_queued_requests": 0})
    assert server.admission.max_queued == 0 and "none may wait" in server.admission.refusal.message
