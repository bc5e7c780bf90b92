"""--metrics-path on a real cluster: Prometheus text on the HTTP port (through the front and Serve to management),
and scrapes that write no access line in management's log. A custom path, with an inference token and a pidfile,
is checked after the restart in test_zzz_server_settings.py."""
from __future__ import annotations

import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_observability import metric_value, replica_log_text
from tests.integration.test_serving import v2_body

pytestmark = pytest.mark.integration

ROW = [[5.1, 3.5, 1.4, 0.2]]
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MANAGEMENT_LOG = "management_Management"  # the management replica's log file names carry it


def test_the_http_port_answers_the_clusters_prometheus_text(cluster, http):
    metrics = f"{cluster.url}/metrics"
    name = "ray_modelpool_requests_total"
    labels = {"model": "iris", "route": "infer", "status": "200"}
    before = metric_value(metrics, name, **labels)
    for _ in range(6):
        assert http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW)).status_code == 200
    deadline = time.monotonic() + 40  # replicas report every second, Ray exports every second here
    while metric_value(metrics, name, **labels) < before + 6 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric_value(metrics, name, **labels) == before + 6

    answered = requests.get(metrics, timeout=10)  # no credentials, as Prometheus scrapes
    assert answered.status_code == 200 and answered.headers["content-type"] == PROMETHEUS_TYPE
    families = {family.name: family for family in text_string_to_metric_families(answered.text)}  # Prometheus parses it
    assert "ray_modelpool_requests" in families, "the counter's family (the parser drops _total)"
    assert any(f.startswith("ray_serve_") for f in families), "Serve's own metrics come along, as on the metrics port"
    assert "# modelpool: node" not in answered.text, "every node answered"


def test_scrapes_write_no_access_line_while_other_requests_do(cluster, http):
    since = len(replica_log_text(MANAGEMENT_LOG))
    scrape_id, ping_id = f"scrape-{uuid.uuid4().hex}", f"ping-{uuid.uuid4().hex}"
    for _ in range(3):
        assert http.get(f"{cluster.url}/metrics", headers={"x-request-id": scrape_id}).status_code == 200
    assert http.get(f"{cluster.url}/ping", headers={"x-request-id": ping_id}).status_code == 200
    log = replica_log_text(MANAGEMENT_LOG, wait_for="GET /ping 200", since=since)
    assert any("GET /ping 200" in line and ping_id in line for line in log.splitlines()), \
        "management writes access lines (the control)"
    assert "GET /metrics" not in log and scrape_id not in log, "scrapes write none"
