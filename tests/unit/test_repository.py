"""The model repository extension (Triton's shape): the pure mapping, and the routes around a fake manager."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette's notice about httpx, raised on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from modelpool.deployments.errors import RequestError
from modelpool.management import api as management_api
from modelpool.management.repository import (
    LOADING, READY, REASON_NOT_LOADED, REASON_UNLOADED, UNAVAILABLE, UNLOADING, Serving, archives_to_load, index,
    parse_index_request, parse_load_request, parse_unload_request, serving_state, unload_versions,
)

RUNNING = Serving("RUNNING", "", 1)
STORE = [("iris", "1", Path("/store/iris-1.zip")), ("iris", "2", Path("/store/iris-2.zip")),
         ("iris", "10", Path("/store/iris-10.zip")), ("diabetes", "1", Path("/store/diabetes-1.zip"))]


# ---------------------------------------------------------------------------------- states
@pytest.mark.parametrize("serving, state", [
    (Serving("RUNNING", "", 1), READY),
    (Serving("DEPLOYING", "updating", 1), READY),       # a live update: the running replicas still answer
    (Serving("DEPLOYING", "", 0), LOADING),             # a dedicated app still starting
    (Serving("NOT_STARTED"), LOADING),
    (Serving("NOT_DEPLOYED"), LOADING),                 # registered, deployment on its way
    (Serving("DELETING"), UNLOADING),
    (Serving("DEPLOY_FAILED", "ImportError: no sklearn"), UNAVAILABLE),
    (Serving("UNHEALTHY", "", 1), UNAVAILABLE),
])
def test_serve_statuses_map_to_triton_states(serving, state):
    assert serving_state(serving)[0] == state


def test_a_failed_app_gives_serves_message_as_the_reason():
    assert serving_state(Serving("DEPLOY_FAILED", "ImportError: no sklearn")) == (UNAVAILABLE, "ImportError: no sklearn")
    assert serving_state(Serving("UNHEALTHY")) == (UNAVAILABLE, "Serve reports the application UNHEALTHY")
    assert serving_state(RUNNING) == (READY, "")


# ---------------------------------------------------------------------------------- index
def test_index_has_every_registered_version_and_the_stores_others_sorted_naturally():
    registered = [("iris", "2", RUNNING), ("iris", "1", Serving("DEPLOYING")), ("flower", "1", RUNNING)]
    entries = index(registered, STORE, unloaded={("diabetes", "1")})
    assert entries == [
        {"name": "diabetes", "version": "1", "state": UNAVAILABLE, "reason": REASON_UNLOADED},
        {"name": "flower", "version": "1", "state": READY, "reason": ""},
        {"name": "iris", "version": "1", "state": LOADING, "reason": "replicas are starting"},
        {"name": "iris", "version": "2", "state": READY, "reason": ""},
        {"name": "iris", "version": "10", "state": UNAVAILABLE, "reason": REASON_NOT_LOADED},
    ]


def test_ready_only_keeps_what_can_infer_now():
    registered = [("iris", "1", RUNNING), ("iris", "2", Serving("DEPLOY_FAILED", "boom"))]
    assert [(e["name"], e["version"]) for e in index(registered, STORE, set(), ready_only=True)] == [("iris", "1")]


def test_a_registered_version_is_listed_once_even_with_its_archive_in_the_store():
    entries = index([("iris", "1", RUNNING)], STORE[:1] * 2, set())
    assert entries == [{"name": "iris", "version": "1", "state": READY, "reason": ""}]


# ---------------------------------------------------------------------------------- load / unload
def test_load_takes_the_store_versions_not_registered_yet_in_natural_order():
    assert archives_to_load("iris", STORE, set()) == [Path("/store/iris-1.zip"), Path("/store/iris-2.zip"),
                                                      Path("/store/iris-10.zip")]
    assert archives_to_load("iris", STORE, {"1", "10"}) == [Path("/store/iris-2.zip")]


def test_loading_a_registered_model_with_nothing_new_changes_nothing():
    assert archives_to_load("iris", STORE, {"1", "2", "10"}) == []
    assert archives_to_load("flower", STORE, {"1"}) == []  # registered from a URL: nothing in the store, still fine


def test_two_archives_of_one_version_load_the_first():
    store = [("iris", "1", Path("/store/a.zip")), ("iris", "1", Path("/store/b.zip"))]
    assert archives_to_load("iris", store, set()) == [Path("/store/a.zip")]


def test_a_name_neither_registered_nor_in_the_store_is_a_404_naming_model_name_and_the_fix():
    with pytest.raises(RequestError) as caught:
        archives_to_load("nosuch", STORE, set())
    assert (caught.value.status, caught.value.field) == (404, "model_name")
    assert "--model-store" in caught.value.message and "POST /models" in caught.value.message


def test_unload_takes_every_version_and_an_unknown_model_is_a_404():
    assert unload_versions("iris", ["1", "2"]) == ["1", "2"]
    with pytest.raises(RequestError) as caught:
        unload_versions("nosuch", [])
    assert (caught.value.status, caught.value.field) == (404, "model_name")


# ---------------------------------------------------------------------------------- bodies
def test_index_body_is_optional_and_ready_must_be_a_boolean():
    assert parse_index_request(b"") is False
    assert parse_index_request(b"{}") is False
    assert parse_index_request(b'{"ready": true, "repository_name": ""}') is True
    with pytest.raises(RequestError) as caught:
        parse_index_request(b'{"ready": "yes"}')
    assert caught.value.field == "ready"


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"), (b"[1]", "body"), (b'"x"', "body"), (b"[" * 100_000, "body"),
    (b'{"parameters": [1]}', "parameters"),
])
def test_malformed_bodies_are_400s_naming_the_field(body, field):
    for parse in (parse_index_request, parse_load_request, parse_unload_request):
        if field == "parameters" and parse is parse_index_request:
            continue
        with pytest.raises(RequestError) as caught:
            parse(body)
        assert (caught.value.status, caught.value.field) == (400, field)


def test_load_ignores_unknown_parameters_and_refuses_the_ones_it_cannot_honour():
    assert parse_load_request(b"{}") == {}
    assert parse_load_request(b'{"parameters": {"priority": 3}, "other": 1}') == {"priority": 3}
    for key in ("config", "file:1/model.onnx"):
        with pytest.raises(RequestError) as caught:
            parse_load_request(f'{{"parameters": {{"{key}": "x"}}}}'.encode())
        assert caught.value.field == f"parameters.{key}"


def test_unload_dependents_is_accepted_when_it_is_a_boolean():
    assert parse_unload_request(b"") is None
    assert parse_unload_request(b'{"parameters": {"unload_dependents": false}}') is False
    with pytest.raises(RequestError) as caught:
        parse_unload_request(b'{"parameters": {"unload_dependents": "yes"}}')
    assert caught.value.field == "parameters.unload_dependents"


# ---------------------------------------------------------------------------------- routes
TOKEN = "repository-token-for-tests-0123456789"


class FakeManager:
    """Records what the routes ask the core for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def repository_index(self, ready_only: bool) -> list[dict]:
        self.calls.append(("index", ready_only))
        return [{"name": "iris", "version": "1", "state": READY, "reason": ""}]

    def load(self, name: str) -> None:
        self.calls.append(("load", name))
        if name == "nosuch":
            archives_to_load(name, [], set())

    def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        unload_versions(name, ["1"] if name == "iris" else [])


@pytest.fixture
def client(monkeypatch) -> tuple[TestClient, FakeManager]:
    manager = FakeManager()
    for name, value in {"manager": manager, "token": TOKEN, "debug": False, "max_body_bytes": 4096,
                        "body_timeout_s": 60.0}.items():
        monkeypatch.setattr(management_api.state, name, value, raising=False)
    with TestClient(management_api.api, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client, manager


def test_routes_answer_in_tritons_shape(client):
    test_client, manager = client
    assert test_client.post("/v2/repository/index", content=b"").json()[0]["state"] == READY
    assert test_client.post("/v2/repository/index", json={"ready": True}).status_code == 200
    for action in ("load", "unload"):
        answer = test_client.post(f"/v2/repository/models/iris/{action}", content=b"{}")
        assert (answer.status_code, answer.content) == (200, b"")  # Triton's answer: 200, empty body
    assert manager.calls == [("index", False), ("index", True), ("load", "iris"), ("unload", "iris")]


@pytest.mark.parametrize("path", ["/v2/repository/index", "/v2/repository/models/iris/load",
                                  "/v2/repository/models/iris/unload"])
def test_routes_need_the_management_token(client, path):
    test_client, manager = client
    answer = test_client.post(path, headers={"Authorization": ""})
    assert answer.status_code == 401 and answer.json()["field"] == "authorization"
    assert manager.calls == []


def test_route_errors_are_json_naming_the_field(client):
    test_client, manager = client
    for action in ("load", "unload"):
        answer = test_client.post(f"/v2/repository/models/nosuch/{action}")
        assert answer.status_code == 404 and answer.json()["field"] == "model_name"
    malformed = test_client.post("/v2/repository/models/iris/load", content=b"{oops")
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"
    assert ("load", "iris") not in manager.calls  # refused before the core is asked
