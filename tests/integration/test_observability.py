"""What an operator sees: request ids on answers and in logs, Prometheus metrics on the metrics port."""
from __future__ import annotations

import glob
import re
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest
import requests

from tests.integration.test_serving import v2_body

pytestmark = pytest.mark.integration

ROW = [[5.1, 3.5, 1.4, 0.2]]
SERVE_LOGS = "/tmp/ray/session_latest/logs/serve"


def replica_log_text(replica_id: str, wait_for: Optional[str] = None, timeout_s: float = 15, since: int = 0) -> str:
    """The log of one replica (file names carry the replica id) from character ``since`` on (a length read
    before, to see only what came after); optionally wait for a line to be flushed.

    Several files match once a replica was replaced (a management replica killed by an earlier test): they
    are read in the order they were last written, so the live one, the only one still growing, is last and
    ``since`` cuts before its new lines. In glob's order a dead file could come last (seen once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = sorted(glob.glob(f"{SERVE_LOGS}/replica_*{replica_id}*.log"), key=lambda f: Path(f).stat().st_mtime)
        text = "".join(Path(f).read_text(errors="replace") for f in files)
        text = text[since:]
        if wait_for is None or wait_for in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def metric_value(metrics_url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series' samples whose labels include ``labels``."""
    text = requests.get(metrics_url, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        label_text, value = line[len(name) + 1:].rsplit("} ", 1)
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def series_appears(metrics_url: str, name: str, timeout_s: float = 40, **labels: str) -> bool:
    """True once a sample of ``name`` with ``labels`` is exported (a gauge shows up at its first report)."""
    pattern = re.compile(re.escape(name) + r"\{([^}]*)\}")
    deadline = time.monotonic() + timeout_s
    while True:
        for match in pattern.finditer(requests.get(metrics_url, timeout=10).text):
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
            if all(found.get(k) == v for k, v in labels.items()):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)  # Ray exports every second here (RAY_metrics_report_interval_ms in conftest)


def wait_for_metric(metrics_url: str, name: str, at_least: float, timeout_s: float = 40, **labels: str) -> float:
    deadline = time.monotonic() + timeout_s
    value = metric_value(metrics_url, name, **labels)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
        value = metric_value(metrics_url, name, **labels)
    return value


def test_a_given_request_id_comes_back_and_one_is_made_up_otherwise(cluster, http):
    url = f"{cluster.url}/v2/models/iris/infer"
    given = f"trace-{uuid.uuid4().hex}"
    answered = http.post(url, json=v2_body(ROW), headers={"x-request-id": given})
    assert answered.status_code == 200 and answered.headers["x-request-id"] == given
    refused = http.post(url, data=b"{not json", headers={"x-request-id": given + "-bad"})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == given + "-bad"
    made_up = http.post(url, json=v2_body(ROW)).headers.get("x-request-id")
    assert made_up and made_up != given


def test_the_access_log_line_carries_the_request_id(cluster, http):
    request_id = f"access-{uuid.uuid4().hex}"
    answered = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW), headers={"x-request-id": request_id})
    log = replica_log_text(answered.headers["x-modelpool-replica"], wait_for=request_id)
    lines = [line for line in log.splitlines() if request_id in line]
    assert lines, "no access-log line with the request id"
    assert any("POST" in line and "200" in line for line in lines)


def test_a_model_error_is_logged_with_the_request_id(cluster, http, fragile_model):
    url = f"{cluster.url}/v2/models/{fragile_model}/infer"
    replica = http.post(url, json=v2_body([[1.0, 1.0]])).headers["x-modelpool-replica"]
    earlier = len(replica_log_text(replica))  # the shared model's replica may have logged other tests' errors
    request_id = f"error-{uuid.uuid4().hex}"
    failed = http.post(url, json=v2_body([[1.0, -1.0]]), headers={"x-request-id": request_id})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == request_id
    assert "traceback" not in failed.json(), "tracebacks only under --debug"
    assert failed.headers["x-modelpool-replica"] == replica, "one replica: its log holds this request's lines"
    log = replica_log_text(replica, wait_for="negative readings", since=earlier)
    error_lines = [line for line in log.splitlines() if "negative readings" in line]
    assert error_lines and all(request_id in line for line in error_lines)
    assert any(line.startswith("ERROR") for line in error_lines)


def test_the_metrics_port_counts_requests_by_model_version_and_status(cluster, http):
    name = "ray_modelpool_requests_total"
    ok_before = metric_value(cluster.metrics_url, name, model="diabetes", version="1", route="predict", status="200")
    bad_before = metric_value(cluster.metrics_url, name, model="diabetes", version="1", route="predict", status="400")
    for _ in range(12):
        assert http.post(f"{cluster.url}/v2/models/diabetes/predict", json={"instances": [[0.01] * 10]}).status_code == 200
    for _ in range(3):
        assert http.post(f"{cluster.url}/v2/models/diabetes/predict", json={"rows": []}).status_code == 400
    ok = wait_for_metric(cluster.metrics_url, name, ok_before + 12, model="diabetes", version="1", route="predict", status="200")
    bad = wait_for_metric(cluster.metrics_url, name, bad_before + 3, model="diabetes", version="1", route="predict", status="400")
    assert ok == ok_before + 12 and bad == bad_before + 3
    latency_count = metric_value(cluster.metrics_url, "ray_modelpool_request_latency_ms_count", model="diabetes", version="1")
    assert latency_count >= 15
    assert metric_value(cluster.metrics_url, "ray_modelpool_batch_size_count", model="diabetes", version="1") >= 12
    assert series_appears(cluster.metrics_url, "ray_modelpool_queue_length", model="diabetes", version="1")
    assert wait_for_metric(cluster.metrics_url, "ray_modelpool_replicas", 1, model="diabetes", version="1") >= 1
    assert "ray_serve_" in requests.get(cluster.metrics_url, timeout=10).text, "Serve's own metrics share the port"


def test_batch_rows_scored_and_failed_are_counted(cluster, fragile_model):
    fragile = fragile_model
    from modelpool.client import Client

    name = "ray_modelpool_batch_rows_total"
    scored_before = metric_value(cluster.metrics_url, name, model=fragile, version="1", outcome="scored")
    failed_before = metric_value(cluster.metrics_url, name, model=fragile, version="1", outcome="failed")
    with Client(cluster.url, token=cluster.token) as client:
        job = client.get_service(fragile, "1").batch([[1.0, 2.0], [3.0, 4.0], [1.0, -1.0]], parallel_count=1)
        state = job.start().wait(timeout=180)
    assert (state["state"], state["completedItems"], state["failedItems"]) == ("Complete", 2, 1)
    scored = wait_for_metric(cluster.metrics_url, name, scored_before + 2, model=fragile, version="1", outcome="scored")
    failed = wait_for_metric(cluster.metrics_url, name, failed_before + 1, model=fragile, version="1", outcome="failed")
    assert (scored - scored_before, failed - failed_before) == (2, 1)
