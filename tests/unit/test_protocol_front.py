"""The TorchServe and KServe V1 fronts over real HTTP, in process, with the real replicas behind them.

Every part is the real one: the fronts and the replicas (``ModelServer`` for iris v1 and v2, ``GenericPool`` for
``flower``) configured with the user_config management's own config functions produce, and a router that picks
an app by longest route prefix, as Serve's ingress does. Two things stand in for Serve: the DeploymentHandle
(a call to the replica's ``protocol_call`` in this process) and ``@serve.multiplexed`` (the pool loads directly).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from modelpool.cluster.settings import load_settings
from modelpool.deployments.examples import build_examples
from modelpool.deployments.generic_pool import GenericPool
from modelpool.deployments import app_names
from modelpool.deployments.app_names import PROTOCOL_FRONT_APPS
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.model_deployment import ModelServer
from modelpool.deployments.protocol_front import POOL, ProtocolFront, Target, pick_target
from modelpool.deployments.codecs.base import ProtocolCall
from modelpool.management import serve_configs
from modelpool.management.serve_configs import ModelConfig, PoolConfig

ROW = [5.1, 3.5, 1.4, 0.2]
ROWS = [ROW, [6.3, 3.3, 6.0, 2.5]]
MAX_BODY = 4096
TOKEN = "front-inference-token-0123456789"


class InProcessHandle:
    """What a front uses of a DeploymentHandle: ``protocol_call.remote(...)``, run on the real replica here."""

    def __init__(self, replica) -> None:
        self.replica = replica
        self.protocol_call = self

    def remote(self, *args):
        return asyncio.ensure_future(self.replica.protocol_call(*args))


class Cluster:
    """iris v1 and v2 (the default) with replicas of their own, flower in the generic pool, both fronts."""

    def __init__(self, store: Path, cache: Path, serving: dict) -> None:
        iris = [ModelConfig(name="iris", version=v, source=str(store / f"iris-{v}.zip"), source_digest=f"iris{v}",
                            is_default=v == "2", versions=("1", "2"), max_body_bytes=MAX_BODY, serving=serving)
                for v in ("1", "2")]
        catalog = {"flower": {"default": "1", "all_versions": ["1"], "versions": {
            "1": {"source": str(store / "iris-1.zip"), "digest": "flower1", "max_batch_size": 64,
                  "max_batch_delay_ms": 5, "response_timeout_s": 120}}}}
        pool_config = PoolConfig(max_body_bytes=MAX_BODY, serving=serving)
        self.replicas: dict[str, object] = {}
        for config in iris:
            app = serve_configs.model_app_config(config, str(cache), "test")
            replica = ModelServer(**app.init_kwargs)
            replica.reconfigure(app.deployment_options["user_config"])
            replica._headers["x-modelpool-replica"] = f"iris-{config.version}"  # in process they share one pid
            self.replicas[app.route_prefix] = replica
        pool_app = serve_configs.generic_pool_app_config(pool_config, catalog, ["flower", "iris"], str(cache), "test",
                                                         {"flower": ["1"], "iris": ["1", "2"]})
        self.pool = GenericPool(**pool_app.init_kwargs)
        self.pool.reconfigure(pool_app.deployment_options["user_config"])
        self.pool.get_model = self._load_without_multiplexing
        self._loaded: dict[str, LoadedModel] = {}
        self.replicas[pool_app.route_prefix] = self.pool
        handles = {(app_names.app_name(c.name, c.version), app_names.deployment_name(c.name, c.version)):
                   InProcessHandle(self.replicas[serve_configs.route_prefix(c.name, c.version, c.is_default)])
                   for c in iris}
        handles[(POOL.app, POOL.deployment)] = InProcessHandle(self.pool)
        for app in serve_configs.protocol_front_app_configs(iris, catalog, ["flower", "iris"], pool_config, "test"):
            front = ProtocolFront(**app.init_kwargs)
            front.reconfigure(app.deployment_options["user_config"])
            front._handle = lambda target: handles[(target.app, target.deployment)]
            self.replicas[app.route_prefix] = front
        self.routes = sorted(self.replicas, key=len, reverse=True)

    async def _load_without_multiplexing(self, model_id: str) -> LoadedModel:
        """``@serve.multiplexed`` needs a Serve replica; the loading itself is the pool's own."""
        if model_id not in self._loaded:
            name, version, _ = model_id.rsplit(":", 2)
            self._loaded[model_id] = self.pool._load(self.pool.catalog[name]["versions"][version]["source"], name,
                                                     version)
        return self._loaded[model_id]

    async def __call__(self, scope, receive, send) -> None:
        """Longest route prefix by whole segments, as Serve's ingress routes."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        prefix = next(p for p in self.routes if path == p or path.startswith(p.rstrip("/") + "/"))
        scope = {**scope, "root_path": prefix}
        response = await self.replicas[prefix](Request(scope, receive))
        await response(scope, receive, send)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    build_examples(folder)
    return folder


@pytest.fixture(scope="module")
def cluster(store, tmp_path_factory) -> Cluster:
    return Cluster(store, tmp_path_factory.mktemp("cache"), load_settings({}, {}).serving_options())


@pytest.fixture(scope="module")
def http(cluster) -> TestClient:
    with TestClient(cluster) as client:
        yield client


def v2_predict(http, path: str, rows) -> list:
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
    outputs = http.post(path, json=body).json()["outputs"]
    return next(o for o in outputs if o["name"] == "predict")["data"]


# ------------------------------------------------------------------------------------------ TorchServe

def test_torchserve_answers_a_json_row_bare_from_the_default_version(cluster, http):
    answer = http.post("/predictions/iris", json=ROW)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelpool-replica"] == "iris-2"
    assert answer.json() == v2_predict(http, "/v2/models/iris/infer", [ROW])[0]
    assert answer.headers["x-modelpool-batch-size"] == "1"


def test_torchserve_reaches_a_given_version_with_a_raw_csv_upload(http):
    answer = http.put("/predictions/iris/1", content=b"5.1,3.5,1.4,0.2\n")  # curl -T row.csv
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelpool-replica"] == "iris-1"
    assert answer.json() == v2_predict(http, "/v2/models/iris/versions/1/infer", [ROW])[0]


def test_torchserve_takes_rows_and_form_uploads(http):
    rows = http.post("/predictions/iris", json=ROWS)
    assert rows.json() == v2_predict(http, "/v2/models/iris/infer", ROWS)
    form = http.post("/predictions/iris/2", files={"data": ("rows.json", json.dumps(ROWS), "application/json")})
    assert form.json() == rows.json()
    posted = http.post("/predictions/iris", content=b"6.3,3.3,6.0,2.5",
                       headers={"content-type": "application/x-www-form-urlencoded"})  # what curl -d sends
    assert posted.json() == rows.json()[1]


def test_torchserve_serves_a_generic_pool_model(http):
    answer = http.post("/predictions/flower", json=ROW)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelpool-pool"] == "generic"
    assert answer.json() == v2_predict(http, "/v2/models/iris/versions/1/infer", [ROW])[0]
    assert http.post("/predictions/flower/1", json=ROW).json() == answer.json()


@pytest.mark.parametrize(("path", "body", "status", "kind", "field", "says"), [
    ("/predictions/nosuch", ROW, 404, "ModelNotFoundException", "model_name", "served models: flower, iris"),
    ("/predictions/iris/9", ROW, 404, "ModelVersionNotFoundException", "version", "served versions: 1, 2"),
    ("/predictions/flower/9", ROW, 404, "ModelVersionNotFoundException", "version", "served versions: 1"),
    ("/predictions/iris", {"rows": ROWS}, 400, "BadRequestException", "body", '{"instances": rows}'),
    ("/predictions/iris", [1.0, 2.0], 422, "BadRequestException", "inputs[0].shape", "[-1, 4]"),
    ("/predictions", ROW, 404, "ResourceNotFoundException", "path", "/predictions/{model_name}"),
])
def test_torchserve_errors_come_in_its_shape_naming_the_field(http, path, body, status, kind, field, says):
    answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert (error["code"], error["type"], error["field"]) == (status, kind, field)
    assert says in error["message"]


def test_torchserve_refuses_a_bad_method_and_an_oversized_body(http):
    assert http.get("/predictions/iris").json()["type"] == "MethodNotAllowedException"
    too_big = http.post("/predictions/iris", content=b"1," * MAX_BODY)
    assert too_big.status_code == 413 and too_big.json()["field"] == "body"


# ------------------------------------------------------------------------------------------ KServe V1

def test_kserve_v1_lists_models_and_answers_readiness(http):
    assert http.get("/v1/models").json() == {"models": ["flower", "iris"]}
    assert http.get("/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert http.get("/v1/models/iris/versions/1").headers["x-modelpool-replica"] == "iris-1"
    assert http.get("/v1/models/flower").json() == {"name": "flower", "ready": True}


def test_kserve_v1_predicts_on_default_and_given_versions_and_the_pool(http):
    default = http.post("/v1/models/iris:predict", json={"instances": ROWS})
    assert default.status_code == 200, default.text
    assert default.json() == {"predictions": v2_predict(http, "/v2/models/iris/infer", ROWS)}
    assert default.headers["x-modelpool-replica"] == "iris-2"
    v1 = http.post("/v1/models/iris/versions/1:predict", json={"instances": ROWS})
    assert v1.headers["x-modelpool-replica"] == "iris-1"
    assert v1.json() == {"predictions": v2_predict(http, "/v2/models/iris/versions/1/infer", ROWS)}
    pooled = http.post("/v1/models/flower:predict", json={"inputs": ROWS})
    assert pooled.json() == v1.json() and pooled.headers["x-modelpool-pool"] == "generic"


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), [
    ("post", "/v1/models/iris:explain", {"instances": ROWS}, 501, "path"),
    ("post", "/v1/models/flower:explain", {"instances": ROWS}, 501, "path"),
    ("post", "/v1/models/nosuch:predict", {"instances": ROWS}, 404, "model_name"),
    ("get", "/v1/models/nosuch", None, 404, "model_name"),
    ("post", "/v1/models/iris:predict", {"instances": []}, 400, "instances"),
    ("post", "/v1/models/iris:predict", {"instances": [[1, 2, 3, 4], [1]]}, 400, "instances[1]"),
    ("post", "/v1/models/iris:score", {"instances": ROWS}, 404, "path"),
    ("get", "/v1/models/iris:predict", None, 405, "method"),
])
def test_kserve_v1_errors_are_its_error_shape_naming_the_field(http, method, path, body, status, field):
    answer = http.request(method.upper(), path, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "field"} and answer.json()["field"] == field


# ------------------------------------------------------------------------------------------ the shared path

def test_protocol_calls_share_model_calls_with_v2_requests(cluster):
    """Calls that arrive together through a front and through V2 are batched into one model call."""
    replica = cluster.replicas["/v2/models/iris"]
    front = cluster.replicas["/predictions"]
    batcher = replica.model.batcher
    v2_body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [ROW]}]})

    async def both() -> list:
        calls = []
        for _ in range(8):
            calls.append(front.forward(ProtocolCall("iris", None, "infer"), json.dumps(ROW).encode(),
                                       {"content-type": "application/json"}))
            calls.append(replica.protocol_call("kserve-v1", "iris", None, "infer",
                                               json.dumps({"instances": [ROW]}).encode(), {}))
            calls.append(replica.model.infer(_v2_decoder(v2_body)))
        return await asyncio.gather(*calls)

    before = batcher.stats.items, batcher.stats.batches
    answers = asyncio.run(both())
    items, batches = batcher.stats.items - before[0], batcher.stats.batches - before[1]
    assert items == 24 and batches < 24  # some calls shared a batch across the three wire formats
    sizes = {int(headers["x-modelpool-batch-size"]) for status, _, headers in answers[::3] if status == 200}
    assert max(sizes) > 1


def _v2_decoder(body: str):
    from modelpool.deployments.codecs import v2_binary

    async def decode():
        return v2_binary.decode(body.encode(), {})
    return decode


def test_a_token_protects_the_front_and_refusals_come_in_each_shape(store, tmp_path):
    serving = load_settings({"inference_token": TOKEN}, {}).serving_options()
    guarded = Cluster(store, tmp_path, serving)
    with TestClient(guarded) as client:
        torch_401 = client.post("/predictions/iris", json=ROW)
        assert torch_401.status_code == 401 and torch_401.json()["type"] == "InvalidKeyException"
        assert torch_401.headers["www-authenticate"] == "Bearer"
        kserve_401 = client.get("/v1/models")
        assert kserve_401.status_code == 401 and kserve_401.json()["field"] == "authorization"
        allowed = client.post("/predictions/iris", json=ROW, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200, allowed.text


def test_a_replica_asked_for_a_version_it_does_not_serve_says_retry(cluster):
    """A routing table a moment stale (set-default moving the short route) is early, not wrong: 503 + Retry-After."""
    status, body, headers = asyncio.run(cluster.replicas["/v2/models/iris"].protocol_call(
        "torchserve", "iris", "1", "infer", json.dumps(ROW).encode(), {}))
    assert (status, json.loads(body)["type"], headers["Retry-After"]) == (503, "ServiceUnavailableException", "1")


def test_a_call_no_replica_takes_is_a_503_in_time(cluster, http, monkeypatch):
    monkeypatch.setattr("modelpool.deployments.protocol_front.READY_TIMEOUT_S", 0.3)
    front = cluster.replicas["/v1"]

    class Stalled:
        """A handle whose call no replica ever picks up."""

        def __init__(self) -> None:
            self.protocol_call = self

        def remote(self, *args):
            return asyncio.ensure_future(asyncio.sleep(3600))

    monkeypatch.setattr(front, "_handle", lambda target: Stalled())
    answer = http.get("/v1/models/iris")
    assert (answer.status_code, answer.json()["field"], answer.headers["Retry-After"]) == (503, "model_name", "1")
    assert "not ready" in answer.json()["error"]


def test_a_full_queue_behind_a_handle_is_a_429_with_retry_after_in_the_protocols_shape(cluster, http, monkeypatch):
    """Serve's router refuses past max_queued_requests (BackPressureError): TorchServe's client reads a 429."""
    from ray.serve.exceptions import BackPressureError

    front = cluster.replicas["/predictions"]

    class Full:
        def __init__(self) -> None:
            self.protocol_call = self

        async def _refuse(self):
            raise BackPressureError(num_queued_requests=100, max_queued_requests=100, status_code=429,
                                    retry_after_s=1)

        def remote(self, *args):
            return asyncio.ensure_future(self._refuse())

    monkeypatch.setattr(front, "_handle", lambda target: Full())
    answer = http.post("/predictions/iris", json=[5.1, 3.5, 1.4, 0.2])
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
    assert "max_queued_requests" in answer.json()["message"] and "iris" in answer.json()["message"]


# ------------------------------------------------------------------------------------------ routing table

def test_the_table_sends_dedicated_versions_to_their_apps_and_the_rest_to_the_pool():
    iris = [ModelConfig(name="iris", version=v, source="s", source_digest=v, is_default=v == "2",
                        request_timeout_s=30.0) for v in ("1", "2")]
    routes = {key: Target(**target) for key, target in serve_configs.protocol_routes(iris).items()}
    assert pick_target(routes, ProtocolCall("iris", None, "infer")).app == "model:iris:2"
    assert pick_target(routes, ProtocolCall("iris", "1", "infer")) == Target("model:iris:1", "iris_v1", 30.0)
    assert pick_target(routes, ProtocolCall("iris", "3", "infer")) == POOL  # the pool knows every version's fate
    assert pick_target(routes, ProtocolCall("flower", None, "infer")) == POOL


def test_front_configs_change_in_place_when_models_change():
    pool = PoolConfig(serving={"debug": True})
    iris = ModelConfig(name="iris", version="1", source="s", source_digest="d")
    before = serve_configs.protocol_front_app_configs([], {}, [], pool, "v")
    after = serve_configs.protocol_front_app_configs([iris], {}, ["iris"], pool, "v")
    assert [(a.app_name, a.route_prefix) for a in after] == [(PROTOCOL_FRONT_APPS["torchserve"], "/predictions"),
                                                             (PROTOCOL_FRONT_APPS["kserve-v1"], "/v1")]
    for old, new in zip(before, after):  # same fingerprint: Serve reconfigures the replica, no restart
        assert old.deployment_options["version"] == new.deployment_options["version"]
        assert new.deployment_options["user_config"]["routes"]["iris/"]["app"] == "model:iris:1"
        assert new.deployment_options["user_config"]["serving"] == {"debug": True}
        assert new.deployment_options["max_ongoing_requests"] >= 128  # never Serve's default of 5


def test_a_front_drops_handles_to_apps_no_longer_routed():
    front = ProtocolFront("torchserve")
    front._handles = {("model:iris:1", "iris_v1"): object(), (POOL.app, POOL.deployment): object()}
    front.reconfigure({"routes": {}, "models": []})
    assert list(front._handles) == [(POOL.app, POOL.deployment)]
    np.testing.assert_equal(front.models, [])
