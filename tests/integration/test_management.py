"""The management API end to end: MMS model API, ML Server pools, services, auth, OpenAPI."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 3.3, 6.0, 2.5]}]}


def wait_for(predicate, timeout_s=60, step=0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def version_answering(http, url):
    """The model_version that answers now, or None while a route moves (HAProxy may answer 503 HTML)."""
    response = http.post(url, json=ROW)
    return response.json().get("model_version") if response.ok else None


def test_management_needs_the_token_but_health_does_not(cluster, http):
    assert http.get(f"{cluster.url}/models").status_code == 401
    wrong = http.get(f"{cluster.url}/models", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.json()["field"] == "authorization"
    assert cluster.token not in wrong.text
    assert http.get(f"{cluster.url}/ping").json() == {"status": "Healthy"}
    # readiness may flip while an earlier test's model scales; it needs no token either way
    ready = wait_for(lambda: http.get(f"{cluster.url}/v2/health/ready").status_code == 200, timeout_s=90)
    assert ready, http.get(f"{cluster.url}/v2/health/ready").text


def test_openapi_description(cluster, admin):
    for response in (admin.get(f"{cluster.url}/openapi.json"), admin.options(f"{cluster.url}/")):
        assert response.status_code == 200
        paths = response.json()["paths"]
        assert {"/models", "/models/{model_name}", "/pools/{name}/{version}", "/services"} <= set(paths)


def test_register_synchronously_then_infer_describe_and_unregister(cluster, admin, http):
    url = f"{cluster.url}/models"
    registered = admin.post(url, params={"url": "iris-1.zip", "model_name": "lifecycle", "initial_workers": 1,
                                         "batch_size": 16, "max_batch_delay": 2, "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    assert registered.json() == {"status": 'Model "lifecycle" Version: 1 registered with 1 initial workers'}
    answer = http.post(f"{cluster.url}/v2/models/lifecycle/infer", json=ROW)
    assert answer.status_code == 200 and answer.json()["model_name"] == "lifecycle"

    described = admin.get(f"{url}/lifecycle").json()[0]
    assert described["modelName"] == "lifecycle" and described["modelVersion"] == "1"
    assert described["modelUrl"] == "iris-1.zip"
    assert (described["batchSize"], described["maxBatchDelay"]) == (16, 2)
    assert described["minWorkers"] == 1 and described["pool"] == "dedicated"
    assert [w["status"] for w in described["workers"]] == ["READY"]
    assert described["workers"][0]["memoryUsage"] > 0

    assert admin.post(url, params={"url": "iris-1.zip", "model_name": "lifecycle"}).status_code == 409
    removed = admin.delete(f"{url}/lifecycle")
    assert removed.status_code == 200 and removed.json() == {"status": 'Model "lifecycle" unregistered'}
    assert admin.get(f"{url}/lifecycle").status_code == 404
    gone = wait_for(lambda: http.post(f"{cluster.url}/v2/models/lifecycle/infer", json=ROW).status_code == 404)
    assert gone, "unregistered model still answers"


@pytest.mark.parametrize("params, status, field", [
    ({"url": "no-such-archive.zip"}, 404, "url"),
    ({"url": "../etc/passwd"}, 400, "url"),
    ({"url": "file:///etc/passwd"}, 400, "url"),
    ({"url": "https://models.example.com/x.zip"}, 403, "url"),
    ({"url": "iris-1.zip", "initial_workers": -1}, 400, "initial_workers"),
    ({"url": "iris-1.zip", "batch_size": 0}, 400, "batch_size"),
    ({"url": "iris-1.zip", "runtime": "java"}, 400, "runtime"),
    ({"url": "iris-1.zip", "handler": "other:thing"}, 400, "handler"),
    ({"url": "iris-1.zip", "model_name": "../x"}, 400, "model_name"),
    ({"model_name": "x"}, 400, "url"),
])
def test_bad_registrations_are_4xx_naming_the_field(cluster, admin, params, status, field):
    response = admin.post(f"{cluster.url}/models", params=params)
    assert response.status_code == status, response.text
    if field:
        assert response.json()["field"] == field


def test_an_archive_that_fails_to_load_is_refused_and_leaves_nothing(cluster, admin, tmp_path):
    from modelpool.cluster.settings import load_settings
    from modelpool.deployments.examples import archive_command

    settings = load_settings({}, cluster.env)
    broken = tmp_path / "broken.py"
    broken.write_text("import a_module_that_does_not_exist\n\ndef predict(data):\n    return data\n")
    archive = archive_command(name="broken", version="1", handler="broken:predict", files=[broken],
                              out=settings.model_store_path / "broken-1.zip")
    try:
        response = admin.post(f"{cluster.url}/models", params={"url": "broken-1.zip", "synchronous": "true"})
        assert response.status_code == 400, response.text
        assert "a_module_that_does_not_exist" in response.json()["error"]
        assert admin.get(f"{cluster.url}/models/broken").status_code == 404
        names = [m["modelName"] for m in admin.get(f"{cluster.url}/models").json()["models"]]
        assert "broken" not in names
    finally:  # out of the store: test_zzz_server_settings' restart would load it again (and fail) before it deploys
        Path(archive).unlink(missing_ok=True)


def test_scale_synchronously_adds_workers_without_restarting_the_first(cluster, admin, http):
    url = f"{cluster.url}/models"
    assert admin.post(url, params={"url": "iris-1.zip", "model_name": "scaled", "initial_workers": 1,
                                   "synchronous": "true"}).status_code == 200
    try:
        first = {w["id"] for w in admin.get(f"{url}/scaled").json()[0]["workers"]}
        assert admin.put(f"{url}/scaled", params={"min_worker": 3, "max_worker": 2}).status_code == 400
        assert admin.put(f"{url}/scaled", params={"min_worker": -1}).json()["field"] == "min_worker"
        assert admin.put(f"{url}/scaled", params={"number_gpu": 1}).json()["field"] == "number_gpu"
        scaled = admin.put(f"{url}/scaled", params={"min_worker": 2, "max_worker": 2, "synchronous": "true"})
        assert scaled.status_code == 200 and scaled.json() == {"status": "Workers scaled to 2 for model: scaled"}
        described = admin.get(f"{url}/scaled/1").json()[0]
        assert (described["minWorkers"], described["maxWorkers"]) == (2, 2)
        ids = {w["id"] for w in described["workers"] if w["status"] == "READY"}
        assert len(ids) == 2 and first <= ids, "scaling restarted the existing worker"
        accepted = admin.put(f"{url}/scaled", params={"min_worker": 1, "max_worker": 1})
        assert accepted.status_code == 202 and accepted.json() == {"status": "Processing worker updates..."}
        assert wait_for(lambda: len(admin.get(f"{url}/scaled").json()[0]["workers"]) == 1)
    finally:
        admin.delete(f"{url}/scaled")


def test_listing_is_paginated(cluster, admin):
    seen, token, pages = [], None, 0
    while True:
        params = {"limit": 1, **({"next_page_token": token} if token else {})}
        page = admin.get(f"{cluster.url}/models", params=params).json()
        seen += [m["modelName"] for m in page["models"]]
        pages += 1
        token = page["nextPageToken"]
        if not token:
            break
    everything = [m["modelName"] for m in admin.get(f"{cluster.url}/models").json()["models"]]
    assert seen == everything and pages == len(everything) >= 3
    assert admin.get(f"{cluster.url}/models", params={"next_page_token": "%%%"}).status_code == 400
    assert admin.get(f"{cluster.url}/models", params={"limit": 0}).json()["field"] == "limit"


def register_together(cluster, registrations: list[dict]) -> list[requests.Response]:
    """Send independent registrations at once, each on its own connection (each one's load check and replica start
    take seconds; one after the other they add up)."""
    from concurrent.futures import ThreadPoolExecutor

    def register(params: dict) -> requests.Response:
        with requests.Session() as session:
            session.headers.update(cluster.auth)
            return session.post(f"{cluster.url}/models", params=params)

    with ThreadPoolExecutor(len(registrations)) as pool:
        return list(pool.map(register, registrations))


def test_set_default_moves_the_unversioned_route(cluster, admin, http):
    url = f"{cluster.url}/models"
    registered = register_together(cluster, [{"url": archive, "model_name": "flower", "initial_workers": 1,
                                              "synchronous": "true"} for archive in ("iris-1.zip", "iris-2.zip")])
    assert [r.status_code for r in registered] == [200, 200], [r.text for r in registered]
    try:
        first = http.post(f"{cluster.url}/v2/models/flower/infer", json=ROW)  # the very next request: served by 2
        assert first.status_code == 200 and first.json()["model_version"] == "2", (first.status_code, first.text)
        assert admin.put(f"{url}/flower/1/set-default").status_code == 200
        moved = wait_for(lambda: version_answering(http, f"{cluster.url}/v2/models/flower/infer") == "1")
        assert moved, "the unversioned path did not move to version 1"
        assert http.post(f"{cluster.url}/v2/models/flower/versions/2/infer", json=ROW).json()["model_version"] == "2"
        versions = {d["modelVersion"]: d["isDefault"] for d in admin.get(f"{url}/flower/all").json()}
        assert versions == {"1": True, "2": False}
        assert admin.put(f"{url}/flower/9/set-default").status_code == 404
        unregistered = admin.delete(f"{url}/flower")  # the default (1): version 2 takes the unversioned route
        assert unregistered.status_code == 200, unregistered.text
        moved_back = wait_for(lambda: version_answering(http, f"{cluster.url}/v2/models/flower/infer") == "2")
        assert moved_back, "after unregistering the default, the remaining version did not take the unversioned path"
    finally:
        admin.delete(f"{url}/flower/1")
        admin.delete(f"{url}/flower/2")


def test_generic_pool_and_dedicated_pools_switch(cluster, admin, http):
    url = f"{cluster.url}/models"
    assert admin.post(url, params={"url": "diabetes-1.zip", "model_name": "shared", "initial_workers": 0,
                                   "synchronous": "true"}).status_code == 200
    body = {"instances": [[0.01] * 10]}
    infer = f"{cluster.url}/v2/models/shared/predict"
    try:
        pooled = http.post(infer, json=body)
        assert pooled.status_code == 200 and pooled.headers.get("x-modelpool-pool") == "generic"
        assert admin.get(f"{cluster.url}/pools/shared/1").json()[0]["status"] == "NotFound"
        services = {(s["name"], s["version"]): s for s in admin.get(f"{cluster.url}/services").json()}
        assert services[("shared", "1")]["pool"] == "generic"

        created = admin.put(f"{cluster.url}/pools/shared/1", json={"initial_pool_size": 1, "max_pool_size": 2})
        assert created.status_code == 200, created.text
        assert wait_for(lambda: all(n["status"] == "Success" for n in admin.get(f"{cluster.url}/pools/shared/1").json()))
        dedicated = wait_for(lambda: (r := http.post(infer, json=body)).ok and "x-modelpool-pool" not in r.headers)
        assert dedicated, "a service with a dedicated pool was still served by the generic pool"
        services = {(s["name"], s["version"]): s for s in admin.get(f"{cluster.url}/services").json()}
        assert services[("shared", "1")]["pool"] == "dedicated"

        assert admin.put(f"{cluster.url}/pools/shared/1", params={"initial_pool_size": 3, "max_pool_size": 2}).status_code == 400
        assert admin.put(f"{cluster.url}/pools/nosuch/1", params={"initial_pool_size": 1, "max_pool_size": 1}).status_code == 404

        assert admin.delete(f"{cluster.url}/pools/shared/1").status_code == 200
        assert admin.delete(f"{cluster.url}/pools/shared/1").status_code == 200  # repeated: harmless
        statuses = admin.get(f"{cluster.url}/pools/shared/1").json()
        assert statuses and all(n["status"] == "NotFound" for n in statuses)
        back = wait_for(lambda: http.post(infer, json=body).headers.get("x-modelpool-pool") == "generic")
        assert back, "after deleting its pool the service did not return to the generic pool"
    finally:
        admin.delete(f"{url}/shared")


def test_concurrent_registrations_each_get_one_clear_answer(cluster, admin):
    """Same name twice and two other names at once: one 409, the rest registered, registry intact."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["race_a", "race_a", "race_b", "race_c"]

    def register(name):
        with requests.Session() as session:
            session.headers.update(cluster.auth)
            return name, session.post(f"{cluster.url}/models", params={"url": "iris-1.zip", "model_name": name}).status_code

    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(register, names))
    try:
        assert sorted(status for name, status in results if name == "race_a") == [200, 409]  # no workers: 200
        assert all(status == 200 for name, status in results if name != "race_a")
        listed = {m["modelName"] for m in admin.get(f"{cluster.url}/models", params={"limit": 1000}).json()["models"]}
        assert {"race_a", "race_b", "race_c"} <= listed
        for name in ("race_a", "race_b", "race_c"):
            assert admin.get(f"{cluster.url}/models/{name}").json()[0]["modelVersion"] == "1"
    finally:
        for name in ("race_a", "race_b", "race_c"):
            admin.delete(f"{cluster.url}/models/{name}")


def test_killing_the_management_replica_loses_nothing(ray_client, admin, http):
    import ray

    cluster = ray_client
    before = admin.get(f"{cluster.url}/models").json()
    from modelpool.management.serve_state import serve_details

    replica = serve_details()["applications"]["management"]["deployments"]["Management"]["replicas"][0]
    ray.kill(ray.get_actor(replica["actor_name"], namespace="serve"), no_restart=True)

    def answers():
        try:
            return admin.get(f"{cluster.url}/models", timeout=5).json() == before
        except (requests.RequestException, ValueError):
            return False

    assert wait_for(answers, timeout_s=90), "management did not come back with the same models"
    stable = wait_for(lambda: all(answers() for _ in range(10)), timeout_s=60)
    assert stable, "management answered once after the kill, then failed again"
    assert http.post(f"{cluster.url}/v2/models/iris/infer", json=ROW).status_code == 200


def test_a_register_retried_with_its_idempotency_key_gets_the_first_answer_not_a_409(cluster, admin):
    url = f"{cluster.url}/models"
    params = {"url": "iris-1.zip", "model_name": "retried"}
    try:
        first = admin.post(url, params=params, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 200, first.text  # no workers asked for: nothing pending
        again = admin.post(url, params=params, headers={"Idempotency-Key": "k-1"})
        assert (again.status_code, again.json()) == (200, first.json())
        assert admin.post(url, params=params, headers={"Idempotency-Key": "k-2"}).status_code == 409
        assert admin.post(url, params=params).status_code == 409
        bad = admin.post(url, params={**params, "model_name": "other"}, headers={"Idempotency-Key": "a b/../c"})
        assert bad.status_code == 400 and bad.json()["field"] == "idempotency_key"
        assert len(admin.get(f"{url}/retried/all").json()) == 1
    finally:
        admin.delete(f"{url}/retried")
