"""The real management application, served in process over real HTTP, with Serve kept in memory.

``modelpool.management.api`` answers around a real :class:`~modelpool.management.model_manager.ModelManager` on a local
object store in a temporary folder, behind uvicorn on 127.0.0.1 (an ephemeral port, a thread,
stopped at teardown), so the clients' tests see the server's own routes, validation, answers and
errors rather than a second copy of them.

What would need Ray is faked at the narrowest seam, honestly:

- :class:`InProcessServe` stands in for Serve: ``modelpool.management.deployer``'s deploy, delete and wait
  calls land here, and each deployed application becomes one real replica object in this process
  (:class:`~modelpool.deployments.generic_pool.GenericPool` or :class:`~modelpool.deployments.model_deployment.ModelServer`,
  reconfigured with the app's ``user_config`` as Serve would), reported RUNNING with the replica count
  its options ask for. Requests below an app's route prefix go to its replica (longest prefix first,
  as Serve's proxy routes them), everything else to the management app. So register then infer works
  as documented, and an unregistered model stops answering.
- The archive load check (a throwaway Ray task) runs its own function in this process.
- The few Ray calls that read the cluster (its nodes, this node's id) answer for one local node.
- Batch jobs run on the real scheduler and scoring workers, their Ray actors stood in for by threads of
  this process (:class:`~tests.unit.in_process_actors.InProcessActors`): a job is scored by the model's
  real handler into the local object store while the client polls it.
- A deployment can be made to fail (``InProcessServe.deploy_failure``): Serve then reports its
  application DEPLOY_FAILED, as it does when a replica's constructor raises.
- A graph's application gets a stand-in replica (:class:`GraphReplicaStandIn`): a graph calls its nodes through
  Serve's handles, which this process has not, so it answers only what management asks of it (the ingress probe
  a ``PUT /graphs/{name}`` waits on, ``GET {route}/-``, naming its replica as Serve's details do). The graph
  calls (put, get, list, delete) run as on the cluster; graph inference is tested on the cluster.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import parse_qsl

import psutil
import pytest
import ray
import uvicorn
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse

from modelpool.cluster.object_store import ObjectStore
from modelpool.cluster.settings import load_settings
from modelpool.deployments import log_flush
from modelpool.deployments.app_names import GENERIC_POOL_DEPLOYMENT, GRAPH_APP_PREFIX, REPLICA_HEADER
from modelpool.deployments.generic_pool import GenericPool
from modelpool.deployments.model_deployment import ModelServer
from modelpool.management import api as management_api
from modelpool.management import archive_intake, deployer, model_manager, route_probe, serve_state, workers
from modelpool.management.batch.service import BatchService
from modelpool.management.model_manager import ModelManager
from modelpool.management.params import RegisterParams
from modelpool.deployments.app_names import MODEL_APP_PREFIX
from modelpool.management.serve_configs import AppConfig
from modelpool.management.serve_state import AppStatus, LiveApp
from modelpool.management.ttl_cache import TtlCache
from tests.unit.in_process_actors import Gate, InProcessActors

TOKEN = "unit-test-token"
NODE_IP = "127.0.0.1"


def wanted_replicas(app: AppConfig) -> int:
    options = app.deployment_options
    return int((options.get("autoscaling_config") or {}).get("min_replicas", options.get("num_replicas", 1)) or 0)


def _in_process_pool(init_kwargs: dict) -> GenericPool:
    """A generic pool whose models load on first use and stay (Serve's multiplexing needs a replica context)."""
    pool = GenericPool(**init_kwargs)
    loaded: dict[str, Any] = {}

    async def get_model(model_id: str) -> Any:
        if model_id not in loaded:
            name, version, _ = model_id.rsplit(":", 2)
            spec = pool.catalog[name]["versions"][version]
            loaded[model_id] = pool._load(spec["source"], name, version, spec.get("handler"))
        return loaded[model_id]

    pool.get_model = get_model  # type: ignore[method-assign]
    return pool


def replica_name(app_name: str, index: int) -> str:
    """A replica's id, as Serve's details list it and as the replica names itself in ``x-modelpool-replica``."""
    return f"{app_name}-{index}"


class GraphReplicaStandIn:
    """A graph's replica, for what management asks of it: ``GET {route}/-`` (the ingress probe) answers 404
    naming this replica, as every replica answers it; anything else is a 503 saying graphs do not run here."""

    def __init__(self, app_name: str) -> None:
        self.headers = {REPLICA_HEADER: replica_name(app_name, 0)}

    def reconfigure(self, user_config: dict) -> None:
        pass

    async def __call__(self, request: Request) -> JSONResponse:
        if request.url.path.endswith(route_probe.PROBE_SUFFIX):
            return JSONResponse({"error": "no model '-'", "field": "model_name"}, 404, self.headers)
        return JSONResponse({"error": "graphs are not run in the unit tests' process (their nodes are Serve "
                                      "handle calls); tests/integration runs them", "field": None}, 503, self.headers)


@dataclass
class InProcessServe:
    """Serve's applications, in memory: app name -> its config and its one in-process replica."""

    apps: dict[str, AppConfig] = field(default_factory=dict)
    replicas: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    #: set, every application deployed from now on fails with this message (DEPLOY_FAILED)
    deploy_failure: Optional[str] = None
    failed: dict[str, str] = field(default_factory=dict)
    #: True: replicas start one after another, one more RUNNING each time the controller is read
    gradual_start: bool = False
    started_replicas: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ modelpool.management.deployer's calls
    def deploy_apps(self, apps: Iterable[AppConfig], wait: bool = False, ingress: Any = None,
                    deleted: Iterable[str] = ()) -> None:
        for app in apps:
            if self.deploy_failure is not None:
                self.failed[app.app_name] = self.deploy_failure
            known = self.apps.get(app.app_name)
            if known is None or known.init_kwargs != app.init_kwargs or app.app_name not in self.replicas:
                self.replicas[app.app_name] = self._start(app)
            self.apps[app.app_name] = app
            replica = self.replicas[app.app_name]
            if replica is not None:
                replica.reconfigure(dict(app.deployment_options.get("user_config") or {}))

    def _start(self, app: AppConfig) -> Any:
        if app.deployment_name == GENERIC_POOL_DEPLOYMENT:
            return _in_process_pool(app.init_kwargs)
        if app.app_name.startswith(MODEL_APP_PREFIX):
            server = ModelServer(**app.init_kwargs)
            server.replica_id = replica_name(app.app_name, 0)  # as Serve's details name it (the ingress probe reads it)
            server._headers[REPLICA_HEADER] = server.replica_id
            return server
        if app.app_name.startswith(GRAPH_APP_PREFIX):
            return GraphReplicaStandIn(app.app_name)
        return None  # the gRPC and protocol fronts: not served here

    def delete_app(self, app_name: str, wait: bool = True) -> None:
        self.apps.pop(app_name, None)
        self.replicas.pop(app_name, None)
        self.failed.pop(app_name, None)

    def model_app_names(self) -> list[str]:
        return [name for name in self.apps if name.startswith(MODEL_APP_PREFIX)]

    def running(self, app_name: str) -> int:
        if app_name not in self.apps:
            return 0
        wanted = wanted_replicas(self.apps[app_name])
        return min(wanted, self.started_replicas.get(app_name, 0)) if self.gradual_start else wanted

    def _start_one_more(self) -> None:
        for name, app in self.apps.items():
            self.started_replicas[name] = min(wanted_replicas(app), self.started_replicas.get(name, 0) + 1)

    def has_replicas(self, app_names: Iterable[str], app_name: str, at_least: int) -> bool:
        return self.running(app_name) >= at_least

    def application_statuses(self) -> dict[str, AppStatus]:
        """``serve_state.applications``: what the deployer's own ``wait_until_running`` reads."""
        return {name: AppStatus("DEPLOY_FAILED", self.failed[name]) if name in self.failed else AppStatus("RUNNING")
                for name in self.apps}

    def wait_for_replicas(self, app_name: str, at_least: int, timeout_s: float) -> None:
        if self.running(app_name) < at_least:
            raise TimeoutError(f"{app_name} has {self.running(app_name)} running replicas, wanted {at_least}")

    # ------------------------------------------------------------------ what management reads
    def details(self) -> dict:
        """The controller's instance details, in Serve's shape: every app RUNNING with its replicas."""
        applications = {}
        for name, app in self.apps.items():
            replicas = [{"replica_id": replica_name(name, i), "state": "RUNNING", "node_id": "local", "node_ip": NODE_IP,
                         "pid": os.getpid(), "start_time_s": self.started} for i in range(self.running(name))]
            deployment = {"replicas": replicas, "target_num_replicas": wanted_replicas(app),
                          "deployment_config": {"user_config": app.deployment_options.get("user_config")}}
            applications[name] = {"status": "DEPLOY_FAILED" if name in self.failed else "RUNNING",
                                  "route_prefix": app.route_prefix, "message": self.failed.get(name, ""),
                                  "deployments": {app.deployment_name: deployment}}
        if self.gradual_start:
            self._start_one_more()
        return {"applications": applications}

    def live_apps(self) -> dict[str, LiveApp]:
        """``serve_state.live_apps``: each app's route, status and RUNNING replicas."""
        return {name: LiveApp(app.route_prefix, "DEPLOY_FAILED" if name in self.failed else "RUNNING",
                              self.running(name)) for name, app in self.apps.items()}

    def replica_apps(self) -> dict[str, str]:
        """``serve_state.replica_apps``: replica id -> its application."""
        return {replica_name(name, i): name for name in self.apps for i in range(self.running(name))}

    def replica_for(self, path: str) -> tuple[Optional[str], Any]:
        """(route prefix, replica) of the app whose prefix is the longest that ``path`` lies under."""
        best: tuple[Optional[str], Any] = (None, None)
        for name, app in self.apps.items():
            prefix = (app.route_prefix or "").rstrip("/")
            if self.replicas.get(name) is not None and prefix and (path == prefix or path.startswith(prefix + "/")):
                if best[0] is None or len(prefix) > len(best[0]):
                    best = (prefix, self.replicas[name])
        return best


class LocalRay:
    """The Ray calls that read the cluster, answered for one local node (``import ray`` alone starts nothing)."""

    @staticmethod
    def nodes() -> list[dict]:
        return [{"Alive": True, "NodeID": "local", "NodeManagerAddress": NODE_IP}]

    @staticmethod
    def get_runtime_context() -> Any:
        class Context:
            @staticmethod
            def get_node_id() -> str:
                return "local"
        return Context()

    @staticmethod
    def cluster_resources() -> dict:
        return {"CPU": float(os.cpu_count() or 1)}

    @staticmethod
    def get(value: Any) -> Any:
        """What an :class:`InProcessTask` returned is already the task's result."""
        return value


class InProcessTask:
    """A Ray remote function run in this process: ``.remote(...)`` answers what the function returns."""

    def __init__(self, remote_function: Any) -> None:
        self.function = remote_function._function

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


@dataclass
class Seen:
    """One request as it reached the cluster, and the client port (the TCP connection) that carried it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: Optional[str]
    port: int
    user_agent: Optional[str] = None
    idempotency_key: Optional[str] = None


class Proxy:
    """The cluster's ingress in one ASGI app: a model's route to its replica, the rest to the management API.

    It records every request (``seen``; management's route probes apart, in ``probes``) and every connection
    (``connections``), and, like HAProxy with no management replica behind it, answers the next ``ingress_failures``
    requests with its plain-text 500; like a model whose queue is full, the next ``overloaded`` requests get a 429
    with ``Retry-After: retry_after``.
    ``forged`` (path -> JSON) plays a hostile or broken server: a GET of that path is answered with it,
    for the client defences the real server never puts to the test. ``route_lag`` plays HAProxy before it
    reloads with a new app's servers: the next that many requests to a model's route find no server (its 503).
    """

    def __init__(self, serve: InProcessServe) -> None:
        self.serve = serve
        self.seen: list[Seen] = []
        self.probes: list[Seen] = []  # management's own ``GET {route}/-``: is the route at its new owner yet?
        self.connections: list[int] = []
        self.ingress_failures = 0
        self.overloaded = 0
        self.retry_after = "1"
        self.forged: dict[str, Any] = {}
        self.route_lag = 0
        self.url = ""  # where it listens, once it does

    def requests_to(self, path: str, method: Optional[str] = None) -> list[Seen]:
        return [s for s in self.seen if s.path == path and (method is None or s.method == method)]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await management_api.api(scope, receive, send)
            return
        receive = await self._record(scope, receive)
        if self.ingress_failures > 0:
            self.ingress_failures -= 1
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            return
        if self.overloaded > 0:
            self.overloaded -= 1
            await JSONResponse({"error": "model 'iris' version '1' is at its limit", "field": "max_queued_requests"},
                               status_code=429, headers={"Retry-After": self.retry_after})(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] in self.forged:
            await JSONResponse(self.forged[scope["path"]])(scope, receive, send)
            return
        prefix, replica = self.serve.replica_for(scope.get("path", ""))
        if replica is None:
            await management_api.api(scope, receive, send)
            return
        if self.route_lag > 0 and isinstance(replica, ModelServer):
            self.route_lag -= 1
            await HTMLResponse("<html><body><h1>503 Service Unavailable</h1>No server is available to handle "
                               "this request.</body></html>", status_code=503)(scope, receive, send)
            return
        scope = {**scope, "root_path": prefix}
        response = await replica(Request(scope, receive))
        await response(scope, receive, send)

    async def _record(self, scope: dict, receive: Any) -> Any:
        """Note the request (its body read whole) and hand on a ``receive`` that replays the body."""
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        port = scope["client"][1]
        if port not in self.connections:
            self.connections.append(port)
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")  # as sent: %2F stays
        probe = scope["method"] == "GET" and path.endswith(route_probe.PROBE_SUFFIX)  # management's, not a client's
        seen = Seen(scope["method"], path, dict(parse_qsl(scope.get("query_string", b"").decode())),
                    json.loads(body) if body else None, headers.get("authorization"), port,
                    headers.get("user-agent"), headers.get("idempotency-key"))
        (self.probes if probe else self.seen).append(seen)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # a disconnect, when the client goes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return replay


@dataclass
class RunningManagement:
    """What a test needs: the URL, the token, and the real core behind them."""

    url: str
    token: str
    manager: ModelManager
    serve: InProcessServe
    ingress: Proxy
    actors: InProcessActors  # the batch scheduler's and workers' actors; ``actors.gate`` holds scoring
    port: int
    batches: BatchService


def sockets_to(port: int) -> list:
    """This process's TCP sockets on either end of ``port`` (client or server side)."""
    return [c for c in psutil.Process().net_connections(kind="tcp")
            if (c.laddr and c.laddr.port == port) or (c.raddr and c.raddr.port == port)]


def client_sockets_to(management: RunningManagement) -> list:
    """The client ends only: closed synchronously by the client, unlike the server ends."""
    return [c for c in sockets_to(management.port) if c.raddr and c.raddr.port == management.port]


def serve_in_thread(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="management-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process management app did not start")
        time.sleep(0.01)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example archives (iris 1 and 2, diabetes, iris_report), built once."""
    from modelpool.deployments.examples import build_examples

    folder = tmp_path_factory.mktemp("model-store")
    build_examples(folder)
    return folder


@pytest.fixture(name="management")
def management_fixture(tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch):
    """The management app around a real ModelManager, over HTTP on 127.0.0.1; stopped at teardown."""
    serve = InProcessServe()
    for name in ("deploy_apps", "delete_app", "model_app_names", "has_replicas", "wait_for_replicas"):
        monkeypatch.setattr(deployer, name, getattr(serve, name))
    monkeypatch.setattr(deployer, "applications", serve.application_statuses)
    monkeypatch.setattr(deployer, "live_apps", serve.live_apps)
    monkeypatch.setattr(deployer, "replica_apps", serve.replica_apps)
    monkeypatch.setattr(serve_state, "applications", serve.application_statuses)  # what the graph calls read
    monkeypatch.setattr(serve_state, "replica_apps", serve.replica_apps)
    monkeypatch.setattr(workers, "ray", LocalRay)
    monkeypatch.setattr(model_manager, "ray", LocalRay)
    monkeypatch.setattr(archive_intake, "ray", LocalRay)
    monkeypatch.setattr(archive_intake, "_load_check", InProcessTask(archive_intake._load_check))
    monkeypatch.setattr(log_flush, "_started", True)  # no Serve logs to flush in this process

    settings = load_settings({"home": str(tmp_path), "object_store": str(tmp_path / "objects"),
                              "model_store": str(model_store)}, {})
    manager = ModelManager(settings, store=ObjectStore(str(tmp_path / "objects")))
    manager._details = TtlCache(serve.details, ttl_s=0)  # what Serve's controller would answer
    actors = InProcessActors()
    actors.install(monkeypatch, LocalRay)
    batches = BatchService(manager.settings, manager.store, manager.registry)
    for name, value in {"manager": manager, "batches": batches, "token": TOKEN, "debug": False}.items():
        monkeypatch.setattr(management_api.state, name, value, raising=False)
    ingress = Proxy(serve)
    server, thread, port = serve_in_thread(ingress)
    ingress.url = f"http://127.0.0.1:{port}"
    # this node's ingress, which a graph's PUT probes until it routes to the graph (never a cluster on this machine)
    manager.ingress = route_probe.Ingress(ingress.url, {"Authorization": f"Bearer {TOKEN}"})
    try:
        yield RunningManagement(f"http://127.0.0.1:{port}", TOKEN, manager, serve, ingress, actors, port, batches)
    finally:
        actors.stop()
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the in-process management app did not stop"
        assert not sockets_to(port), "a socket to the management app was left open"
        assert not ray.is_initialized(), "a unit test must not start Ray"


@pytest.fixture(name="server")
def server_fixture(management: RunningManagement) -> Proxy:
    """The ingress (what went over the wire) of the app with model ``x`` version 1 registered and served.

    ``x`` is the iris_report example: an iris classifier answering ``predict`` and ``confidence`` that
    writes a report.json per row in batch jobs. Registered in process, so ``seen`` starts empty.
    """
    management.manager.register(RegisterParams(url="iris_report-1.zip", model_name="x"))
    return management.ingress


@pytest.fixture(name="gate")
def gate_fixture(management: RunningManagement) -> Gate:
    """Where batch scoring waits while a test holds it (``gate.hold()``, ``gate.release()``)."""
    return management.actors.gate
