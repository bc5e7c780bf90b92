"""Runs last (file order): each Seldon-style server setting changes what it says on a real cluster.

The session cluster runs with the defaults; this module first checks the default behaviour, then
restarts the cluster with every setting turned (flags, as a person would) and checks again. The
session fixture stops it at the end as usual.
"""
from __future__ import annotations

import concurrent.futures
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.integration.test_observability import replica_log_text
from tests.integration.test_serving import FRAGILE_HANDLER, v2_body

pytestmark = pytest.mark.integration

ROW = [[5.1, 3.5, 1.4, 0.2]]
CSV = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
TURNED = ["--keep-alive-s", "1", "--no-access-log", "--single-threaded", "--debug", "--payload-passthrough",
          "--max-requests", "25", "--max-requests-jitter", "5"]


def idle_connection_survives(url: str, idle_s: float) -> bool:
    """Send one request on a raw socket, stay idle, then see whether the server closed the connection."""
    parts = urlsplit(url)
    body = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
    request = (f"POST /v2/models/iris/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            assert chunk, "closed before answering"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        time.sleep(idle_s)
        try:
            conn.sendall(request)
            return conn.recv(65536).startswith(b"HTTP/1.1 200")
        except OSError:  # reset: closed
            return False


def deployment_config(app_prefix: str) -> dict:
    from management.workers import serve_details

    for name, app in serve_details()["applications"].items():
        if name.startswith(app_prefix):
            return next(iter(app["deployments"].values()))["deployment_config"]
    raise AssertionError(f"no application {app_prefix}")


def ensure_fragile(cluster, admin, tmp_path) -> str:
    from cluster.settings import load_settings
    from deployments.examples import archive_command

    source = tmp_path / "fragile.py"
    source.write_text(FRAGILE_HANDLER)
    archive_command(name="fragile_settings", version="1", handler="fragile:predict", files=[source],
                    out=load_settings({}, cluster.env).model_store_path / "fragile_settings-1.zip")
    registered = admin.post(f"{cluster.url}/models", params={"url": "fragile_settings-1.zip", "initial_workers": 1,
                                                             "synchronous": "true"})
    assert registered.status_code in (200, 409), registered.text
    return f"{cluster.url}/v2/models/fragile_settings/infer"


@pytest.fixture(scope="module")
def defaults_then_turned(cluster, ray_client):
    """Checks of the defaults run first (module order); ``turned`` restarts with every setting changed."""
    return {"restarted": False}


def test_defaults_keep_idle_connections_decode_bodies_and_batch(cluster, http, defaults_then_turned):
    assert idle_connection_survives(cluster.url, 2.5), "the default keep-alive (90 s) keeps a 2.5 s idle connection"
    refused = http.post(f"{cluster.url}/v2/models/iris_report/predict", data=CSV, headers={"content-type": "text/csv"})
    assert refused.status_code == 400, "without passthrough the body must be JSON"
    assert deployment_config("model:iris:1")["max_ongoing_requests"] >= 64
    answered = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2_body(ROW))
    time.sleep(2)
    assert "applied user_config" not in replica_log_text(answered.headers["x-modelpool-replica"]), "INFO: no DEBUG lines"


def test_restart_with_every_setting_turned(cluster, ray_client, defaults_then_turned):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    assert cluster.cli("stop", check=False).returncode == 0
    started = cluster.cli("start", *TURNED, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    from ray.serve.context import _set_global_client

    from cluster.runtime import connect

    _set_global_client(None)  # the old cluster's Serve controller is gone
    connect(cluster.address)
    defaults_then_turned["restarted"] = True


@pytest.fixture()
def turned(defaults_then_turned):
    if not defaults_then_turned["restarted"]:
        pytest.fail("the restart with turned settings failed")


def test_keep_alive_closes_idle_connections_sooner(cluster, turned):
    assert not idle_connection_survives(cluster.url, 2.5), "--keep-alive-s 1 closes a 2.5 s idle connection"


def test_payload_passthrough_gives_the_raw_body_to_the_handler(cluster, http, turned):
    answered = http.post(f"{cluster.url}/v2/models/iris_report/predict", data=CSV, headers={"content-type": "text/csv"})
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"].startswith("text/csv")
    assert [line.split(",")[1] for line in answered.text.splitlines()[1:]] == ["setosa", "virginica"]
    ordinary = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW))
    assert ordinary.status_code == 200, "models without predict_raw still decode"


def test_debug_answers_carry_the_traceback_and_logs_go_to_debug(cluster, admin, http, tmp_path, turned):
    url = ensure_fragile(cluster, admin, tmp_path)
    failed = http.post(url, json=v2_body([[1.0, -1.0]]))
    assert failed.status_code == 500
    assert any("negative readings" in line for line in failed.json()["traceback"])
    answered = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2_body(ROW))
    assert "applied user_config" in replica_log_text(answered.headers["x-modelpool-replica"], wait_for="applied user_config")


def test_single_threaded_serves_one_request_at_a_time_unbatched(cluster, turned):
    config = deployment_config("model:iris:1")
    assert config["max_ongoing_requests"] == 1

    def call(_: int) -> requests.Response:
        with requests.Session() as session:
            return session.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW), timeout=60)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(24)))
    answered = [a for a in answers if a.status_code == 200]
    assert len(answered) >= 20, [a.status_code for a in answers]
    assert {a.headers["x-modelpool-batch-size"] for a in answered} == {"1"}


def test_access_log_off_writes_no_access_line(cluster, http, turned):
    request_id = f"quiet-{uuid.uuid4().hex}"
    answered = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW), headers={"x-request-id": request_id})
    assert answered.status_code == 200 and answered.headers["x-request-id"] == request_id
    time.sleep(2)
    assert request_id not in replica_log_text(answered.headers["x-modelpool-replica"])


def test_max_requests_recycles_the_replica(cluster, http, turned):
    """After 25..30 answers the replica fails its health check and Serve starts a fresh one."""
    url = f"{cluster.url}/v2/models/diabetes/predict"
    served_by: dict[str, int] = {}
    statuses: set[int] = set()
    deadline = time.monotonic() + 90
    while len(served_by) < 2 and time.monotonic() < deadline:
        try:
            answer = http.post(url, json={"instances": [[0.01] * 10]}, timeout=30)
        except requests.ConnectionError:
            time.sleep(0.2)
            continue
        statuses.add(answer.status_code)
        if answer.status_code == 200:
            replica = answer.headers["x-modelpool-replica"]
            served_by[replica] = served_by.get(replica, 0) + 1
        else:
            time.sleep(0.2)
        if sum(served_by.values()) >= 25:
            time.sleep(0.1)  # budget spent: leave the health check time to notice
    assert len(served_by) == 2, f"no recycling seen: {served_by}"
    first = next(iter(served_by.values()))
    assert first >= 25, f"recycled after {first} requests, before its budget of 25..30"
    assert statuses <= {200, 502, 503}, f"only the swap may refuse requests: {statuses}"
