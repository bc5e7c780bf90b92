"""``max_queued_requests`` (issue 18, load shedding), from the flag and the register/scale parameter to Serve's config.

Each model version has a queue limit: the server's ``--max-queued-requests`` unless register or scale gave one.
It reaches Serve as the deployment's ``max_queued_requests`` with a 429 ``backpressure_config`` (Serve's router),
and the replicas' own ports through ``user_config`` (``max_ongoing_requests`` and ``max_queued_requests``); neither
is in the version fingerprint, so a change lands on the running replicas without a restart.
"""
from __future__ import annotations

from typing import Any

import pytest

from modelpool.cli import build_parser
from modelpool.cluster.defaults import DEFAULT_MAX_QUEUED_REQUESTS, DEFAULT_THREADS
from modelpool.cluster.settings import SettingsError, load_settings
from modelpool.deployments.app_names import GENERIC_POOL_APP, app_name
from modelpool.deployments.errors import RequestError
from modelpool.management.describe import describe_record
from modelpool.management.graph_configs import GraphConfig, graph_app_config, resolve_graph
from modelpool.management.params import RegisterParams, ScaleParams
from modelpool.management.placement import model_config, plan, pool_config
from modelpool.management.registry import ModelRecord, Registry
from modelpool.management.serve_configs import (ModelConfig, PoolConfig, generic_pool_app_config, model_app_config,
                                                serve_max_queued)
from tests.unit.both_clients import Flavour, flavour_fixture  # noqa: F401 (a fixture)
from tests.unit.management_app import TOKEN, RunningManagement, management_fixture, model_store  # noqa: F401
from tests.unit.test_graph_configs import RECORDS, SPEC

BACKPRESSURE = {"status_code": 429, "retry_after_s": 1}


def record(**overrides: Any) -> ModelRecord:
    fields = dict(name="iris", version="1", url="iris-1.zip", source="objects://iris/1", digest="d", handler="sklearn",
                  runtime="python", batch_size=64, max_batch_delay_ms=5, initial_workers=1, min_workers=1,
                  max_workers=2, response_timeout_s=120)
    fields.update(overrides)
    return ModelRecord(**fields)


def deployed(model: ModelConfig) -> dict:
    return model_app_config(model, "/cache", "0.1").deployment_options


def config(**overrides: Any) -> ModelConfig:
    return ModelConfig(**{"name": "iris", "version": "1", "source": "/s/iris-1.zip", "source_digest": "abc",
                          **overrides})


# ------------------------------------------------------------------------------------------ the setting
def test_the_setting_has_torchserves_default_a_flag_and_an_environment_variable():
    assert DEFAULT_MAX_QUEUED_REQUESTS == 100
    assert load_settings({}, {}).max_queued_requests == 100
    assert load_settings({}, {"MODELPOOL_MAX_QUEUED_REQUESTS": "-1"}).max_queued_requests == -1
    assert load_settings({"max_queued_requests": "0"}, {"MODELPOOL_MAX_QUEUED_REQUESTS": "7"}).max_queued_requests == 0
    args = build_parser().parse_args(["start", "--max-queued-requests", "-1"])
    assert args.max_queued_requests == "-1", "a negative value is the flag's value, not an option"


@pytest.mark.parametrize("value", ["-2", "1000001", "many"])
def test_a_bad_setting_is_refused_naming_the_flag_and_the_variable(value):
    with pytest.raises(SettingsError, match="--max-queued-requests / MODELPOOL_MAX_QUEUED_REQUESTS"):
        load_settings({"max_queued_requests": value}, {})


# ------------------------------------------------------------------------------------------ Serve's config
def test_the_limit_reaches_serves_router_and_the_replica_ports_user_config():
    options = deployed(config(max_ongoing_requests=80, max_queued_requests=7))
    assert options["max_queued_requests"] == 7
    assert options["backpressure_config"] == BACKPRESSURE, "429 with Retry-After, as the replica ports answer"
    assert (options["user_config"]["max_ongoing_requests"], options["user_config"]["max_queued_requests"]) == (80, 7)
    defaults = deployed(config())
    assert (defaults["max_queued_requests"], defaults["user_config"]["max_queued_requests"]) == (100, 100)


def test_no_limit_and_none_waiting_in_serves_terms():
    """-1 is Serve's own "no limit"; Serve refuses 0, so "none wait" is its smallest queue there (1)."""
    unlimited = deployed(config(max_queued_requests=-1))
    assert (unlimited["max_queued_requests"], unlimited["user_config"]["max_queued_requests"]) == (-1, -1)
    none_wait = deployed(config(max_queued_requests=0))
    assert none_wait["max_queued_requests"] == 1 and serve_max_queued(0) == 1
    assert none_wait["user_config"]["max_queued_requests"] == 0, "the replica port lets none wait"


def test_serve_accepts_the_options_as_deployment_options():
    """What management hands ``serve.deployment(...).options(**options)`` is valid for Serve 2.60 (no cluster)."""
    from ray import serve

    class Target:
        def __call__(self) -> None: ...

    for queued in (-1, 0, 5):
        options = deployed(config(max_queued_requests=queued))
        deployment = serve.deployment(Target).options(
            max_queued_requests=options["max_queued_requests"], backpressure_config=options["backpressure_config"])
        assert deployment.max_queued_requests == serve_max_queued(queued)
        assert (deployment.backpressure_config.status_code, deployment.backpressure_config.retry_after_s) == (429, 1)


def test_changing_the_limit_keeps_the_version_so_replicas_are_updated_in_place():
    base = deployed(config())
    for queued in (-1, 0, 5, 100_000):
        changed = deployed(config(max_queued_requests=queued))
        assert changed["version"] == base["version"], queued
        assert changed["user_config"] != base["user_config"] or queued == 100


def test_the_generic_pool_gets_serves_limit_and_no_port_keys():
    options = generic_pool_app_config(pool_config(load_settings({"max_queued_requests": "12"}, {})), {}, [],
                                      "/cache", "0.1").deployment_options
    assert (options["max_queued_requests"], options["backpressure_config"]) == (12, BACKPRESSURE)
    assert "max_queued_requests" not in options["user_config"], "the pool has no port: Serve's router is its queue"
    base = generic_pool_app_config(PoolConfig(), {}, [], "/cache", "0.1").deployment_options
    assert generic_pool_app_config(PoolConfig(max_queued_requests=3), {}, [], "/cache", "0.1").deployment_options[
        "version"] == base["version"]


def test_a_graph_gets_the_limit_at_serve_and_at_its_port():
    root = resolve_graph(SPEC, RECORDS, {"iris": "1", "prep": "1"}, dedicated={("iris", "1")})
    base = graph_app_config(GraphConfig(name="flow", root=root, metadata={}), "/cache", "0.1").deployment_options
    options = graph_app_config(GraphConfig(name="flow", root=root, metadata={}, max_queued_requests=9,
                                           max_ongoing_requests=40), "/cache", "0.1").deployment_options
    assert (options["max_queued_requests"], options["backpressure_config"]) == (9, BACKPRESSURE)
    assert (options["user_config"]["max_ongoing_requests"], options["user_config"]["max_queued_requests"]) == (40, 9)
    assert options["version"] == base["version"]


# ------------------------------------------------------------------------------------------ record -> config
def test_a_versions_own_limit_wins_over_the_servers_and_none_follows_the_server():
    settings = load_settings({"max_queued_requests": "30"}, {})
    assert model_config(record(), None, settings, True, ["1"], []).max_queued_requests == 30
    assert model_config(record(max_queued_requests=0), None, settings, True, ["1"], []).max_queued_requests == 0
    placed = plan([record(max_queued_requests=-1)], {}, {}, settings).dedicated[0]
    assert deployed(placed)["max_queued_requests"] == -1
    assert deployed(placed)["user_config"]["max_ongoing_requests"] == placed.max_ongoing_requests == 128


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("cls, values", [(RegisterParams, {"url": "x.zip"}), (ScaleParams, {})])
def test_register_and_scale_take_the_limit_and_leave_it_unset_by_default(cls, values):
    assert cls.parse(values).max_queued_requests is None
    assert cls.parse({**values, "max_queued_requests": ""}).max_queued_requests is None, "empty: the default"
    assert cls.parse({**values, "max_queued_requests": "-1"}).max_queued_requests == -1
    assert cls.parse({**values, "max_queued_requests": 0}).max_queued_requests == 0


@pytest.mark.parametrize("cls, values", [(RegisterParams, {"url": "x.zip"}), (ScaleParams, {})])
@pytest.mark.parametrize("bad", ["-2", "abc", "1.5", "1000001"])
def test_a_bad_limit_is_a_400_naming_the_field(cls, values, bad):
    with pytest.raises(RequestError) as caught:
        cls.parse({**values, "max_queued_requests": bad})
    assert (caught.value.status, caught.value.field) == (400, "max_queued_requests")
    assert caught.value.message.startswith("max_queued_requests: ")


def test_the_openapi_document_lists_the_parameter_and_the_describe_key():
    from modelpool.management.api import api

    spec = api.openapi()
    for path, method in (("/models", "post"), ("/models/{model_name}", "put"),
                         ("/models/{model_name}/{model_version}", "put")):
        parameter = {p["name"]: p for p in spec["paths"][path][method]["parameters"]}["max_queued_requests"]
        assert parameter["in"] == "query" and not parameter["required"], path
        assert (parameter["schema"]["minimum"], parameter["schema"]["maximum"]) == (-1, 1_000_000), path
    assert spec["components"]["schemas"]["ModelDescription"]["properties"]["maxQueuedRequests"]["type"] == "integer"


# ------------------------------------------------------------------------------------------ registry, describe
def test_records_keep_the_limit_and_older_records_without_it_still_load(tmp_path):
    from modelpool.cluster.object_store import ObjectStore

    registry = Registry(ObjectStore(str(tmp_path)))
    registry.put_model(record(max_queued_requests=5))
    assert registry.get_model("iris", "1").max_queued_requests == 5
    older = record(version="2").model_dump()
    del older["max_queued_requests"]
    registry.store.write_json("registry/models/iris/2.json", older)  # written before the field existed
    assert registry.get_model("iris", "2").max_queued_requests is None
    registry.put_model(record(version="3"))
    assert registry.get_model("iris", "3").max_queued_requests is None


def test_describe_shows_the_limit_in_effect():
    assert describe_record(record(), 1, 2, [], 64, True, True, max_queued=30)["maxQueuedRequests"] == 30
    assert describe_record(record(max_queued_requests=7), 1, 2, [], 64, True, True)["maxQueuedRequests"] == 7
    assert describe_record(record(), 1, 2, [], 64, True, True)["maxQueuedRequests"] == DEFAULT_MAX_QUEUED_REQUESTS


# ------------------------------------------------------------------------------------------ the manager
def deployment_of(management: RunningManagement, name: str, version: str) -> dict:
    return management.serve.apps[app_name(name, version)].deployment_options


def test_register_stores_the_limit_and_serves_it(management):
    manager = management.manager
    status, _ = manager.register(RegisterParams(url="iris-1.zip", initial_workers=1, max_queued_requests=3))
    assert status == 202
    assert manager.registry.get_model("iris", "1").max_queued_requests == 3
    options = deployment_of(management, "iris", "1")
    assert (options["max_queued_requests"], options["user_config"]["max_queued_requests"]) == (3, 3)
    assert manager.describe("iris", "1")[0]["maxQueuedRequests"] == 3
    manager.register(RegisterParams(url="iris-2.zip", initial_workers=1))
    assert manager.registry.get_model("iris", "2").max_queued_requests is None, "the server's, whatever it is then"
    assert manager.describe("iris", "2")[0]["maxQueuedRequests"] == manager.settings.max_queued_requests == 100


def test_a_scale_of_only_the_limit_is_applied_to_the_running_replica(management):
    manager = management.manager
    manager.register(RegisterParams(url="iris-1.zip", initial_workers=1))
    before = deployment_of(management, "iris", "1")
    replica = management.serve.replicas[app_name("iris", "1")]
    assert manager.scale("iris", "1", ScaleParams(max_queued_requests=0))[0] == 202
    after = deployment_of(management, "iris", "1")
    assert (after["max_queued_requests"], after["user_config"]["max_queued_requests"]) == (1, 0)
    assert after["version"] == before["version"], "no new replicas"
    assert management.serve.replicas[app_name("iris", "1")] is replica, "the same replica, reconfigured"
    assert after["autoscaling_config"] == before["autoscaling_config"], "workers unchanged"
    assert manager.registry.get_model("iris", "1").max_queued_requests == 0
    manager.scale("iris", "1", ScaleParams(min_worker=1, max_worker=3))
    assert manager.registry.get_model("iris", "1").max_queued_requests == 0, "a scale without it keeps it"
    assert manager.describe("iris", "1")[0]["maxQueuedRequests"] == 0


def test_a_version_in_the_generic_pool_meets_the_pools_queue(management):
    manager = management.manager
    manager.register(RegisterParams(url="iris-1.zip", max_queued_requests=4))
    assert manager.describe("iris", "1")[0]["maxQueuedRequests"] == 100, "the pool's limit serves it"
    assert management.serve.apps[GENERIC_POOL_APP].deployment_options["max_queued_requests"] == 100
    manager.scale("iris", "1", ScaleParams(min_worker=1, max_worker=1))
    assert manager.describe("iris", "1")[0]["maxQueuedRequests"] == 4, "its own, once it has replicas"


# ------------------------------------------------------------------------------------------ clients and CLI
def test_both_clients_send_the_limit_only_when_given(management, flavour):
    client = flavour.connect(management.url, token=TOKEN, timeout=30)
    client.register_model("iris-1.zip", initial_workers=1, max_queued_requests=-1)
    assert management.ingress.seen[-1].query["max_queued_requests"] == "-1"
    client.scale_model("iris", "1", max_queued_requests=0)
    assert management.ingress.seen[-1].query == {"max_queued_requests": "0", "synchronous": "false"}
    assert client.describe_model("iris", "1")[0]["maxQueuedRequests"] == 0
    client.scale_model("iris", "1", min_worker=1)
    assert "max_queued_requests" not in management.ingress.seen[-1].query
    client.register_model("iris-2.zip")
    assert "max_queued_requests" not in management.ingress.seen[-1].query


def test_a_bad_limit_from_a_client_is_the_servers_400(management, flavour):
    from modelpool.errors import BadRequest

    client = flavour.connect(management.url, token=TOKEN, timeout=30)
    with pytest.raises(BadRequest, match="max_queued_requests"):
        client.register_model("iris-1.zip", max_queued_requests=-2)


def test_the_cli_takes_the_limit_on_register_and_scale(management, capsys, monkeypatch, tmp_path):
    from modelpool.cli import main

    monkeypatch.delenv("MODELPOOL_URL", raising=False)
    monkeypatch.setenv("MODELPOOL_HOME", str(tmp_path / "home"))
    args = build_parser().parse_args(["models", "scale", "iris", "--max-queued-requests", "-1"])
    assert args.max_queued_requests == -1
    assert build_parser().parse_args(["models", "register", "iris-1.zip"]).max_queued_requests is None
    common = ["--url", management.url, "--token", TOKEN]
    assert main(["models", "register", "iris-1.zip", "--initial-workers", "1", "--max-queued-requests", "5",
                 *common]) == 0
    assert management.ingress.seen[-1].query["max_queued_requests"] == "5"
    assert main(["models", "scale", "iris", "1", "--max-queued-requests", "-1", *common]) == 0
    assert management.ingress.seen[-1].query == {"max_queued_requests": "-1", "synchronous": "false"}
    assert management.manager.registry.get_model("iris", "1").max_queued_requests == -1
    capsys.readouterr()
    assert main(["models", "describe", "iris", "1", *common]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert row.split()[header.split().index("QUEUE")] == "-1"


# ------------------------------------------------------------------------------------------ the front's limit
def test_the_front_limits_each_dedicated_version_to_its_running_plus_waiting_calls_per_replica():
    from modelpool.management.serve_configs import front_limits

    assert front_limits([config(), config(name="wine", max_queued_requests=-1),
                         config(name="digits", max_queued_requests=0, max_ongoing_requests=64)]) == {
        "model:iris:1": DEFAULT_THREADS + DEFAULT_MAX_QUEUED_REQUESTS, "model:digits:1": 64}
