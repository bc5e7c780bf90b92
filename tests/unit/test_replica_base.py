"""The entry points ModelServer and GenericPool share (``modelpool.deployments.replica_base``), in process.

A model that fails to load in the generic pool is a 500 naming the model and the reason on every entry
point (HTTP, a protocol front's call, gRPC), and the pool keeps serving its other models. The failure is a
real one: the replica's cache folder is a file, so unpacking the archive fails with an OSError.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from modelpool.cluster.settings import load_settings
from modelpool.deployments.codecs import torchserve
from modelpool.deployments.examples import build_examples
from modelpool.deployments.generic_pool import GenericPool, models_per_replica
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.management import serve_configs
from modelpool.management.placement import pool_config
from modelpool.management.serve_configs import PoolConfig

ROW = [5.1, 3.5, 1.4, 0.2]


class GrpcContext:
    """What Serve's gRPC ingress hands a replica method: invocation metadata in, a status code and details out."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.details = ""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return []

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def pool_with(catalog: dict, cache: Path) -> GenericPool:
    """A pool configured as management configures it; it loads without ``@serve.multiplexed`` (that needs Serve)."""
    config = PoolConfig(serving=load_settings({}, {}).serving_options())
    app = serve_configs.generic_pool_app_config(config, catalog, sorted(catalog), str(cache), "test",
                                                {name: ["1"] for name in catalog})
    pool = GenericPool(**app.init_kwargs)
    pool.reconfigure(app.deployment_options["user_config"])
    loaded: dict[str, LoadedModel] = {}

    async def get_model(model_id: str) -> LoadedModel:
        if model_id not in loaded:
            name, version, _ = model_id.rsplit(":", 2)
            source = pool.catalog[name]["versions"][version]["source"]
            loaded[model_id] = pool._load(source, name, version)
        return loaded[model_id]

    pool.get_model = get_model
    return pool


def entry(source: Path) -> dict:
    return {"default": "1", "all_versions": ["1"], "versions": {"1": {
        "source": str(source), "digest": source.name, "max_batch_size": 8, "max_batch_delay_ms": 1}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    build_examples(folder)
    return folder


@pytest.fixture
def broken_pool(store, tmp_path) -> GenericPool:
    """iris in a pool whose cache is not a folder: every load of it fails."""
    cache = tmp_path / "cache-is-a-file"
    cache.write_text("not a folder")
    return pool_with({"iris": entry(store / "iris-1.zip")}, cache)


def http(pool: GenericPool) -> TestClient:
    async def app(scope, receive, send) -> None:
        response = await pool(Request({**scope, "root_path": serve_configs.GENERIC_POOL_ROUTE}, receive))
        await response(scope, receive, send)

    return TestClient(app)


def test_a_model_that_fails_to_load_is_a_500_naming_it_over_http(broken_pool):
    answer = http(broken_pool).post("/v2/models/iris/infer", json={"inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]})
    assert answer.status_code == 500
    assert answer.json()["error"].startswith("model 'iris' version 'default' failed: NotADirectoryError")
    assert answer.headers["x-modelpool-pool"] == "generic"


def test_a_model_that_fails_to_load_is_a_500_in_the_protocols_shape(broken_pool):
    status, body, headers = asyncio.run(broken_pool.protocol_call(
        torchserve.NAME, "iris", "1", "infer", json.dumps(ROW).encode(), {"content-type": "application/json"}))
    error = json.loads(body)
    assert status == 500 and headers["content-type"] == "application/json"
    assert error["code"] == 500 and error["message"].startswith("model 'iris' version '1' failed: NotADirectoryError")


def test_a_model_that_fails_to_load_is_internal_over_grpc(broken_pool):
    context = GrpcContext()
    answer = asyncio.run(broken_pool.ModelInfer(pb.ModelInferRequest(model_name="iris"), context))
    assert answer == pb.ModelInferResponse()
    assert context.code == grpc.StatusCode.INTERNAL
    assert context.details.startswith("model 'iris' failed to load: NotADirectoryError")
    ready = GrpcContext()
    assert not asyncio.run(broken_pool.ModelReady(pb.ModelReadyRequest(name="iris"), ready)).ready
    assert ready.code == grpc.StatusCode.INTERNAL


def test_unknown_models_stay_404s_and_a_loadable_model_answers_next_to_a_broken_one(store, tmp_path):
    pool = pool_with({"iris": entry(store / "iris-1.zip"), "flower": entry(tmp_path / "gone.zip")}, tmp_path / "cache")
    client = http(pool)
    unknown = client.get("/v2/models/rose")
    assert unknown.status_code == 404 and unknown.json()["field"] == "model_name"
    gone = client.get("/v2/models/flower")  # its archive is gone: the fetch says so, as a client error
    assert gone.status_code == 404 and gone.json()["error"] == "no model archive 'gone.zip'"
    answer = client.post("/v2/models/iris/predict", json={"instances": [ROW]})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    pool.check_health()  # the loaded model is watched and within its response_timeout


@pytest.mark.parametrize("overrides", [{}, {"pool_models_per_replica": 3}])
def test_pool_replicas_keep_as_many_models_loaded_as_the_setting_says(overrides):
    """--pool-models-per-replica reaches the pool's replicas through their runtime_env; unset, Settings' default holds."""
    settings = load_settings(overrides, {})
    app = serve_configs.generic_pool_app_config(pool_config(settings), {}, [], "/cache", "test")
    replica_environ = app.deployment_options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert models_per_replica(replica_environ) == settings.pool_models_per_replica
    assert models_per_replica({}) == load_settings({}, {}).pool_models_per_replica
