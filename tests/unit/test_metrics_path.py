"""--metrics-path: the cluster's Prometheus text on the HTTP port, merged from every node's export, and its scrapes
left out of the access log unless --debug. On a real cluster: tests/integration/test_metrics_path.py."""
from __future__ import annotations

import http.server
import logging
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

import pytest

from modelpool.cluster.net import free_port
from modelpool.cluster.settings import RESERVED_PATHS, SettingsError, load_settings
from modelpool.cluster.tokens import token_digest
from modelpool.deployments.serving_options import ServingOptions
from modelpool.management import metrics_route
from modelpool.management.api import api, state
from modelpool.management.metrics_route import MetricsTarget, metrics_targets
from modelpool.management.prometheus_text import CONTENT_TYPE, NodeExposition, merge
from modelpool.management.scrape_logs import ScrapeAccessFilter, filter_scrape_logs

with warnings.catch_warnings():  # starlette's notice about httpx, raised on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NODE_A = """# HELP ray_modelpool_requests_total Model requests answered.
# TYPE ray_modelpool_requests_total counter
ray_modelpool_requests_total{model="iris",status="200"} 12.0
# HELP ray_modelpool_batch_size Requests served by one handler call.
# TYPE ray_modelpool_batch_size histogram
ray_modelpool_batch_size_bucket{le="1.0",model="iris"} 3.0
ray_modelpool_batch_size_bucket{le="+Inf",model="iris"} 4.0
ray_modelpool_batch_size_count{model="iris"} 4.0
ray_modelpool_batch_size_sum{model="iris"} 9.0
"""
NODE_B = """# HELP ray_modelpool_requests_total Model requests answered.
# TYPE ray_modelpool_requests_total counter
ray_modelpool_requests_total{model="wine",status="200"} 5.0
# HELP ray_node_cpu_utilization CPU use.
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{ip="10.0.0.2"} 12.5
"""


# ------------------------------------------------------------------------------ the setting
def test_the_default_flag_and_variable():
    assert load_settings({}, {}).metrics_path == "/metrics"
    assert load_settings({}, {"MODELPOOL_METRICS_PATH": "/prometheus"}).metrics_path == "/prometheus"
    assert load_settings({"metrics_path": "/custom-metrics/"}, {}).metrics_path == "/custom-metrics", "no trailing slash"


@pytest.mark.parametrize("path", ["/models", "/models/metrics", "/v2", "/v2/metrics", "/v1/x", "/predictions",
                                  "/pools/m", "/batches", "/graphs", "/services", "/ui", "/ui/metrics", "/ping",
                                  "/openapi.json", "/explanations/x", "/-/routes", "/", "//metrics", "/a/../models",
                                  "metrics"])
def test_a_path_on_an_api_route_or_not_a_path_is_refused_naming_the_flag(path):
    with pytest.raises(SettingsError) as refused:
        load_settings({"metrics_path": path}, {})
    assert str(refused.value).startswith("--metrics-path / MODELPOOL_METRICS_PATH: ")


def test_no_route_of_the_http_port_can_be_shadowed():
    """Every path the management API and the model apps serve (their OpenAPI description) starts with a
    reserved path: a new router must add its prefix to RESERVED_PATHS, or this fails."""
    paths = api.openapi()["paths"]
    assert len(paths) > 20
    for path in paths:
        first = "/" + path.split("/")[1].split(":")[0]
        if first != "/":
            assert first in RESERVED_PATHS, f"{path}: --metrics-path {first} would shadow it"


def test_paths_beside_the_api_pass():
    for path in ("/metrics", "/prometheus", "/v2x", "/modelsmetrics", "/ops/metrics"):
        assert load_settings({"metrics_path": path}, {}).metrics_path == path


# ------------------------------------------------------------------------------ merging the nodes' texts
def test_families_of_several_nodes_are_merged_under_one_help_and_type():
    text = merge([NodeExposition("10.0.0.1:8082", NODE_A), NodeExposition("10.0.0.2:8082", NODE_B)])
    lines = text.splitlines()
    assert lines.count("# TYPE ray_modelpool_requests_total counter") == 1
    assert lines.count("# HELP ray_modelpool_requests_total Model requests answered.") == 1
    family = lines.index("# TYPE ray_modelpool_requests_total counter")
    assert lines[family + 1:family + 3] == ['ray_modelpool_requests_total{model="iris",status="200"} 12.0',
                                            'ray_modelpool_requests_total{model="wine",status="200"} 5.0']
    histogram = lines.index("# TYPE ray_modelpool_batch_size histogram")
    assert [line.split("{")[0] for line in lines[histogram + 1:histogram + 5]] == [
        "ray_modelpool_batch_size_bucket", "ray_modelpool_batch_size_bucket", "ray_modelpool_batch_size_count",
        "ray_modelpool_batch_size_sum"]
    assert 'ray_node_cpu_utilization{ip="10.0.0.2"} 12.5' in lines and text.endswith("\n")


def test_an_unreachable_node_is_a_comment_line_and_the_others_are_answered():
    text = merge([NodeExposition("10.0.0.1:8082", NODE_A),
                  NodeExposition("10.0.0.9:8082", error="ConnectError: [Errno 111]\nConnection refused")])
    assert text.splitlines()[0] == "# modelpool: node 10.0.0.9:8082 unreachable (ConnectError: [Errno 111] Connection refused)"
    assert 'ray_modelpool_requests_total{model="iris",status="200"} 12.0' in text
    assert merge([]) == ""
    assert merge([NodeExposition("10.0.0.1:8082", NODE_A)]) == NODE_A, "one node's text is answered as it is"


def test_alive_nodes_with_an_export_port_are_the_targets():
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8082},
             {"Alive": False, "NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 8082},
             {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8082},
             {"Alive": True, "NodeManagerAddress": "fd00::4", "MetricsExportPort": 9000},
             {"Alive": True, "NodeManagerAddress": "10.0.0.5"}]
    targets = metrics_targets(nodes)
    assert [t.url for t in targets] == ["http://10.0.0.1:8082/metrics", "http://10.0.0.2:8082/metrics",
                                        "http://[fd00::4]:9000/metrics"]


# ------------------------------------------------------------------------------ the route
@contextmanager
def export(text: str, delay_s: float = 0.0) -> Iterator[MetricsTarget]:
    """A node's metrics export port: a real HTTP server answering ``text`` at /metrics after ``delay_s``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay_s)
            body = text.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield MetricsTarget("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def client(monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setattr(state, "token", "management-token-of-the-unit-test")
    monkeypatch.setattr(state, "serving", ServingOptions())
    monkeypatch.setattr(state, "metrics_path", "/metrics")
    with TestClient(api) as test_client:
        yield test_client


def test_the_path_answers_every_nodes_text_with_prometheus_content_type(client, monkeypatch):
    with export(NODE_A) as a, export(NODE_B) as b:
        monkeypatch.setattr(metrics_route, "_alive_targets", lambda: [a, b])
        answered = client.get("/metrics")
    assert answered.status_code == 200
    assert answered.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'model="iris"' in answered.text and 'model="wine"' in answered.text
    assert answered.text.count("# TYPE ray_modelpool_requests_total counter") == 1


def test_a_slow_and_a_dead_node_are_named_and_the_scrape_still_answers(client, monkeypatch):
    monkeypatch.setattr(metrics_route, "NODE_TIMEOUT_S", 0.5)
    dead = MetricsTarget("127.0.0.1", free_port())  # nothing listens
    with export(NODE_A) as a, export(NODE_B, delay_s=3) as slow:
        monkeypatch.setattr(metrics_route, "_alive_targets", lambda: [a, slow, dead])
        began = time.monotonic()
        answered = client.get("/metrics")
        took = time.monotonic() - began
    assert answered.status_code == 200 and took < 2.5, f"nodes are read at once, each within the timeout ({took:.1f} s)"
    assert f"# modelpool: node {slow.name} unreachable (no answer within 0.5 s)" in answered.text
    assert f"# modelpool: node {dead.name} unreachable (ConnectError" in answered.text
    assert 'ray_modelpool_requests_total{model="iris",status="200"} 12.0' in answered.text
    assert 'model="wine"' not in answered.text


def test_the_path_is_the_replicas_setting(client, monkeypatch):
    monkeypatch.setattr(state, "metrics_path", "/custom-metrics")
    with export(NODE_A) as a:
        monkeypatch.setattr(metrics_route, "_alive_targets", lambda: [a])
        assert client.get("/custom-metrics").status_code == 200
        assert client.get("/custom-metrics/").status_code == 200, "a trailing slash is the same path"
        assert client.get("/metrics").status_code == 404
        assert client.post("/custom-metrics").status_code == 405
    assert metrics_route.route.path == "/custom-metrics", "Serve names the route (and its access line) by it"


def test_open_without_an_inference_token_and_guarded_with_one(client, monkeypatch):
    with export(NODE_A) as a:
        monkeypatch.setattr(metrics_route, "_alive_targets", lambda: [a])
        assert client.get("/metrics").status_code == 200, "Prometheus scrapes without credentials by default"
        monkeypatch.setattr(state, "serving", ServingOptions(inference_token_sha256=(
            token_digest("inference-token-of-the-unit-test"), token_digest(state.token))))
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["field"] == "authorization"
        assert "ray_modelpool" not in refused.text
        for token in ("inference-token-of-the-unit-test", state.token):
            assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# ------------------------------------------------------------------------------ scrape access lines
def access_record(message: str, access: bool = True) -> logging.LogRecord:
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, message, None, None)
    if access:
        record.serve_access_log = True
    return record


def test_the_filter_drops_scrapes_only():
    scrapes = ScrapeAccessFilter("/metrics")
    assert not scrapes.filter(access_record("GET /metrics 200 3.2ms"))
    assert not scrapes.filter(access_record("127.0.0.1:50412 HEAD /metrics/ 200 0.4ms"))
    assert scrapes.filter(access_record("GET /models 200 3.2ms"))
    assert scrapes.filter(access_record("GET /metrics-old 200 3.2ms"))
    assert scrapes.filter(access_record("POST /metrics 405 0.3ms")), "not a scrape: someone should see it"
    assert scrapes.filter(access_record("GET /metrics 200 3.2ms", access=False)), "only Serve's access records"


@pytest.fixture()
def serve_logger(tmp_path):
    """Serve's own replica logger set-up (file handler behind a memory handler and Serve's filter chain), restored after."""
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    logger = logging.getLogger("ray.serve")
    saved = (list(logger.handlers), list(logger.filters), logger.propagate, logger.level)
    configure_component_logger(component_name="management_Management", component_id="unit",
                               logging_config=LoggingConfig(logs_dir=str(tmp_path)), max_bytes=1 << 20, backup_count=1)
    yield logger, tmp_path
    logger.handlers[:] = saved[0]
    logger.filters[:] = saved[1]
    logger.propagate, logger.level = saved[2], saved[3]


def _log_text(logger: logging.Logger, logs_dir) -> str:
    for handler in logger.handlers:
        handler.flush()
    return "".join(path.read_text() for path in logs_dir.glob("*.log"))


def test_in_serves_logger_scrapes_go_and_every_other_line_stays(serve_logger):
    logger, logs_dir = serve_logger
    filter_scrape_logs("/metrics", debug=False)
    filter_scrape_logs("/metrics", debug=False)  # idempotent
    assert sum(isinstance(f, ScrapeAccessFilter) for f in logger.filters) == 1
    access = {"serve_access_log": True, "skip_context_filter": True}
    logger.info("GET /metrics 200 3.2ms", extra=access)
    logger.info("GET /v2/health/ready 200 1.1ms", extra=access)
    logger.info("reconciled 3 models")
    text = _log_text(logger, logs_dir)
    assert "GET /v2/health/ready 200" in text and "reconciled 3 models" in text
    assert "/metrics" not in text


def test_under_debug_scrapes_are_logged(serve_logger):
    logger, logs_dir = serve_logger
    filter_scrape_logs("/metrics", debug=False)
    filter_scrape_logs("/metrics", debug=True)  # turned on later: the earlier filter goes
    logger.info("GET /metrics 200 3.2ms", extra={"serve_access_log": True, "skip_context_filter": True})
    assert "GET /metrics 200" in _log_text(logger, logs_dir)
