"""A tiny real HTTP server that imitates modelpool's management, inference and batch API.

Shared, with the ``server`` and ``no_token_env`` fixtures, by the sync and the asyncio client
tests, so both clients are held to the same wire behaviour: the server records paths, query
strings, JSON bodies, the Authorization and User-Agent headers of every request, and which TCP
connection carried it.
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

import psutil
import pytest

from tests.unit.both_clients import iris_frame, no_token_env_fixture  # noqa: F401 (kept importable from here)
from tests.unit.management_app import Seen

TOKEN = "unit-test-token"


# ------------------------------------------------------------------------------------------ fake server
class Reply(Exception):
    """An error answer in the server's shape."""

    def __init__(self, status: int, error: str, field: Optional[str]) -> None:
        super().__init__(error)
        self.status, self.body = status, {"error": error, "field": field}


def _model(name: str, version: str) -> dict:
    return {"modelName": name, "modelVersion": version, "modelUrl": f"{name}-{version}.zip", "minWorkers": 0,
            "maxWorkers": 0, "batchSize": None, "maxBatchDelay": None, "workers": []}


class FakeModelpool(ThreadingHTTPServer):
    """Just enough of modelpool's routes; records every request and every accepted connection."""

    daemon_threads = False  # server_close() joins the handler threads: nothing outlives a test
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.seen: list[Seen] = []
        self.connections: list[int] = []
        self.models: dict[str, dict[str, dict]] = {"x": {"1": _model("x", "1")}}
        self.defaults = {"x": "1"}
        self.pools: dict[tuple[str, str], dict] = {}
        self.batches: dict[str, dict] = {}
        self.ingress_failures = 0  # answer this many calls as HAProxy does with no replica behind it
        self.routes: list[tuple[str, re.Pattern, Callable]] = [
            (method, re.compile(f"^{pattern}$"), handler) for method, pattern, handler in [
                ("GET", "/ping", lambda q, b: (200, {"status": "Healthy"})),
                ("POST", "/models", self.register),
                ("GET", "/models", self.list_models),
                ("GET", "/models/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?", self.describe),
                ("PUT", "/models/(?P<name>[^/]+)/(?P<version>[^/]+)/set-default", self.set_default),
                ("PUT", "/models/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?", self.scale),
                ("DELETE", "/models/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?", self.unregister),
                ("GET", "/services", self.services),
                ("PUT", "/pools/(?P<name>[^/]+)/(?P<version>[^/]+)", self.put_pool),
                ("GET", "/pools/(?P<name>[^/]+)/(?P<version>[^/]+)", self.pool_status),
                ("DELETE", "/pools/(?P<name>[^/]+)/(?P<version>[^/]+)", self.delete_pool),
                ("POST", "/v2/models/x/versions/1/predict", self.predict),
                ("POST", "/v2/models/x/versions/1/infer", self.infer),
                ("POST", "/batches", self.start_batch),
                ("GET", "/batches", self.list_batches),
                ("GET", "/batches/(?P<id>[^/]+)", self.batch_state),
                ("DELETE", "/batches/(?P<id>[^/]+)", self.cancel_batch),
                ("GET", "/batches/(?P<id>[^/]+)/results/(?P<index>\\d+)", self.batch_row),
                ("GET", "/batches/(?P<id>[^/]+)/results/(?P<index>\\d+)/artifacts", self.artifacts),
                ("GET", "/batches/(?P<id>[^/]+)/results/(?P<index>\\d+)/artifacts/(?P<artifact>.+)", self.artifact),
            ]]

    def requests_to(self, path: str, method: Optional[str] = None) -> list[Seen]:
        return [s for s in self.seen if s.path == path and (method is None or s.method == method)]

    # ------------------------------------------------------------------ dispatch
    def answer(self, method: str, path: str, query: dict, body: Any, authorization: Optional[str]) -> tuple[int, Any]:
        if path != "/ping" and authorization != f"Bearer {TOKEN}":
            raise Reply(401, "missing or wrong management token; send 'Authorization: Bearer <token>'", "authorization")
        for route_method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match and route_method == method:
                return handler(query, body, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
        raise Reply(404, f"no route {method} {path}", None)

    # ------------------------------------------------------------------ models
    def record(self, name: str, version: Optional[str]) -> dict:
        if name not in self.models:
            raise Reply(404, f"model '{name}' is not registered", "model_name")
        version = version or self.defaults[name]
        if version not in self.models[name]:
            raise Reply(404, f"model '{name}' has no version '{version}'", "version")
        return self.models[name][version]

    def register(self, query: dict, _: Any) -> tuple[int, dict]:
        if "url" not in query:
            raise Reply(400, "url: Field required", "url")
        name = query.get("model_name") or query["url"].split("-")[0]
        if "1" in self.models.get(name, {}):
            raise Reply(409, f"model '{name}' version '1' is already registered; unregister it first", "model_name")
        self.models.setdefault(name, {})["1"] = _model(name, "1")
        self.defaults.setdefault(name, "1")
        return 200, {"status": f'Model "{name}" registered'}

    def list_models(self, query: dict, _: Any) -> tuple[int, dict]:
        names = sorted(self.models)
        after = query.get("next_page_token")
        names = [n for n in names if after is None or n > after]
        limit = int(query.get("limit", 100))
        page, rest = names[:limit], names[limit:]
        return 200, {"nextPageToken": page[-1] if rest else None,
                     "models": [{"modelName": n, "modelUrl": f"{n}-1.zip"} for n in page]}

    def describe(self, _: dict, __: Any, name: str, version: Optional[str] = None) -> tuple[int, list]:
        return 200, [self.record(name, version)]

    def scale(self, query: dict, _: Any, name: str, version: Optional[str] = None) -> tuple[int, dict]:
        self.record(name, version)
        return (200, {"status": "Worker scaled"}) if query.get("synchronous") == "true" else (202, {"status": "Worker updated"})

    def set_default(self, _: dict, __: Any, name: str, version: str) -> tuple[int, dict]:
        self.record(name, version)
        self.defaults[name] = version
        return 200, {"status": f'Default version successfully updated for model "{name}" to "{version}"'}

    def unregister(self, _: dict, __: Any, name: str, version: Optional[str] = None) -> tuple[int, dict]:
        record = self.record(name, version)
        del self.models[name][record["modelVersion"]]
        if not self.models[name]:
            del self.models[name], self.defaults[name]
        return 200, {"status": f'Model "{name}" unregistered'}

    # ------------------------------------------------------------------ services and pools
    def services(self, _: dict, __: Any) -> tuple[int, list]:
        return 200, [{"name": n, "version": v, "pool": "dedicated" if (n, v) in self.pools else "generic",
                      "state": "Running", "isDefault": self.defaults[n] == v}
                     for n, versions in sorted(self.models.items()) for v in versions]

    def put_pool(self, _: dict, body: Any, name: str, version: str) -> tuple[int, dict]:
        self.record(name, version)
        if body["initial_pool_size"] > body["max_pool_size"]:
            raise Reply(400, f"initial_pool_size ({body['initial_pool_size']}) must not exceed max_pool_size "
                             f"({body['max_pool_size']})", "initial_pool_size")
        self.pools[(name, version)] = body
        return 200, {"status": f'Pool for "{name}" version "{version}" set to '
                               f'{body["initial_pool_size"]}..{body["max_pool_size"]} replicas'}

    def pool_status(self, _: dict, __: Any, name: str, version: str) -> tuple[int, list]:
        self.record(name, version)
        status = "Success" if (name, version) in self.pools else "NotFound"
        return 200, [{"computeNodeEndpoint": "127.0.0.1", "status": status, "errors": []}]

    def delete_pool(self, _: dict, __: Any, name: str, version: str) -> tuple[int, dict]:
        self.pools.pop((name, version), None)
        return 200, {"status": f'Pool for "{name}" version "{version}" deleted; served by the generic pool'}

    # ------------------------------------------------------------------ inference
    def predict(self, _: dict, body: Any) -> tuple[int, dict]:
        return 200, {"predictions": [int(sum(row) > 12) for row in body["instances"]]}

    def infer(self, _: dict, body: Any) -> tuple[int, dict]:
        tensor = body["inputs"][0]
        rows = tensor["shape"][0]
        outputs = {"predict": {"name": "predict", "datatype": "INT64", "shape": [rows], "data": list(range(rows))},
                   "predict_proba": {"name": "predict_proba", "datatype": "FP64", "shape": [rows, 2],
                                     "data": [0.25, 0.75] * rows}}
        wanted = [o["name"] for o in body.get("outputs", [])] or list(outputs)
        return 200, {"model_name": "x", "model_version": "1", "outputs": [outputs[n] for n in wanted]}

    # ------------------------------------------------------------------ batches
    def job(self, execution_id: str) -> dict:
        if execution_id not in self.batches:
            raise Reply(404, f"no batch execution '{execution_id}'", "execution_id")
        return self.batches[execution_id]

    def start_batch(self, _: dict, body: Any) -> tuple[int, dict]:
        self.record(body["service"], body["version"])
        execution_id = uuid.uuid4().hex
        self.batches[execution_id] = {**body, "executionId": execution_id, "state": "Pending", "completed": 0}
        return 202, {"executionId": execution_id, "state": "Pending"}

    def list_batches(self, query: dict, _: Any) -> tuple[int, list]:
        return 200, [i for i, j in self.batches.items()
                     if j["service"] == query.get("service") and j["version"] == query.get("version")]

    def batch_state(self, query: dict, _: Any, id: str) -> tuple[int, dict]:
        """Every poll scores one more row, so a client sees the job progress."""
        job = self.job(id)
        total = len(job["records"])
        if job["state"] in ("Pending", "Running"):
            job["completed"] += 1
            job["state"] = "Complete" if job["completed"] >= total else "Running"
        answer = {"executionId": id, "service": job["service"], "version": job["version"], "state": job["state"],
                  "totalItems": total, "completedItems": job["completed"], "failedItems": 0,
                  "parallelCount": job["parallel_count"]}
        if query.get("show_partial_results") == "true":  # rows travel in pages, as on the real server
            offset, limit = int(query.get("offset", 0)), int(query.get("limit", 1000))
            page = [self.row(i) for i in range(offset, min(offset + limit, job["completed"]))]
            answer.update(results=page, nextOffset=offset + len(page) if len(page) == limit else None)
        return 200, answer

    def cancel_batch(self, _: dict, __: Any, id: str) -> tuple[int, dict]:
        job = self.job(id)
        if job["state"] in ("Pending", "Running"):
            job["state"] = "Cancelled"
        return 200, {"executionId": id, "state": job["state"]}

    @staticmethod
    def row(index: int) -> dict:
        return {"index": index, "status": "Complete", "outputs": {"predict": index % 3}}

    def scored(self, id: str, index: str) -> int:
        job, row = self.job(id), int(index)
        if row >= job["completed"]:
            raise Reply(404, f"row {row} is not scored yet", "index")
        return row

    def batch_row(self, _: dict, __: Any, id: str, index: str) -> tuple[int, dict]:
        return 200, self.row(self.scored(id, index))

    def artifacts(self, _: dict, __: Any, id: str, index: str) -> tuple[int, list]:
        """Row 2 also lists a name that would escape the download directory (a hostile server)."""
        row = self.scored(id, index)
        return 200, ["report.json"] + (["../escape.txt"] if row == 2 else [])

    def artifact(self, _: dict, __: Any, id: str, index: str, artifact: str) -> tuple[int, bytes]:
        row = self.scored(id, index)
        if artifact != "report.json":
            raise Reply(404, f"row {row} has no artifact '{artifact}'", "artifact")
        return 200, json.dumps({"index": row, "class": row % 3}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection can carry many requests
    timeout = 5  # an idle connection a client forgot cannot hold server_close() forever
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall per answer
    server: FakeModelpool

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.client_address[1])

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_GET

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        query = dict(parse_qsl(url.query))
        authorization = self.headers.get("Authorization")
        self.server.seen.append(Seen(self.command, url.path, query, body, authorization, self.client_address[1],
                                     self.headers.get("User-Agent"), self.headers.get("Idempotency-Key")))
        if self.server.ingress_failures > 0:
            self.server.ingress_failures -= 1
            self._reply(500, b"Internal Server Error", "text/plain")  # Serve's HAProxy error file, word for word
            return
        try:
            status, payload = self.server.answer(self.command, url.path, query, body, authorization)
        except Reply as reply:
            status, payload = reply.status, reply.body
        binary = isinstance(payload, bytes)
        data = payload if binary else json.dumps(payload).encode()
        self._reply(status, data, "application/octet-stream" if binary else "application/json")

    def _reply(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def sockets_to(port: int) -> list:
    """This process's TCP sockets on either end of ``port`` (client or server side)."""
    return [c for c in psutil.Process().net_connections(kind="tcp")
            if (c.laddr and c.laddr.port == port) or (c.raddr and c.raddr.port == port)]


def client_sockets_to(server: FakeModelpool) -> list:
    """The client ends only: closed synchronously by the client, unlike the server ends."""
    port = server.server_address[1]
    return [c for c in sockets_to(port) if c.raddr and c.raddr.port == port]


@pytest.fixture(name="server")
def server_fixture():
    """A running fake; at the end no thread of it and no socket to it may be left (the client's either)."""
    before = set(threading.enumerate())
    fake = FakeModelpool()
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-modelpool")
    thread.start()
    try:
        yield fake
    finally:
        fake.shutdown()
        fake.server_close()  # joins every connection's handler thread
        thread.join(10)
        assert set(threading.enumerate()) <= before, "a server or handler thread outlived the test"
        assert not sockets_to(fake.server_address[1]), "a socket to the fake server was left open"
