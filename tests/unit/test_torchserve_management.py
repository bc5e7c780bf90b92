"""Management answers as TorchServe answers them, at unit level (no Ray).

The texts and keys are TorchServe's (its docs/management_api.md examples, its ApiUtils and
DescribeModelResponse); the integration twin (tests/integration/test_torchserve_management.py)
runs MMS's documented calls against a real cluster.
"""
from __future__ import annotations

import asyncio
import json
import warnings
from pathlib import Path

import pytest
from starlette.requests import Request

from modelpool.cluster.object_store import ObjectStore
from modelpool.cluster.settings import Settings, load_settings
from modelpool.deployments.generic_pool import GenericPool
from modelpool.management import answers, api as management_api
from modelpool.management.params import ListParams, ScaleParams
from modelpool.management.placement import model_config
from modelpool.management.registry import ModelRecord
from modelpool.management.serve_configs import model_app_config
from modelpool.management.describe import describe_record
from modelpool.management.model_manager import ModelManager

with warnings.catch_warnings():  # starlette's notice about httpx, raised on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "management-token-for-tests-0123456789"
#: Every key TorchServe's describe returns for a model (DescribeModelResponse's non-null fields), and engine,
#: which its documentation shows.
TORCHSERVE_DESCRIBE_KEYS = {
    "modelName", "modelVersion", "modelUrl", "engine", "runtime", "minWorkers", "maxWorkers", "batchSize",
    "maxBatchDelay", "responseTimeout", "startupTimeout", "maxRetryTimeoutInSec", "clientTimeoutInMills",
    "parallelType", "parallelLevel", "deviceType", "deviceIds", "continuousBatching", "useJobTicket", "useVenv",
    "stateful", "sequenceMaxIdleMSec", "sequenceTimeoutMSec", "maxNumSequence", "maxSequenceJobQueueSize",
    "loadedAtStartup", "workers", "jobQueueStatus"}
TORCHSERVE_WORKER_KEYS = {"id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage"}


def record(name: str = "noop", version: str = "1.0", **changes) -> ModelRecord:
    values = dict(name=name, version=version, url=f"{name}.mar", source=f"objects://models/{name}", digest="d1",
                  handler="sklearn", runtime="python", batch_size=1, max_batch_delay_ms=100, initial_workers=1,
                  min_workers=1, max_workers=1, response_timeout_s=120)
    return ModelRecord(**{**values, **changes})


# ------------------------------------------------------------------------------ status texts


def test_the_status_texts_are_torchserves_word_for_word():
    """As docs/management_api.md shows them (register, scale, unregister)."""
    assert answers.registered("squeezenet_v1.1", "1.0", 0) == (
        'Model "squeezenet_v1.1" Version: 1.0 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model.")
    assert answers.registered("squeezenet1_1", "1.0", 1) == 'Model "squeezenet1_1" Version: 1.0 registered with 1 initial workers'
    assert answers.PROCESSING == "Processing worker updates..."
    assert answers.scaled("noop", 3) == "Workers scaled to 3 for model: noop"
    assert answers.scaled("noop", 3, "2.0") == "Workers scaled to 3 for model: noop, version: 2.0"
    assert answers.unregistered("noop") == 'Model "noop" unregistered'
    assert answers.default_set("noop", "2.0") == 'Default version successfully updated for model "noop" to "2.0"'


# ------------------------------------------------------------------------------ describe


def test_describe_has_every_key_torchserve_returns_and_true_values():
    replica = {"id": "r1", "startTime": "2026-01-01T00:00:00+00:00", "status": "READY", "gpu": False,
               "memoryUsage": 1024, "pid": 4242, "gpuUsage": "N/A", "node": "10.0.0.5"}
    described = describe_record(record(startup_timeout_s=90, loaded_at_startup=True), 1, 2, [replica], 64,
                                is_default=True, dedicated=True)
    assert TORCHSERVE_DESCRIBE_KEYS <= set(described)
    assert TORCHSERVE_WORKER_KEYS <= set(described["workers"][0])
    assert (described["engine"], described["runtime"], described["startupTimeout"]) == ("scikit-learn", "python", 90)
    assert (described["minWorkers"], described["maxWorkers"], described["loadedAtStartup"]) == (1, 2, True)
    assert described["jobQueueStatus"] == {"remainingCapacity": 64, "pendingRequests": None}
    assert (described["deviceType"], described["pool"], described["isDefault"]) == ("cpu", "dedicated", True)
    assert describe_record(record(number_gpu=1), 1, 1, [], 64, is_default=False, dedicated=True)["deviceType"] == "gpu"


def test_describe_shows_the_seldon_role_and_parameters_of_the_manifest():
    plain = describe_record(record(), 0, 0, [], 1, True, False)
    assert (plain["serviceType"], plain["parameters"]) == ("MODEL", [])
    declared = record(manifest={"service_type": "TRANSFORMER", "parameters": [{"name": "k", "type": "INT", "value": "3"}]})
    described = describe_record(declared, 0, 0, [], 1, True, False)
    assert (described["serviceType"], described["parameters"]) == ("TRANSFORMER", [{"name": "k", "type": "INT", "value": "3"}])


def test_engine_is_the_manifests_word_else_the_handlers_kind():
    assert describe_record(record(handler="score:Model"), 0, 0, [], 1, True, False)["engine"] == "Python"
    named = record(manifest={"extra": {"engine": "Torch"}})
    assert describe_record(named, 0, 0, [], 1, True, False)["engine"] == "Torch"


# ------------------------------------------------------------------------------ scale's timeout


@pytest.mark.parametrize("timeout, graceful", [("-1", 120.0), ("0", 0.0), ("30", 30.0), ("600", 120.0)])
def test_scale_timeout_bounds_how_long_stopping_workers_drain(timeout, graceful):
    """MMS: the wait for a stopping worker's pending requests; -1 waits for them all (none outlives
    response_timeout), 0 stops at once. Serve's graceful shutdown is a live setting: no restart."""
    drain = ScaleParams.parse({"timeout": timeout}).timeout
    config = model_config(record(drain_timeout_s=drain), None, Settings(), True, ["1.0"], [])
    options = model_app_config(config, "/cache", "v").deployment_options
    assert options["graceful_shutdown_timeout_s"] == graceful
    unchanged = model_app_config(model_config(record(), None, Settings(), True, ["1.0"], []), "/cache", "v")
    assert options["version"] == unchanged.deployment_options["version"]  # the same replicas keep running


# ------------------------------------------------------------------------------ list


@pytest.fixture
def manager(tmp_path: Path) -> ModelManager:
    """The real management core on a local object store (listing needs no Ray)."""
    settings = load_settings({"home": str(tmp_path), "object_store": str(tmp_path / "objects")}, {})
    manager = ModelManager(settings, store=ObjectStore(str(tmp_path / "objects")))
    for name in ("a", "b", "c", "d", "e"):
        manager.registry.put_model(record(name, "1", url=f"{name}.mar"))
    return manager


def test_listing_pages_by_position_as_torchserve_does(manager):
    """docs: ``GET /models?limit=2&next_page_token=2`` -> ``"nextPageToken": "4"`` while models remain."""
    page = manager.list_models(ListParams.parse({"limit": "2", "next_page_token": "2"}))
    assert page == {"nextPageToken": "4", "models": [{"modelName": "c", "modelUrl": "c.mar"},
                                                     {"modelName": "d", "modelUrl": "d.mar"}]}
    last = manager.list_models(ListParams.parse({"limit": "2", "next_page_token": page["nextPageToken"]}))
    assert last == {"nextPageToken": None, "models": [{"modelName": "e", "modelUrl": "e.mar"}]}
    assert manager.list_models(ListParams.parse({"next_page_token": "12"})) == {"nextPageToken": None, "models": []}


@pytest.fixture
def management(manager: ModelManager, monkeypatch: pytest.MonkeyPatch):
    """The management API, in process, around the real core."""
    state = management_api.state
    for name, value in {"manager": manager, "token": TOKEN, "debug": False, "max_body_bytes": 4096,
                        "body_timeout_s": 60.0}.items():
        monkeypatch.setattr(state, name, value, raising=False)
    with TestClient(management_api.api, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_empty_list_parameters_are_the_defaults_over_http(management):
    """TorchServe's regression suite: ``GET /models?limit=&next_page_token=`` is a listing, not a 400."""
    answer = management.get("/models?limit=&next_page_token=")
    assert answer.status_code == 200, answer.text
    assert [m["modelName"] for m in answer.json()["models"]] == ["a", "b", "c", "d", "e"]
    bad = management.get("/models?limit=0")
    assert (bad.status_code, bad.json()["field"]) == (400, "limit")


def test_a_trailing_slash_is_the_same_route_not_a_redirect(management):
    """``curl -X DELETE .../models/noop/`` must reach the route: a 307 is not followed and would do nothing."""
    listed = management.get("/models/", follow_redirects=False)
    assert listed.status_code == 200 and [m["modelName"] for m in listed.json()["models"]] == ["a", "b", "c", "d", "e"]
    gone = management.delete("/models/unknown/", follow_redirects=False)
    assert (gone.status_code, gone.json()["field"]) == (404, "model_name")


def test_explanations_answer_501_for_a_model_and_404_for_an_unknown_one_in_torchserves_shape(management, monkeypatch):
    known = management.post("/explanations/a", content=b"[1, 2]")
    assert known.status_code == 501
    assert known.json()["code"] == 501 and "no explainer" in known.json()["message"] and "/predictions/a" in known.json()["message"]
    assert management.put("/explanations/a/1").status_code == 501
    unknown = management.post("/explanations/nope")
    assert (unknown.status_code, unknown.json()["code"]) == (404, 404) and "nope" in unknown.json()["message"]
    assert management.post("/explanations/a/9").status_code == 404
    # with an inference token, the route is closed to callers without one, as /predictions is
    from modelpool.deployments.serving_options import ServingOptions
    from modelpool.cluster.settings import token_digest

    monkeypatch.setattr(management_api.state, "serving", ServingOptions(inference_token_sha256=(token_digest("s3cret"),)))
    refused = management.post("/explanations/a", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert management.post("/explanations/a", headers={"Authorization": "Bearer s3cret"}).status_code == 501


def test_register_takes_a_json_body_as_torchserve_does(management, monkeypatch):
    """TorchServe reads register's parameters from a JSON body when the content type says JSON."""
    seen = []

    def register(params):
        seen.append(params)
        return 200, {"status": answers.registered("noop", "1", 0)}

    monkeypatch.setattr(management_api.state.manager, "register", register)
    body = {"url": "noop.mar", "model_name": "noop", "initial_workers": 0, "runtime": "PYTHON", "batch_size": 4}
    assert management.post("/models", json=body).status_code == 200
    assert (seen[0].url, seen[0].model_name, seen[0].runtime, seen[0].batch_size) == ("noop.mar", "noop", "python", 4)
    assert management.post("/models?url=noop.mar", content=b"not json", headers={"content-type": "text/plain"}
                           ).status_code == 200  # a body that is not JSON is not read, as TorchServe ignores it
    refused = management.post("/models", json={"url": "noop.mar", "runtime": "java"})
    assert (refused.status_code, refused.json()["field"]) == (400, "runtime")


# ------------------------------------------------------------------------------ a registered version still starting


def pool_request(path: str) -> Request:
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                   "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v2/models" + path, "root_path": "/v2/models",
             "query_string": b"", "headers": [(b"content-type", b"application/json")]}
    return Request(scope, receive)


@pytest.mark.parametrize("path", ["/ded/infer", "/ded/versions/1/infer", "/mixed/versions/2/infer"])
def test_a_registered_version_whose_workers_start_is_503_with_retry_after_never_404(tmp_path, path):
    """Until a dedicated version's route reaches its own replicas, its requests land on the generic pool."""
    pool = GenericPool(str(tmp_path / "cache"))
    pool.reconfigure({"catalog": {"mixed": {"default": "1", "all_versions": ["1", "2"],
                                            "versions": {"1": {"source": "x", "digest": "d"}}}},
                      "known_models": ["ded", "mixed"], "versions": {"ded": ["1"], "mixed": ["1", "2"]},
                      "serving": load_settings({}, {}).serving_options()})
    response = asyncio.run(pool(pool_request(path)))
    assert response.status_code == 503, response.body
    assert response.headers["retry-after"] == "1"
    assert "is registered and its workers are starting" in json.loads(response.body)["error"]
    unknown = asyncio.run(pool(pool_request("/ded/versions/9/infer")))
    assert unknown.status_code == 404 and "retry-after" not in unknown.headers


# ------------------------------------------------------------------------------ read your writes: what is waited for


def app(name: str, route: str, min_replicas: int = 1, user_config: dict | None = None) -> "AppConfig":
    from modelpool.management.serve_configs import AppConfig

    return AppConfig(name, route, "d", {"version": "v", "autoscaling_config": {"min_replicas": min_replicas},
                                        "user_config": user_config or {}})


def test_a_deploy_waits_for_running_apps_that_change_in_place_not_for_starting_ones():
    from modelpool.management.deployer import changes_in_place, fingerprint, is_deployed
    from modelpool.management.serve_state import LiveApp

    pool = app("pool", "/v2/models", user_config={"catalog": {"a": {}}})
    running = LiveApp("/v2/models", "RUNNING", 2, config_id=fingerprint(pool))
    assert is_deployed(pool, running)  # Serve runs exactly this: not sent again, nothing waited for
    changed = app("pool", "/v2/models", user_config={"catalog": {"a": {}, "b": {}}})
    assert not is_deployed(changed, running) and changes_in_place(changed, running)
    assert not is_deployed(pool, LiveApp("/v2/models", "DELETING", 2, config_id=fingerprint(pool)))
    assert not changes_in_place(app("m", "/v2/models/m", min_replicas=3), LiveApp("/v2/models/m", "RUNNING", 1))
    assert not changes_in_place(app("m", "/v2/models/m"), None)  # a new app starts replicas: not waited for
    assert not changes_in_place(app("m", "/v2/models/m"), LiveApp("/v2/models/m", "DEPLOYING", 0))


def test_the_owner_of_a_path_is_the_longest_whole_segment_prefix():
    from modelpool.management.route_probe import owner_of

    routes = {"management": "/", "pool": "/v2/models", "iris": "/v2/models/iris", "iris:1": "/v2/models/iris/versions/1"}
    assert owner_of("/v2/models/iris/versions/1", routes) == "iris:1"
    assert owner_of("/v2/models/iris/versions/2", routes) == "iris"
    assert owner_of("/v2/models/iris2", routes) == "pool"
    assert owner_of("/v2/health/ready", routes) == "management"


def test_moved_routes_are_waited_for_at_their_new_owner_when_it_can_answer():
    """set-default moves iris's short route from version 1 to 2; an unregistered app's route falls to the pool."""
    from modelpool.management.deployer import new_route_owners
    from modelpool.management.serve_state import LiveApp

    live = {"pool": LiveApp("/v2/models", "RUNNING", 1), "m:1": LiveApp("/v2/models/m", "RUNNING", 1),
            "m:2": LiveApp("/v2/models/m/versions/2", "RUNNING", 1), "gone:1": LiveApp("/v2/models/gone", "DELETING", 1),
            "new:1": LiveApp(None, "DEPLOYING", 0)}
    apps = [app("m:1", "/v2/models/m/versions/1"), app("m:2", "/v2/models/m"), app("pool", "/v2/models"),
            app("new:1", "/v2/models/new")]
    owners = new_route_owners(apps, apps, live)
    assert owners == {"/v2/models/m": "m:2", "/v2/models/m/versions/1": "m:1", "/v2/models/m/versions/2": "m:2",
                      "/v2/models/gone": "pool"}  # /v2/models/new: its app is starting, requests wait for it


def test_the_probe_asks_the_ingress_which_replica_answers_each_moved_route():
    """A real HTTP server plays the ingress: the route answers from the old owner twice, then from the new one."""
    import http.server
    import threading

    from modelpool.management.route_probe import Ingress, wait_for_owners

    answers_seen: list[str] = []

    class Ingress_(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            answers_seen.append(self.path)
            replica = "old-replica" if len(answers_seen) <= 2 else "new-replica"
            self.send_response(404)
            self.send_header("x-modelpool-replica", replica)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ingress_)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ingress = Ingress(f"http://127.0.0.1:{server.server_address[1]}", {"Authorization": "Bearer t"})
        replicas = {"old-replica": "m:1", "new-replica": "m:2"}
        assert wait_for_owners(ingress, {"/v2/models/m": "m:2"}, lambda: replicas, timeout_s=5) == []
        assert answers_seen == ["/v2/models/m/-"] * 3
        assert wait_for_owners(ingress, {"/v2/models/m": "m:3"}, lambda: replicas, timeout_s=0.2) == ["/v2/models/m"]
        answers_seen.clear()  # an app being deleted still answers while it drains: it answers the truth (retired)
        assert wait_for_owners(ingress, {"/v2/models/m": "pool"}, lambda: replicas, draining=["m:1"]) == []
        assert answers_seen == ["/v2/models/m/-"]
    finally:
        server.shutdown()
        server.server_close()
    refused = Ingress(f"http://127.0.0.1:{server.server_address[1]}")
    assert wait_for_owners(refused, {"/v2/models/m": "m:2"}, lambda: {}, timeout_s=5) == []  # no ingress here: no wait


# ------------------------------------------------------------------------------ after a route moves: no stale answers


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelpool.deployments.examples import build_examples

    folder = tmp_path_factory.mktemp("store")
    build_examples(folder)
    return folder


def replica_request(root: str, path: str) -> Request:
    request = pool_request("")
    request.scope.update({"path": root + path, "root_path": root})
    return request


@pytest.mark.parametrize("root, remaining, status, field", [
    ("/v2/models/iris/versions/1", ["2"], 404, "version"),   # its own version, asked for by name: gone
    ("/v2/models/iris", ["2"], 503, "version"),              # the model's short route: version 2 takes it, retry
    ("/v2/models/iris", [], 404, "model_name"),              # nothing left of the model
])
def test_an_unregistered_versions_draining_replica_answers_what_the_registry_says(store, tmp_path, root, remaining,
                                                                                   status, field):
    """Serve keeps a deleted app's replicas reachable while they drain, and HAProxy answers one more request on a
    connection kept open across its reload with the routes from before: that request must not be served."""
    from modelpool.deployments.model_deployment import ModelServer

    replica = ModelServer(str(store / "iris-1.zip"), str(tmp_path / "cache"), "iris", "1")
    serving = load_settings({}, {}).serving_options()
    replica.reconfigure({"versions": ["1", *remaining], "serving": serving})
    assert asyncio.run(replica(replica_request(root, "/infer"))).status_code == 200
    replica.reconfigure({"versions": remaining, "serving": serving, "retired": True})
    answer = asyncio.run(replica(replica_request(root, "/infer")))
    assert (answer.status_code, json.loads(answer.body)["field"]) == (status, field)
    assert ("retry-after" in answer.headers) == (status == 503)

