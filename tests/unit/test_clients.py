"""Both Python clients (sync and asyncio), one test body each, against the real management application.

The app runs in process over real HTTP (management_app.py: the real ModelManager on a local object
store, Serve kept in memory with real replica objects), so the tests hold the clients to the server's
own routes, answers and errors, and still see what goes over the wire: the ingress in front records
paths, query strings, JSON bodies, headers, and which TCP connection carried each request. Each
test runs once per client (``flavour``: see both_clients.py). Batch jobs (scored by Ray tasks) are
tested in test_client_batches.py.
"""
from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
import pytest

from modelpool.client import resolve_token
from modelpool.errors import BadRequest, Conflict, ModelpoolError, NotFound, Overloaded, Unauthorized, retry_after
from tests.unit.both_clients import Flavour, flavour_fixture  # noqa: F401 (a fixture)
from tests.unit.management_app import (TOKEN, Proxy, RunningManagement, management_fixture,  # noqa: F401
                                       model_store)  # (fixtures)
from tests.unit.both_clients import iris_frame, no_token_env_fixture  # noqa: F401 (a fixture)

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]  # a setosa and a virginica


@pytest.fixture()
def ingress(management: RunningManagement) -> Proxy:
    return management.ingress


@pytest.fixture()
def client(management: RunningManagement, flavour: Flavour) -> Any:
    return flavour.connect(management.url, token=TOKEN, timeout=30)


@pytest.fixture()
def iris(management: RunningManagement) -> None:
    """iris version 1, served by the generic pool."""
    management.manager.register(_register_params("iris-1.zip"))


def _register_params(url: str) -> Any:
    from modelpool.management.params import RegisterParams

    return RegisterParams(url=url)


def last(ingress: Proxy) -> tuple[str, str, dict, Any]:
    """Method, path, query and JSON body of the latest request the cluster saw."""
    seen = ingress.seen[-1]
    return seen.method, seen.path, seen.query, seen.body


def without_memory(described: list[dict]) -> list[dict]:
    """A description without its workers' memory use, which is read live."""
    return [{**d, "workers": [{**w, "memoryUsage": None} for w in d["workers"]]} for d in described]


def closed_port() -> int:
    """A port nobody listens on once the probe is closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------ models
def test_model_calls_send_mms_parameters_and_return_the_json(ingress, client):
    assert client.register_model("iris-1.zip", model_name="y", initial_workers=1, batch_size=8, max_batch_delay=2.5,
                                 synchronous=True) == {"status": 'Model "y" Version: 1 registered with 1 initial workers'}
    assert last(ingress) == ("POST", "/models", {"url": "iris-1.zip", "model_name": "y", "initial_workers": "1",
                                                 "batch_size": "8", "max_batch_delay": "2.5", "synchronous": "true"},
                             None)

    described = client.describe_model("y")
    assert [(d["modelName"], d["modelVersion"], d["batchSize"], d["maxBatchDelay"]) for d in described] == [
        ("y", "1", 8, 2.5)]
    assert without_memory(client.describe_model("y", "1")) == without_memory(described)
    assert last(ingress)[:2] == ("GET", "/models/y/1")

    assert client.scale_model("y", "1", min_worker=1, max_worker=3, synchronous=True) == {
        "status": "Workers scaled to 1 for model: y, version: 1"}
    assert last(ingress)[:3] == ("PUT", "/models/y/1", {"min_worker": "1", "max_worker": "3", "synchronous": "true"})
    assert client.scale_model("y", batch_size=16, max_batch_delay=2) == {"status": "Processing worker updates..."}
    assert last(ingress)[1:3] == ("/models/y", {"synchronous": "false", "batch_size": "16", "max_batch_delay": "2"})
    assert client.describe_model("y")[0]["batchSize"] == 16

    assert client.set_default("y", "1") == {"status": 'Default version successfully updated for model "y" to "1"'}
    assert last(ingress)[:2] == ("PUT", "/models/y/1/set-default")
    assert client.unregister_model("y", "1") == {"status": 'Model "y" unregistered'}
    assert last(ingress)[:2] == ("DELETE", "/models/y/1")
    with pytest.raises(NotFound):
        client.describe_model("y")


def test_names_are_one_path_segment(ingress, client):
    with pytest.raises(NotFound):
        client.describe_model("a/b", "1")
    assert last(ingress)[1] == "/models/a%2Fb/1"  # not /models/a/b/1: another route


def test_list_models_follows_next_page_token_over_three_pages(management, ingress, client):
    for name in ("a", "b", "c", "d", "x"):
        client.register_model("iris-1.zip", model_name=name)
    models = client.list_models(limit=2)
    assert [m["modelName"] for m in models] == ["a", "b", "c", "d", "x"]
    assert models[0] == {"modelName": "a", "modelUrl": "iris-1.zip"}
    pages = ingress.requests_to("/models", "GET")
    assert [p.query for p in pages] == [{"limit": "2"}, {"limit": "2", "next_page_token": "2"},
                                        {"limit": "2", "next_page_token": "4"}]
    assert len({p.port for p in pages}) == 1, "the pages of one listing ride one connection, even outside with"


def test_services_pools_and_ping(iris, ingress, client):
    assert client.ping() is True
    assert client.list_services() == [{"name": "iris", "version": "1", "pool": "generic", "state": "RUNNING",
                                       "isDefault": True}]
    assert client.create_or_update_service_pool("iris", "1", 2, 4) == {
        "status": 'Pool for "iris" version "1" set to 2..4 replicas'}
    assert last(ingress) == ("PUT", "/pools/iris/1", {}, {"initial_pool_size": 2, "max_pool_size": 4})
    assert client.get_service_pool_status("iris", "1") == [{"computeNodeEndpoint": "127.0.0.1", "status": "Success",
                                                            "errors": []}]
    assert last(ingress)[:2] == ("GET", "/pools/iris/1")
    assert client.list_services()[0]["pool"] == "dedicated"
    assert client.delete_service_pool("iris", "1")["status"].endswith("served by the generic pool")
    assert client.delete_service_pool("iris", "1")["status"].endswith("served by the generic pool")  # harmless again
    assert client.get_service_pool_status("iris", "1")[0]["status"] == "NotFound"
    assert [(s.method, s.path) for s in ingress.seen[-3:]] == [("DELETE", "/pools/iris/1"),
                                                               ("DELETE", "/pools/iris/1"), ("GET", "/pools/iris/1")]


def test_ping_is_false_when_nothing_answers(flavour):
    assert flavour.connect(f"http://127.0.0.1:{closed_port()}", token=TOKEN, timeout=2).ping() is False


# ------------------------------------------------------------------------------------------ errors
def test_errors_are_typed_and_carry_the_server_message_and_field(management, iris, client, flavour):
    with pytest.raises(Conflict) as conflict:
        client.register_model("iris-1.zip")
    assert (conflict.value.status, conflict.value.field) == (409, "model_name")
    assert conflict.value.message == ("model 'iris' version '1' is already registered; unregister it first "
                                      "or register a new version")

    with pytest.raises(NotFound) as missing:
        client.describe_model("nope")
    assert (missing.value.status, missing.value.field, missing.value.message) == (
        404, "model_name", "model 'nope' is not registered")
    with pytest.raises(NotFound) as version:
        client.get_service("iris", "9")
    assert (version.value.field, version.value.message) == ("model_version", "model 'iris' has no version '9'; versions: 1")

    with pytest.raises(BadRequest) as bad:
        client.create_or_update_service_pool("iris", "1", initial_pool_size=4, max_pool_size=2)
    assert (bad.value.status, bad.value.field) == (400, "initial_pool_size")
    assert "must not exceed max_pool_size" in bad.value.message and "initial_pool_size" in str(bad.value)

    with pytest.raises(Unauthorized) as denied:
        flavour.connect(management.url, token="wrong").list_services()
    assert (denied.value.status, denied.value.field) == (401, "authorization")
    assert "management token" in denied.value.message

    for error in (conflict.value, missing.value, bad.value, denied.value):
        assert isinstance(error, ModelpoolError)


# ------------------------------------------------------------------------------------------ token
def test_token_from_env_beats_the_token_file(management, ingress, flavour, no_token_env, tmp_path):
    no_token_env.setenv("MODELPOOL_MANAGEMENT_TOKEN", TOKEN)
    (tmp_path / "home" / ".modelpool").mkdir(parents=True)
    (tmp_path / "home" / ".modelpool" / "management_token").write_text("from-file\n")
    client = flavour.connect(management.url)
    assert client.token == TOKEN
    assert client.list_services() == []
    assert ingress.seen[-1].authorization == f"Bearer {TOKEN}"
    assert flavour.connect(management.url, token="explicit").token == "explicit"


def test_token_from_the_home_token_file(management, ingress, flavour, no_token_env, tmp_path):
    (tmp_path / "home" / ".modelpool").mkdir(parents=True)
    (tmp_path / "home" / ".modelpool" / "management_token").write_text(TOKEN + "\n")
    assert flavour.connect(management.url).list_services() == []
    assert ingress.seen[-1].authorization == f"Bearer {TOKEN}"


def test_token_from_modelpool_home(management, ingress, flavour, no_token_env, tmp_path):
    home = tmp_path / "mp-home"
    home.mkdir()
    (home / "management_token").write_text(TOKEN)
    no_token_env.setenv("MODELPOOL_HOME", str(home))
    assert flavour.connect(management.url).list_services() == []
    assert ingress.seen[-1].authorization == f"Bearer {TOKEN}"


def test_no_token_anywhere_is_unauthorized(management, ingress, flavour, no_token_env):
    assert resolve_token() is None
    with pytest.raises(Unauthorized):
        flavour.connect(management.url).list_services()
    assert ingress.seen[-1].authorization is None


# ------------------------------------------------------------------------------------------ services
def test_get_service_resolves_the_default_version(iris, ingress, client, flavour):
    svc = client.get_service("iris")
    assert isinstance(svc, flavour.Service) and (svc.name, svc.version) == ("iris", "1")
    assert last(ingress)[:2] == ("GET", "/models/iris")
    assert repr(svc) == {"sync": "Service('iris', '1')", "async": "AsyncService(name='iris', version='1')"}[flavour.name]


def test_register_then_predict_and_unregister_then_not_found(ingress, client):
    client.register_model("iris-1.zip")
    svc = client.get_service("iris", "1")
    assert svc.predict(IRIS) == [0, 2]
    assert last(ingress) == ("POST", "/v2/models/iris/versions/1/predict", {}, {"instances": IRIS})
    for rows in (iris_frame(2), np.array(IRIS)):  # arrays and DataFrames get an array back
        answer = svc.predict(rows)
        assert isinstance(answer, np.ndarray) and answer.tolist() == [0, 2]
        assert last(ingress)[3] == {"instances": IRIS}
    client.unregister_model("iris", "1")
    with pytest.raises(NotFound):
        svc.predict(IRIS)


def test_infer_builds_a_v2_request_and_reshapes_outputs(iris, ingress, client):
    svc = client.get_service("iris", "1")
    answer = svc.infer(iris_frame(3), outputs=["predict", "predict_proba"])
    assert last(ingress)[:2] == ("POST", "/v2/models/iris/versions/1/infer")
    assert last(ingress)[3] == {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                                            "data": iris_frame(3).to_numpy().ravel().tolist()}],
                                "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
    assert list(answer) == ["predict", "predict_proba"]
    assert answer["predict"].dtype == np.int64 and answer["predict"].tolist() == [0, 2, 2]
    assert answer["predict_proba"].shape == (3, 3) and answer["predict_proba"].dtype == np.float64
    only = svc.infer([5.1, 3.5, 1.4, 0.2], outputs=["predict_proba"])
    sent = last(ingress)[3]
    assert sent["inputs"][0]["shape"] == [1, 4] and sent["outputs"] == [{"name": "predict_proba"}]
    assert list(only) == ["predict_proba"] and only["predict_proba"].shape == (1, 3)
    assert np.allclose(only["predict_proba"].sum(axis=1), 1.0)
    assert list(svc.infer(IRIS)) == ["predict"]  # no outputs asked for: the model's default


# ------------------------------------------------------------------------------------------ retries
def test_a_register_lost_at_the_ingress_is_retried_with_the_same_idempotency_key(management, ingress, flavour):
    ingress.ingress_failures = 2  # the management replica is down: HAProxy answers for it
    with flavour.connect(management.url, token=TOKEN) as client:
        assert client.register_model("iris-1.zip")["status"].startswith('Model "iris" Version: 1 registered')
    tries = ingress.requests_to("/models", "POST")
    assert len(tries) == 3
    assert tries[0].idempotency_key and {t.idempotency_key for t in tries} == {tries[0].idempotency_key}


def test_a_register_whose_answer_was_lost_is_answered_again_not_refused(management, ingress, flavour):
    """The server saw the first try (its answer lost on the way back): the retry carries the same key."""
    with flavour.connect(management.url, token=TOKEN) as client:
        first = client.register_model("iris-1.zip", idempotency_key="k-1")
        assert client.register_model("iris-1.zip", idempotency_key="k-1") == first
        with pytest.raises(Conflict):
            client.register_model("iris-1.zip", idempotency_key="k-2")


def test_reads_and_scale_are_retried_but_modelpools_own_errors_are_not(iris, ingress, management, flavour):
    ingress.ingress_failures = 1
    with flavour.connect(management.url, token=TOKEN) as client:
        assert client.describe_model("iris")[0]["modelName"] == "iris"
        ingress.ingress_failures = 1
        client.scale_model("iris", "1", min_worker=1, max_worker=2)
        with pytest.raises(NotFound):
            client.describe_model("nope")
    assert len(ingress.requests_to("/models/iris/1", "PUT")) == 2
    assert len(ingress.requests_to("/models/nope")) == 1, "a JSON error from modelpool is an answer, not a blip"


def test_retries_stop_after_retry_for_and_the_ingress_error_surfaces(iris, ingress, management, flavour):
    ingress.ingress_failures = 1000
    with flavour.connect(management.url, token=TOKEN, retry_for=0.6) as client:
        with pytest.raises(ModelpoolError) as raised:
            client.describe_model("iris")
    assert raised.value.status == 500 and 2 <= len(ingress.requests_to("/models/iris")) <= 4


def test_calls_that_are_not_safe_to_repeat_are_not_retried(iris, ingress, management, flavour):
    ingress.ingress_failures = 1
    with flavour.connect(management.url, token=TOKEN) as client:
        with pytest.raises(ModelpoolError):
            client.unregister_model("iris", "1")
        assert client.describe_model("iris")[0]["modelVersion"] == "1"  # still registered
    assert len(ingress.requests_to("/models/iris/1", "DELETE")) == 1


def test_a_full_queue_is_waited_out_as_retry_after_asks_with_jitter(iris, ingress, management, flavour):
    """429 + Retry-After: scoring (safe to repeat) comes back after at least the asked second, each client a
    little later than the next, and succeeds; a call not safe to repeat raises Overloaded at once."""
    with flavour.connect(management.url, token=TOKEN) as client:
        svc = client.get_service("iris", "1")
        ingress.overloaded = 2
        started = time.monotonic()
        assert svc.predict(IRIS) == [0, 2]
        waited = time.monotonic() - started
        assert 2.0 <= waited <= 3.5, "two refusals: at least 1 s each, plus at most half again of jitter"
        assert len(ingress.requests_to("/v2/models/iris/versions/1/predict", "POST")) == 3
        ingress.overloaded = 1
        with pytest.raises(Overloaded) as raised:
            client.unregister_model("iris", "1")
        assert raised.value.status == 429 and raised.value.field == "max_queued_requests"


def test_an_overload_that_outlasts_retry_for_surfaces_as_overloaded(iris, ingress, management, flavour):
    ingress.overloaded, ingress.retry_after = 1000, "30"
    started = time.monotonic()
    with flavour.connect(management.url, token=TOKEN, retry_for=1.5) as client:
        with pytest.raises(Overloaded):
            client.get_service("iris", "1").infer(IRIS)
    assert time.monotonic() - started < 4, "a Retry-After beyond retry_for does not hold the caller past it"


def test_retry_after_reads_seconds_and_http_dates():
    from email.utils import formatdate

    assert retry_after(429, "2") == 2.0 and retry_after(503, " 5 ") == 5.0
    assert retry_after(500, "2") is None and retry_after(429, None) is None and retry_after(429, "soon") is None
    assert 8 <= retry_after(429, formatdate(time.time() + 10, usegmt=True)) <= 10


def test_a_refused_connection_is_not_retried(flavour):
    """Nothing listening (wrong URL, stopped cluster) fails at once; only a dropped connection is retried."""
    started = time.monotonic()
    with pytest.raises(flavour.connect_error):
        flavour.connect(f"http://127.0.0.1:{closed_port()}", token=TOKEN).describe_model("x")
    assert time.monotonic() - started < 2
