"""Seldon-style server settings: parsed once at start, mapped onto Serve options and replica behaviour.

The cluster-level effect of each setting (keep-alive, access log, recycling, ...) is tested on a
real cluster in tests/integration/test_zzz_server_settings.py; these tests pin the mapping and the
replica-side logic that needs no cluster.
"""
from __future__ import annotations

import asyncio
import json
import random

import pytest

from modelpool.cluster.settings import SettingsError, load_settings
from modelpool.deployments import model_calls
from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.examples import build_examples
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.serving_options import RequestBudget, ServingOptions
from modelpool.management.placement import plan, pool_config
from modelpool.management.registry import ModelRecord
from modelpool.management.serve_configs import generic_pool_app_config, model_app_config

CSV = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"


def record(batch: int = 64) -> ModelRecord:
    return ModelRecord(name="iris", version="1", url="iris-1.zip", source="objects://iris/1", digest="d",
                       handler="sklearn", runtime="python", batch_size=batch, max_batch_delay_ms=5,
                       initial_workers=1, min_workers=1, max_workers=2, response_timeout_s=120)


def serve_options(settings) -> dict:
    config = plan([record()], {}, {}, settings).dedicated[0]
    return model_app_config(config, "/cache", "code").deployment_options


# ------------------------------------------------------------------------------ settings parsing
def test_each_new_setting_reads_its_flag_and_its_environment_variable():
    env = {"MODELPOOL_MAX_REQUESTS": "500", "MODELPOOL_MAX_REQUESTS_JITTER": "50", "MODELPOOL_KEEP_ALIVE_S": "30",
           "MODELPOOL_ACCESS_LOG": "false", "MODELPOOL_SINGLE_THREADED": "true", "MODELPOOL_DEBUG": "true",
           "MODELPOOL_PAYLOAD_PASSTHROUGH": "true", "MODELPOOL_METRICS_PORT": "9464"}
    from_env = load_settings({}, env)
    assert (from_env.max_requests, from_env.max_requests_jitter, from_env.keep_alive_s, from_env.access_log,
            from_env.single_threaded, from_env.debug, from_env.payload_passthrough, from_env.metrics_port) == (
        500, 50, 30, False, True, True, True, 9464)
    flags = load_settings({"max_requests": "7", "access_log": True, "debug": False}, env)
    assert (flags.max_requests, flags.access_log, flags.debug) == (7, True, False)


@pytest.mark.parametrize("field, value, flag", [
    ("max_requests", "-1", "--max-requests"),
    ("keep_alive_s", "0", "--keep-alive-s"),
    ("metrics_port", "70000", "--metrics-port"),
    ("single_threaded", "maybe", "--single-threaded"),
])
def test_bad_values_are_refused_naming_the_flag(field, value, flag):
    with pytest.raises(SettingsError, match=flag):
        load_settings({field: value}, {})


def test_debug_turns_the_log_level_to_debug():
    assert load_settings({"debug": True, "log_level": "WARNING"}, {}).logging_config()["log_level"] == "DEBUG"
    assert load_settings({"log_level": "WARNING"}, {}).logging_config() == {"log_level": "WARNING", "enable_access_log": True}


def test_single_threaded_lifts_the_threads_versus_batch_size_check():
    with pytest.raises(SettingsError, match="--threads"):
        load_settings({"threads": 1}, {})
    assert load_settings({"threads": 1, "single_threaded": True}, {}).threads == 1


# ------------------------------------------------------------------------------ mapping onto Serve
def test_threads_become_max_ongoing_requests_and_single_threaded_makes_it_one():
    assert serve_options(load_settings({"threads": 200}, {}))["max_ongoing_requests"] == 200
    single = serve_options(load_settings({"single_threaded": True}, {}))
    assert single["max_ongoing_requests"] == 1
    assert single["autoscaling_config"]["target_ongoing_requests"] == 1, "else autoscaling could never see load"


def test_log_level_access_log_and_replica_options_reach_the_deployment():
    options = serve_options(load_settings({"access_log": False, "log_level": "ERROR", "debug": False,
                                           "payload_passthrough": True, "max_requests": 100,
                                           "max_requests_jitter": 10}, {}))
    assert options["logging_config"] == {"log_level": "ERROR", "enable_access_log": False}
    assert options["user_config"]["serving"] == {"single_threaded": False, "debug": False, "payload_passthrough": True,
                                                 "max_requests": 100, "max_requests_jitter": 10, "body_timeout_s": 60.0,
                                                 "replica_port": True}
    no_grpc = serve_options(load_settings({"grpc_workers": 0}, {}))
    assert no_grpc["user_config"]["serving"]["replica_port"] is True, "gRPC off: the front still sends REST to the ports"
    no_front = serve_options(load_settings({"grpc_workers": 0, "http_front": False}, {}))
    assert no_front["user_config"]["serving"]["replica_port"] is False, "nothing routes to a replica port: none opens"
    assert options["health_check_period_s"] == 2.0, "recycling rides on the health check: check often"
    assert serve_options(load_settings({}, {}))["health_check_period_s"] == 2.0, "a dead replica is noticed by it"


def test_replica_options_change_in_place_not_by_restart():
    """The deployment version (restart trigger) must not depend on settings applied live."""
    assert serve_options(load_settings({"debug": True, "max_requests": 5}, {}))["version"] == \
        serve_options(load_settings({}, {}))["version"]


def test_the_generic_pool_gets_the_same_settings():
    settings = load_settings({"single_threaded": True, "access_log": False}, {})
    options = generic_pool_app_config(pool_config(settings), {}, [], "/cache", "code").deployment_options
    assert options["max_ongoing_requests"] == 1
    assert options["logging_config"]["enable_access_log"] is False
    assert options["user_config"]["serving"]["single_threaded"] is True


# ------------------------------------------------------------------------------ replica behaviour
def test_single_threaded_models_get_one_request_per_call():
    assert ServingOptions(single_threaded=True).batch_limits(64, 0.005) == (1, 0.0)
    assert ServingOptions().batch_limits(64, 0.005) == (64, 0.005)


def test_request_budget_spends_max_requests_plus_a_jitter_within_bounds():
    limits = set()
    for seed in range(40):
        budget = RequestBudget()
        budget._rng = random.Random(seed)
        budget.configure(ServingOptions(max_requests=10, max_requests_jitter=5))
        limits.add(budget.limit)
        for _ in range(budget.limit - 1):
            budget.count()
        budget.check()  # one request left: still healthy
        budget.count()
        with pytest.raises(RuntimeError, match="recycling this replica"):
            budget.check()
    assert limits <= set(range(10, 16)) and len(limits) > 1, "jitter spreads replicas over 10..15"


def test_no_max_requests_means_never_recycled():
    budget = RequestBudget()
    budget.configure(ServingOptions())
    for _ in range(10_000):
        budget.count()
    budget.check()


def test_reconfiguring_other_options_keeps_the_drawn_budget():
    budget = RequestBudget()
    budget.configure(ServingOptions(max_requests=100, max_requests_jitter=1000))
    drawn = budget.limit
    budget.configure(ServingOptions(max_requests=100, max_requests_jitter=1000, debug=True))
    assert budget.limit == drawn


@pytest.fixture(scope="module")
def report_model(tmp_path_factory) -> LoadedModel:
    store = tmp_path_factory.mktemp("store")
    build_examples(store)
    archive = unpack_archive(store / "iris_report-1.zip", tmp_path_factory.mktemp("cache"))
    model = LoadedModel(archive, "iris_report", "1")
    yield model
    model.close()


def answer(model: LoadedModel, action: str, body: bytes, content_type: str):
    async def read() -> bytes:
        return body

    return asyncio.run(model_calls.answer_model_call(model, model_calls.ModelCall(None, action), read, ["1"], {},
                                                     {"content-type": content_type}))


def test_payload_passthrough_hands_the_raw_body_to_predict_raw(report_model):
    report_model.options = ServingOptions(payload_passthrough=True)
    response = answer(report_model, "predict", CSV, "text/csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = bytes(response.body).decode().splitlines()
    assert lines[0] == "class,class_name,confidence"
    assert [line.split(",")[1] for line in lines[1:]] == ["setosa", "virginica"]


def test_bad_raw_payload_is_a_400_naming_the_body(report_model):
    report_model.options = ServingOptions(payload_passthrough=True)
    response = answer(report_model, "predict", b"not,numbers\nat,all,x,y\n", "text/csv")
    assert response.status_code == 400
    assert json.loads(response.body)["field"] == "body"


def test_without_passthrough_the_same_body_is_decoded_and_refused(report_model):
    report_model.options = ServingOptions()
    response = answer(report_model, "predict", CSV, "text/csv")
    assert response.status_code == 400
    assert "JSON" in json.loads(response.body)["error"]


def test_debug_puts_the_traceback_in_a_500(report_model):
    report_model.options = ServingOptions(debug=True)
    broken = b'{"instances": [[1.0, 2.0, 3.0, 4.0]]}'
    original = report_model.handler.predict
    report_model.handler.predict = lambda data: 1 / 0
    try:
        debug_answer = answer(report_model, "predict", broken, "application/json")
        report_model.options = ServingOptions()
        quiet_answer = answer(report_model, "predict", broken, "application/json")
    finally:
        report_model.handler.predict = original
    assert debug_answer.status_code == quiet_answer.status_code == 500
    body = json.loads(debug_answer.body)
    assert "ZeroDivisionError" in body["error"] and any("ZeroDivisionError" in line for line in body["traceback"])
    assert "traceback" not in json.loads(quiet_answer.body)
