"""A graph's model calls on a replica's own port: the real port (uvicorn, its REST app) in process and the graph's
HTTP/1.1 client; binary tensors both ways, kept-open connections, statuses passed through, a closed port falls back."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from starlette.requests import Request
from starlette.responses import Response

from modelpool.deployments.codecs import v2_binary
from modelpool.deployments.errors import RequestError
from modelpool.deployments.graph_plan import PlanNode
from modelpool.deployments.http_io import error_response, request_headers
from modelpool.deployments.node_ports import NodePorts
from modelpool.deployments.replica_port import ReplicaPort
from modelpool.deployments.rest_entry import RestApp
from modelpool.deployments.tensors import InferenceResult

NODE = PlanNode(name="classify", kind="model", model="iris", version="1", app="model:iris:1", deployment="iris_v1")


async def model_infer(request: Request) -> Response:
    """What a model replica's port answers: doubles its input; a negative one is the model's 422."""
    decoded = v2_binary.decode(await request.body(), request_headers(request))
    data = decoded.inputs[0].data
    if (data < 0).any():
        return error_response(RequestError("negative lengths", status=422, field="inputs"), {})
    assert request.headers.get("authorization") == "Bearer t"
    assert request.url.path == "/v2/models/iris/versions/1/infer"
    encoded = v2_binary.encode(InferenceResult("iris", "1", decoded, {"predict": data * 2}))
    return Response(encoded.payload, media_type=encoded.media_type, headers=encoded.headers)


@pytest.fixture()
def port():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ReplicaPort({}, rest=RestApp(model_infer, "/v2/models/iris"))
    address = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1"), loop).result(10)
    yield address
    asyncio.run_coroutine_threadsafe(server.stop(5), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def call(ports: NodePorts, *messages) -> list:
    async def go():
        ports._first = asyncio.Event()
        ports._first.set()
        ports._task = asyncio.get_running_loop().create_task(asyncio.sleep(0))  # no front here: the table is set
        try:
            return [await ports.call(NODE, message, "Bearer t") for message in messages]
        finally:
            ports.close()

    return asyncio.run(go())


def test_a_model_node_is_answered_on_its_replicas_port_over_one_kept_connection(port):
    ports = NodePorts()
    ports.ports = {"model:iris:1": [port]}
    first, second = call(ports, {"input-0": np.array([[1.0, 2.0]])}, {"input-0": np.array([[3.0, 4.0]])})
    assert first.status == 200 and first.outputs["predict"].tolist() == [[2.0, 4.0]]
    assert second.outputs["predict"].tolist() == [[6.0, 8.0]]


def test_the_models_own_status_passes_through(port):
    ports = NodePorts()
    ports.ports = {"model:iris:1": [port]}
    (answer,) = call(ports, {"input-0": np.array([[-1.0, 2.0]])})
    assert (answer.status, answer.error) == (422, "negative lengths")


def test_no_port_known_or_a_closed_port_means_the_handle_path(port):
    assert call(NodePorts(), {"input-0": np.array([[1.0]])}) == [None]
    ports = NodePorts()
    ports.ports = {"model:iris:1": ["127.0.0.1:1"]}
    assert call(ports, {"input-0": np.array([[1.0]])}) == [None]
    assert ports.ports["model:iris:1"] == [], "the dead port is forgotten until the front lists it again"


def test_binary_requests_and_answers_round_trip_every_dtype():
    arrays = {"f": np.array([[1.5, 2.5]]), "i": np.array([[1, 2]], dtype=np.int32), "s": np.array(["a", "bé"])}
    body, length = v2_binary.client_request(arrays, ["out"])
    decoded = v2_binary.decode(body, {"inference-header-content-length": str(length)})
    assert [t.name for t in decoded.inputs] == ["f", "i", "s"] and decoded.requested_outputs == ("out",)
    encoded = v2_binary.encode(InferenceResult("m", "1", decoded, {t.name: t.data for t in decoded.inputs}))
    back = v2_binary.client_response(encoded.payload, encoded.headers["Inference-Header-Content-Length"])
    assert back["f"].tolist() == [[1.5, 2.5]] and back["i"].dtype == np.int32 and back["s"].tolist() == ["a", "bé"]


def test_requests_that_arrive_together_share_one_call_and_a_bad_one_fails_alone(port):
    ports = NodePorts()
    ports.ports = {"model:iris:1": [port]}
    sent = []
    exchange = ports._exchange

    async def counted(address, data):
        sent.append(data)
        return await exchange(address, data)

    ports._exchange = counted

    async def go():
        ports._first = asyncio.Event()
        ports._first.set()
        ports._task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        try:
            good = [ports.call(NODE, {"input-0": np.array([[float(i), 1.0]])}, "Bearer t") for i in range(5)]
            bad = ports.call(NODE, {"input-0": np.array([[-1.0, 1.0]])}, "Bearer t")
            return await asyncio.gather(*good, bad)
        finally:
            ports.close()

    answers = asyncio.run(go())
    assert [a.outputs["predict"].tolist() for a in answers[:5]] == [[[2.0 * i, 2.0]] for i in range(5)]
    assert (answers[5].status, answers[5].error) == (422, "negative lengths")
    assert len(sent) == 1 + 6, "one call for the six that came together, then each alone after its refusal"
