"""Hostile input through the real ingress (HAProxy -> Serve -> replicas): exact statuses and messages.

The unit tests (tests/unit/test_hostile_input.py) hold each check to its message; these make sure
nothing between the socket and the check (HAProxy, Serve's proxy, FastAPI) changes the answer.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.integration

NO_TOKEN = {"error": "missing or wrong management token; send 'Authorization: Bearer <token>' "
                     "(the token file's path is printed by `modelpool start`)", "field": "authorization"}


@pytest.mark.parametrize("method, path", [("GET", "/models"), ("GET", "/openapi.json"), ("OPTIONS", "/"),
                                          ("POST", "/batches"), ("GET", "/batches/x/results/0/artifacts")])
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer"])
def test_management_and_batch_routes_need_the_token(cluster, http, method, path, header):
    headers = {"Authorization": header} if header else {}
    response = http.request(method, cluster.url + path, headers=headers)
    assert (response.status_code, response.json()) == (401, NO_TOKEN)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_interactive_docs_are_not_served(cluster, http):
    assert http.get(f"{cluster.url}/docs").status_code == 404
    assert http.get(f"{cluster.url}/redoc").status_code == 404


def test_a_chunked_body_over_the_limit_is_413_not_buffered(cluster, http):
    def chunks():
        for _ in range(40):
            yield b" " * 8192  # 320 kB against the test cluster's 256 kB limit, no Content-Length

    response = http.post(f"{cluster.url}/v2/models/iris/infer", data=chunks(), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (413, {
        "error": "request body exceeds the limit of 262144 bytes; send fewer rows per request", "field": "body"})


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/batches"])
def test_json_nested_past_any_parser_is_a_quick_400(cluster, admin, path):
    started = time.monotonic()
    response = admin.post(cluster.url + path, data=b"[" * 100_000, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["field"] == "body", response.text
    assert time.monotonic() - started < 5


def test_artifact_names_cannot_leave_their_row(cluster, admin):
    records = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}] * 2
    started = admin.post(f"{cluster.url}/batches", json={"service": "iris_report", "records": records})
    assert started.status_code == 202, started.text
    url = f"{cluster.url}/batches/{started.json()['executionId']}"
    deadline = time.monotonic() + 120
    while admin.get(url).json()["state"] != "Complete" and time.monotonic() < deadline:
        time.sleep(0.5)
    artifacts = f"{url}/results/1/artifacts"
    assert admin.get(artifacts).json() == ["report.json"]
    report = admin.get(f"{artifacts}/report.json")
    assert report.status_code == 200
    assert report.headers["Content-Disposition"] == "attachment; filename=\"report.json\"; filename*=UTF-8''report.json"
    dots = admin.get(f"{artifacts}/%2e%2e")
    assert dots.status_code == 400 and dots.json()["field"] == "artifact", dots.text
    assert dots.json()["error"].startswith("artifact name '..' is not allowed")
    for escape in ("..%2F..%2Fjob.json", "%2e%2e%2f%2e%2e%2fjob.json", "..%5C..%5Cjob.json", "report.json%00.txt"):
        answer = admin.get(f"{artifacts}/{escape}")
        assert answer.status_code in (400, 404), (escape, answer.status_code)
        assert "executionId" not in answer.text, f"{escape} reached the job record"


def test_the_tokens_never_reach_a_log(cluster, admin, http):
    """After management, batch and inference calls, no Serve or replica log holds the management token."""
    admin.get(f"{cluster.url}/models")
    http.get(f"{cluster.url}/models", headers={"Authorization": f"Bearer {cluster.token}x"})  # a near miss, logged as 401
    time.sleep(1.5)  # replicas flush their buffered logs every second
    token = cluster.token
    leaked = [path for path in glob.glob("/tmp/ray/session_latest/logs/**/*", recursive=True)
              if os.path.isfile(path) and token.encode() in open(path, "rb").read()]
    assert not leaked


def test_start_refuses_a_network_address_without_a_token_and_starts_nothing(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k != "MODELPOOL_MANAGEMENT_TOKEN"}
    env["MODELPOOL_HOME"] = str(tmp_path / "home")
    started = subprocess.run([sys.executable, "-m", "modelpool.cli", "start", "--http-host", "0.0.0.0"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert started.stderr.startswith("modelpool: bad setting: --http-host 0.0.0.0 opens the management API to the network")
    assert not (tmp_path / "home").exists(), "a refused start must leave nothing behind"
    assert requests.get(f"{cluster.url}/v2/health/live").status_code == 200, "the running cluster is untouched"
