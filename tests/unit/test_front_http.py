"""The front's HTTP listener with a real HAProxy: V2 model paths go straight to a registered replica port.

"Serve's HTTP ingress" is a uvicorn server answering ``serve``; the replicas are real ``ReplicaPort``
servers whose REST app (``rest_entry.RestApp``) answers with the replica's name, the path it got and
the body's length. So each test sees where HAProxy sent a request and what arrived there.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from typing import Iterator

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from loadtests.port_on_its_loop import PortOnItsLoop
from modelpool.cluster.net import free_port
from modelpool.deployments.front import Front, FrontProcess
from modelpool.deployments.front_config import REST_TIMEOUT_MESSAGE, SERVE_LOST_MESSAGE, Listeners

APP = "model:iris:1"
V2_APP = "model:iris:2"
SLOW_S = 1.5
SERVE_ERROR_PAGE = "Internal Server Error"  # the body of Serve's HAProxy's errorfile for its 502, 503 and 504


class ServeIngress:
    """A stand-in for Serve's HTTP ingress on a thread: every request is answered ``serve``, except below ``/lost``.

    There it answers as Serve's HAProxy does when the replica it chose is lost: its one error page, a bare text
    ``500 Internal Server Error``. ``/lost-once/...`` does so to the first request of each path only; ``/broken``
    answers a JSON 500, as an application's own error. ``calls`` counts the requests of each path."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = await Request(scope, receive).body()
            path = scope["path"]
            self.calls[path] += 1
            if path.startswith("/lost/") or (path.startswith("/lost-once/") and self.calls[path] == 1):
                answer: Response = PlainTextResponse(SERVE_ERROR_PAGE, status_code=500)
            elif path == "/broken":
                answer = JSONResponse({"error": "the application's own error"}, status_code=500)
            else:
                answer = JSONResponse({"served_by": "serve", "path": path, "body": len(body)})
            await answer(scope, receive, send)

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


class Replica(PortOnItsLoop):
    """A replica's port answering REST with its name, on its own event loop."""

    def __init__(self, name: str) -> None:
        async def answer(request: Request) -> Response:
            body = await request.body()
            if request.url.path.endswith("/slow"):
                await asyncio.sleep(SLOW_S)
            return JSONResponse({"served_by": name, "path": request.scope["path"], "body": len(body),
                                 "below_root": request.scope["path"][len(request.scope["root_path"]):]})

        super().__init__(answer, "/v2/models/iris", APP)

    def close(self) -> None:
        """Drained: a slow request the front gave up on still ends here before the port closes."""
        super().close(SLOW_S + 1)


@pytest.fixture(scope="module")
def serve_ingress() -> Iterator[ServeIngress]:
    ingress = ServeIngress()
    yield ingress
    ingress.close()


@pytest.fixture()
def front(serve_ingress: ServeIngress) -> Iterator[tuple[Front, httpx.Client]]:
    port = free_port()
    front = Front({"host": "127.0.0.1", "http_port": port, "http_upstream": f"127.0.0.1:{serve_ingress.port}",
                   "timeout_s": 1}, 1, "management", "generic-pool")
    front.reconfigure({"routes": {"iris/": APP, "iris/1": APP, "iris/2": V2_APP}})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield front, client
    finally:
        client.close()
        front.__del__()


def served_by(client: httpx.Client, path: str, body: bytes = b"{}") -> str:
    answer = client.post(path, content=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["served_by"]


def test_model_paths_of_an_app_with_ports_go_to_its_replicas_and_the_rest_to_serve(front):
    process, client = front
    replica = Replica("replica-a")
    try:
        assert served_by(client, "/v2/models/iris/infer") == "serve", "no port registered yet: Serve's path"
        process.register(APP, "a", replica.address)
        assert served_by(client, "/v2/models/iris/infer") == "replica-a"
        assert served_by(client, "/v2/models/iris/versions/1/infer") == "replica-a"
        assert client.get("/v2/models/iris").json()["served_by"] == "replica-a", "metadata: the model path itself"
        assert client.get("/v2/models/iris/ready?verbose=1").json()["below_root"] == "/ready"
        assert served_by(client, "/v2/models/iris/versions/2/infer") == "serve", "version 2's app has no port"
        assert served_by(client, "/v2/models/iris/versions/3/infer") == "serve", "not in the table: Serve knows"
        assert served_by(client, "/v2/models/iris2/infer") == "serve"
        assert served_by(client, "/v2/models/") == "serve"
        assert client.get("/v2/health/ready").json()["served_by"] == "serve"
        assert client.get("/models?limit=2").json()["path"] == "/models"
        assert client.post("/predictions/iris2", content=b"1").json()["served_by"] == "serve"
    finally:
        replica.close()


def test_torchserve_and_kserve_v1_paths_of_a_routed_model_go_to_its_replicas_too(front):
    process, client = front
    replica = Replica("replica-a")
    try:
        process.register(APP, "a", replica.address)
        assert served_by(client, "/predictions/iris") == "replica-a"
        assert served_by(client, "/predictions/iris/1") == "replica-a"
        assert served_by(client, "/predictions/iris/2") == "serve", "version 2's app has no port"
        assert served_by(client, "/v1/models/iris:predict") == "replica-a"
        assert served_by(client, "/v1/models/iris/versions/1:predict") == "replica-a"
        assert served_by(client, "/v1/models/iris/versions/2:predict") == "serve", "version 2's app has no port"
        assert client.get("/v1/models/iris").json()["served_by"] == "replica-a", "KServe V1 readiness"
        assert client.get("/v1/models").json()["served_by"] == "serve", "the list of models is the protocol front's"
        assert served_by(client, "/v1/models/iris2:predict") == "serve"
        assert served_by(client, "/explanations/iris") == "serve"
    finally:
        replica.close()


def test_a_body_arrives_whole_over_kept_connections(front):
    process, client = front
    replica = Replica("replica-a")
    try:
        process.register(APP, "a", replica.address)
        body = json.dumps({"inputs": [{"data": list(range(20_000))}]}).encode()
        answers = [client.post("/v2/models/iris/infer", content=body).json() for _ in range(200)]
        assert {(a["served_by"], a["body"]) for a in answers} == {("replica-a", len(body))}
    finally:
        replica.close()


def test_replicas_of_an_app_share_its_requests(front):
    process, client = front
    replicas = [Replica("replica-a"), Replica("replica-b")]
    try:
        for name, replica in zip("ab", replicas):
            process.register(APP, name, replica.address)
        seen = [served_by(client, "/v2/models/iris/infer") for _ in range(60)]
        assert 10 < seen.count("replica-a") < 50 and seen.count("replica-a") + seen.count("replica-b") == 60
    finally:
        for replica in replicas:
            replica.close()


def test_a_killed_replica_loses_no_request_and_leaves_the_map(front):
    """Its port refuses connections: HAProxy sends the request to Serve's ingress, body and all."""
    process, client = front
    replica = Replica("replica-a")
    process.register(APP, "a", replica.address)
    assert served_by(client, "/v2/models/iris/infer") == "replica-a"
    replica.close()
    body = b'{"inputs": []}'
    answers = [client.post("/v2/models/iris/infer", content=body) for _ in range(20)]
    assert [(a.status_code, a.json()["served_by"], a.json()["body"]) for a in answers] == [(200, "serve", len(body))] * 20
    deadline = time.monotonic() + 5
    while process.ports and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process.ports, "the prober drops a port that stopped answering"


def test_a_request_past_the_timeout_is_a_json_504_naming_the_setting(front):
    process, client = front
    replica = Replica("replica-a")
    try:
        process.register(APP, "a", replica.address)
        answer = client.post("/v2/models/iris/slow", content=b"{}")
        assert answer.status_code == 504 and answer.headers["content-type"] == "application/json"
        assert answer.json() == {"error": REST_TIMEOUT_MESSAGE, "field": "model_name"}
    finally:
        replica.close()


def test_a_read_that_serve_answered_for_a_lost_replica_is_sent_again(front, serve_ingress):
    _, client = front
    answer = client.get("/lost-once/batches/1")
    assert answer.status_code == 200 and answer.json()["served_by"] == "serve"
    assert serve_ingress.calls["/lost-once/batches/1"] == 2


def test_a_change_serve_answered_for_a_lost_replica_is_a_json_503_and_not_sent_twice(front, serve_ingress):
    _, client = front
    for method in ("POST", "PUT", "DELETE"):
        path = f"/lost-once/models/{method}"
        answer = client.request(method, path, content=b"{}")
        assert answer.status_code == 503, (method, answer.text)
        assert answer.headers["content-type"] == "application/json" and answer.headers["retry-after"] == "1"
        assert answer.json() == {"error": SERVE_LOST_MESSAGE, "field": "request"}
        assert serve_ingress.calls[path] == 1, f"a {method} may have been applied: it must not be replayed"


def test_a_read_lost_on_every_try_is_a_json_503_and_an_applications_own_500_passes(front, serve_ingress):
    _, client = front
    answer = client.get("/lost/models")
    assert answer.status_code == 503 and answer.json()["error"] == SERVE_LOST_MESSAGE
    assert serve_ingress.calls["/lost/models"] == 3, "tried once and retried twice (the front's retries)"
    own = client.post("/broken", content=b"{}")
    assert own.status_code == 500 and own.json() == {"error": "the application's own error"}


def test_a_busy_http_port_is_a_clear_error_naming_the_flag(serve_ingress):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is in use: choose another with --http-port"):
            FrontProcess(Listeners("127.0.0.1", http_port=port, http_upstream=f"127.0.0.1:{serve_ingress.port}"),
                         workers=1, management_app="m", pool_app="p", start_timeout_s=5)
