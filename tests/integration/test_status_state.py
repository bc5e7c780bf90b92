"""The status page's data and access on a real cluster: ``GET /ui/state`` shows a model's traffic over the last
minute, its replica on its node and a model's error, from the replicas' own counters (the status board); the login
form sets a session cookie that alone opens the page and its data; the page's actions need the CSRF header."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.integration.test_management import wait_for

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 3.3, 6.0, 2.5]}]}
CSRF_HEADER = "x-modelpool-csrf"




def version_of(state: dict, name: str, version: str = None) -> dict:
    model = next(m for m in state["models"] if m["name"] == name)
    wanted = version or model["defaultVersion"]
    return next(v for v in model["versions"] if v["version"] == wanted)


def test_the_state_shows_traffic_replicas_on_their_nodes_and_a_models_error(cluster, admin, http, fragile_model):
    for _ in range(30):
        answered = http.post(f"{cluster.url}/v2/models/iris/infer", json=ROW)
        assert answered.status_code == 200, answered.text
    request_id = f"status-{uuid.uuid4().hex}"
    failed = http.post(f"{cluster.url}/v2/models/{fragile_model}/infer", headers={"x-request-id": request_id},
                       json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, -1.0]}]})
    assert failed.status_code == 500

    def shown():
        answer = admin.get(f"{cluster.url}/ui/state")
        assert answer.status_code == 200, answer.text
        state = answer.json()
        iris = version_of(state, "iris")
        errors = [e for e in state["errors"] if e["requestId"] == request_id]
        if iris["stats"]["requestsPerSecond"] > 0 and iris["stats"]["p99Ms"] and errors:
            return state, iris, errors[0]
        return None

    found = wait_for(shown, timeout_s=60)
    assert found, f"iris's traffic or the error never showed: {admin.get(f'{cluster.url}/ui/state').text[:3000]}"
    state, iris, error = found
    stats = iris["stats"]
    assert stats["requests"] >= 30 and 0 < stats["windowS"] <= 60
    assert 0 < stats["p50Ms"] <= stats["p99Ms"] < 10_000
    assert iris["isDefault"] and iris["pool"] == "dedicated" and iris["status"] == "RUNNING"
    running = [r for r in iris["replicas"] if r["state"] == "RUNNING"]
    assert running and all(r["nodeId"] and r["nodeIp"] for r in running)
    nodes = {n["nodeId"]: n for n in state["nodes"]}
    assert all(nodes[r["nodeId"]]["alive"] and nodes[r["nodeId"]]["replicas"] >= 1 for r in running)
    assert any(r["lastReport"] for r in running), "the replica that answered reported to the board"
    assert (error["model"], error["version"], error["status"]) == (fragile_model, "1", 500)
    assert "negative readings" in error["message"] and error["replicaId"] == failed.headers["x-modelpool-replica"]
    assert version_of(state, fragile_model)["stats"]["errorsPerSecond"] > 0
    assert state["statsAvailable"] is True and state["unavailable"] == []
    assert cluster.token not in str(state)


def test_the_state_answers_quickly_while_the_page_polls(cluster, admin):
    """The page polls every 1.5 s, perhaps from several tabs: one build a second is shared, and a build (a controller
    round trip, Ray's node list, the board, the registry, the batch jobs) stays well under the poll interval."""
    assert admin.get(f"{cluster.url}/ui/state").status_code == 200
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        assert admin.get(f"{cluster.url}/ui/state").status_code == 200
        timings.append((time.perf_counter() - started) * 1000)
        time.sleep(0.25)
    timings.sort()
    print(f"GET /ui/state: median {timings[10]:.1f} ms, slowest {timings[-1]:.1f} ms (20 calls, 4/s)")
    assert timings[10] < 250 and timings[-1] < 1500, timings


def test_the_login_form_sets_a_cookie_that_alone_opens_the_page_and_its_data(cluster, http):
    form = http.get(f"{cluster.url}/ui")
    assert form.status_code == 401 and 'action="/ui/login"' in form.text
    refused = http.post(f"{cluster.url}/ui/login", data={"token": "not-the-token"}, allow_redirects=False)
    assert refused.status_code == 401 and "That is not the management token." in refused.text
    logged_in = http.post(f"{cluster.url}/ui/login", data={"token": cluster.token}, allow_redirects=False)
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/ui"
    cookie = logged_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
    assert cluster.token not in cookie
    assert "authorization" not in {k.lower() for k in http.headers}
    page = http.get(f"{cluster.url}/ui")
    assert page.status_code == 200 and "/ui/static/app.js" in page.text
    assert http.get(f"{cluster.url}/ui/static/app.js").status_code == 200
    state = http.get(f"{cluster.url}/ui/state")
    assert state.status_code == 200 and any(m["name"] == "iris" for m in state.json()["models"])
    assert state.json()["csrfToken"]


def test_a_cookie_authenticated_change_needs_the_csrf_header(cluster, http):
    assert http.post(f"{cluster.url}/ui/login", data={"token": cluster.token}).status_code == 200  # the page, after 303
    state = http.get(f"{cluster.url}/ui/state").json()
    default = version_of(state, "iris")["version"]
    url = f"{cluster.url}/models/iris/{default}/set-default"  # to the version that is the default: changes nothing
    refused = http.put(url)
    assert refused.status_code == 403 and refused.json()["field"] == CSRF_HEADER
    assert http.put(url, headers={CSRF_HEADER: "f" * 64}).status_code == 403
    done = http.put(url, headers={CSRF_HEADER: state["csrfToken"]})
    assert done.status_code == 200, done.text
    assert done.json()["status"]
    http.post(f"{cluster.url}/ui/logout")
    assert http.get(f"{cluster.url}/ui/state").status_code == 401


def test_without_the_token_there_is_no_state(cluster, http):
    refused = http.get(f"{cluster.url}/ui/state")
    assert refused.status_code == 401 and refused.json()["field"] == "authorization"
    assert http.get(f"{cluster.url}/ui/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
    forged = requests.get(f"{cluster.url}/ui/state", cookies={"modelpool_session": "99999999999.deadbeef"})
    assert forged.status_code == 401
    assert cluster.token not in refused.text + forged.text
