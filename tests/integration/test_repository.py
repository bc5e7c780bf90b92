"""The model repository extension end to end, driven by tritonclient.http with its default settings.

The load/unload round trip uses a model of its own (``repo_iris``: the iris example archives renamed,
two versions), put in the model store here and removed at the end, so the example models the other
integration tests rely on are never unloaded.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from modelpool.management.repository import READY, REASON_NOT_LOADED, REASON_UNLOADED, UNAVAILABLE
from tests.integration.test_management import ROW, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = {("iris", "1"), ("iris", "2"), ("diabetes", "1"), ("iris_report", "1")}
NOT_REGISTERED = {REASON_NOT_LOADED, REASON_UNLOADED}


@pytest.fixture()
def client(cluster) -> triton_http.InferenceServerClient:
    """tritonclient.http as a user makes it: the URL, nothing else."""
    made = triton_http.InferenceServerClient(cluster.url.removeprefix("http://"))
    yield made
    made.close()


@pytest.fixture()
def store(cluster) -> Path:
    from modelpool.cluster.settings import load_settings

    return load_settings({}, cluster.env).model_store_path


def copy_as(store: Path, source: str, name: str) -> Path:
    """An example archive under another model name (the manifest names the model, not the file)."""
    with zipfile.ZipFile(store / source) as archive:
        entries = {entry: archive.read(entry) for entry in archive.namelist()}
    manifest = json.loads(entries["MANIFEST.json"])
    manifest["name"] = name
    entries["MANIFEST.json"] = json.dumps(manifest).encode()
    out = store / f"{name}-{manifest['version']}.zip"
    with zipfile.ZipFile(out, "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    return out


def registered_names(cluster, admin) -> set[str]:
    return {m["modelName"] for m in admin.get(f"{cluster.url}/models", params={"limit": 1000}).json()["models"]}


def entries_of(index: list[dict], name: str) -> dict[str, tuple[str, str]]:
    return {e["version"]: (e["state"], e["reason"]) for e in index if e["name"] == name}


def test_the_index_lists_the_examples_and_agrees_with_get_models(cluster, admin, client):
    ready = wait_for(lambda: EXAMPLES <= {(e["name"], e["version"]) for e in client.get_model_repository_index(
        headers=cluster.auth) if e["state"] == READY}, timeout_s=120)
    assert ready, client.get_model_repository_index(headers=cluster.auth)
    index = client.get_model_repository_index(headers=cluster.auth)
    assert all(set(e) == {"name", "version", "state", "reason"} for e in index)
    assert index == sorted(index, key=lambda e: e["name"])
    registered = {(e["name"], e["version"]) for e in index if e["reason"] not in NOT_REGISTERED}
    assert {name for name, _ in registered} == registered_names(cluster, admin)
    for name in {name for name, _ in registered}:
        versions = {d["modelVersion"] for d in admin.get(f"{cluster.url}/models/{name}/all").json()}
        assert versions == {v for n, v in registered if n == name}, name
    only_ready = admin.post(f"{cluster.url}/v2/repository/index", json={"ready": True}).json()
    assert only_ready and all(e["state"] == READY for e in only_ready)
    assert EXAMPLES <= {(e["name"], e["version"]) for e in only_ready}


def test_the_repository_routes_land_on_management_behind_its_token(cluster, http, client):
    """No model app claims /v2/repository, so management answers, and asks for its token (Triton would not)."""
    for path in ("/v2/repository/index", "/v2/repository/models/iris/load", "/v2/repository/models/iris/unload"):
        answer = http.post(f"{cluster.url}{path}")
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["field"] == "authorization" and "management token" in answer.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_repository_index()
    assert caught.value.status() == "401" and "management token" in caught.value.message()
    with pytest.raises(InferenceServerException):
        client.unload_model("iris")
    assert http.post(f"{cluster.url}/v2/models/iris/infer", json=ROW).status_code == 200  # still there


def test_load_and_unload_round_trip_through_the_registry(cluster, admin, http, client, store):
    name = "repo_iris"
    archives = [copy_as(store, "iris-1.zip", name), copy_as(store, "iris-2.zip", name)]
    infer = f"{cluster.url}/v2/models/{name}/infer"
    try:
        before = entries_of(client.get_model_repository_index(headers=cluster.auth), name)
        assert before == {"1": (UNAVAILABLE, REASON_NOT_LOADED), "2": (UNAVAILABLE, REASON_NOT_LOADED)}
        assert name not in registered_names(cluster, admin)

        client.load_model(name, headers=cluster.auth)  # synchronous: it serves when this returns
        assert entries_of(client.get_model_repository_index(headers=cluster.auth), name) == {
            "1": (READY, ""), "2": (READY, "")}
        assert name in registered_names(cluster, admin)
        answer = http.post(infer, json=ROW)
        assert answer.status_code == 200 and answer.json()["model_version"] == "2", answer.text
        assert http.post(f"{cluster.url}/v2/models/{name}/versions/1/infer", json=ROW).status_code == 200

        workers = [w["id"] for d in admin.get(f"{cluster.url}/models/{name}/all").json() for w in d["workers"]]
        client.load_model(name, headers=cluster.auth)  # already loaded: 200, nothing changes
        assert [w["id"] for d in admin.get(f"{cluster.url}/models/{name}/all").json() for w in d["workers"]] == workers

        client.unload_model(name, headers=cluster.auth)  # every version
        assert name not in registered_names(cluster, admin)
        assert admin.get(f"{cluster.url}/models/{name}").status_code == 404
        assert entries_of(client.get_model_repository_index(headers=cluster.auth), name) == {
            "1": (UNAVAILABLE, REASON_UNLOADED), "2": (UNAVAILABLE, REASON_UNLOADED)}
        assert wait_for(lambda: http.post(infer, json=ROW).status_code == 404), "an unloaded model still answers"

        client.load_model(name, headers=cluster.auth)  # back from the store
        answer = http.post(infer, json=ROW)
        assert answer.status_code == 200 and answer.json()["model_name"] == name, answer.text
    finally:
        admin.post(f"{cluster.url}/v2/repository/models/{name}/unload")
        for archive in archives:
            archive.unlink(missing_ok=True)
    assert name not in {e["name"] for e in client.get_model_repository_index(headers=cluster.auth)}


def test_loading_an_already_registered_example_is_a_harmless_200(cluster, admin, client):
    before = admin.get(f"{cluster.url}/models/iris/all").json()
    client.load_model("iris", headers=cluster.auth)
    after = admin.get(f"{cluster.url}/models/iris/all").json()
    assert [(d["modelVersion"], [w["id"] for w in d["workers"]]) for d in after] == \
           [(d["modelVersion"], [w["id"] for w in d["workers"]]) for d in before]


def test_unknown_names_and_bad_bodies_are_clear_json_errors(cluster, admin, client):
    for action in ("load", "unload"):
        answer = admin.post(f"{cluster.url}/v2/repository/models/no_such_model/{action}")
        assert answer.status_code == 404 and answer.json()["field"] == "model_name", answer.text
        assert "no_such_model" in answer.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("no_such_model", headers=cluster.auth)
    assert caught.value.status() == "404" and "--model-store" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.unload_model("no_such_model", headers=cluster.auth)
    assert caught.value.status() == "404"
    malformed = admin.post(f"{cluster.url}/v2/repository/models/iris/load", data=b"{not json",
                           headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"
    refused = admin.post(f"{cluster.url}/v2/repository/models/iris/load", json={"parameters": {"config": "{}"}})
    assert refused.status_code == 400 and refused.json()["field"] == "parameters.config"
    bad_name = admin.post(f"{cluster.url}/v2/repository/models/..bad/load")
    assert bad_name.status_code == 400 and bad_name.json()["field"] == "model_name"
    assert admin.post(f"{cluster.url}/v2/repository/index", json={"ready": "yes"}).json()["field"] == "ready"


def test_an_archive_that_fails_to_load_is_a_400_and_stays_unregistered(cluster, admin, client, store, tmp_path):
    from modelpool.deployments.examples import archive_command

    broken = tmp_path / "repo_broken.py"
    broken.write_text("import a_module_that_does_not_exist\n\ndef predict(data):\n    return data\n")
    archive = archive_command(name="repo_broken", version="1", handler="repo_broken:predict", files=[broken],
                              out=store / "repo_broken-1.zip")
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("repo_broken", headers=cluster.auth)
        assert caught.value.status() == "400" and "a_module_that_does_not_exist" in caught.value.message()
        assert "repo_broken" not in registered_names(cluster, admin)
        assert entries_of(client.get_model_repository_index(headers=cluster.auth), "repo_broken") == {
            "1": (UNAVAILABLE, REASON_NOT_LOADED)}
    finally:
        Path(archive).unlink(missing_ok=True)
