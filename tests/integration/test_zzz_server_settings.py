"""Runs last (file order): each Seldon-style server setting changes what it says on a real cluster.

The session cluster runs with the defaults; this module first checks the default behaviour, then
restarts the cluster with every setting turned (flags, as a person would) and checks again. The
restart also shows that every registered model, default version and pool comes back (one restart
for both: each costs most of a minute). The session fixture stops the cluster at the end as usual.
"""
from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from modelpool.cluster.net import is_loopback_host
from tests.integration.conftest import MODELPOOL
from tests.integration.handler_models import FRAGILE_HANDLER, register_handler_model, store_handler_archive
from tests.integration.test_management import register_together
from tests.integration.test_observability import replica_log_text
from tests.integration.test_serving import v2_body
from tests.listening import cluster_processes, listening_sockets, listing

pytestmark = pytest.mark.integration

ROW = [[5.1, 3.5, 1.4, 0.2]]
CSV = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
INFERENCE_TOKEN = f"inference-{uuid.uuid4().hex}"
TURNED = ["--keep-alive-s", "1", "--no-access-log", "--single-threaded", "--debug", "--payload-passthrough",
          "--max-requests", "25", "--max-requests-jitter", "5", "--inference-token", INFERENCE_TOKEN,
          "--body-timeout-s", "2", "--metrics-path", "/custom-metrics"]  # and --pidfile (pidfile_of: a per-run path)
AUTHORIZATION = f"Authorization: Bearer {INFERENCE_TOKEN}"
# A handler whose error names a file in its own (server-side) directory.
WEIGHTLESS_HANDLER = """
from pathlib import Path

def predict(data):
    return Path(__file__).with_name("weights.bin").read_bytes()
"""


def pidfile_of(cluster) -> Path:
    """The restart's --pidfile: beside the cluster's home, in a folder of pytest's that it removes."""
    return cluster.home.parent / f"{cluster.home.name}.pid"


@pytest.fixture()
def http():
    """Inference calls carry the inference token: ignored with the defaults, required once it is turned on."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {INFERENCE_TOKEN}"
        yield session


def idle_connection_survives(url: str, idle_s: float) -> bool:
    """Send one request on a raw socket, stay idle, then see whether the server closed the connection."""
    parts = urlsplit(url)
    body = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
    request = (f"POST /v2/models/iris/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"{AUTHORIZATION}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
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
    from modelpool.management.serve_state import serve_details

    for name, app in serve_details()["applications"].items():
        if name.startswith(app_prefix):
            return next(iter(app["deployments"].values()))["deployment_config"]
    raise AssertionError(f"no application {app_prefix}")


def ensure_weightless(cluster, admin, tmp_path) -> str:
    """A model in the generic pool (no replicas of its own) whose every call fails naming a server file."""
    registered = register_handler_model(cluster, admin, tmp_path, "weightless", WEIGHTLESS_HANDLER, initial_workers=0)
    assert registered.status_code in (200, 409), registered.text
    return f"{cluster.url}/v2/models/weightless/infer"


@pytest.fixture(scope="module")
def defaults_then_turned(cluster, ray_client):
    """Checks of the defaults run first (module order); ``turned`` restarts with every setting changed."""
    return {"restarted": False}


def test_defaults_keep_idle_connections_decode_bodies_and_batch(cluster, http, defaults_then_turned):
    assert idle_connection_survives(cluster.url, 2.5), "the default keep-alive (90 s) keeps a 2.5 s idle connection"
    refused = http.post(f"{cluster.url}/v2/models/iris_report/predict", data=CSV, headers={"content-type": "text/csv"})
    assert refused.status_code == 400, "without passthrough the body must be JSON"
    assert deployment_config("model:iris:1")["max_ongoing_requests"] >= 64
    request_id = f"defaults-{uuid.uuid4().hex}"
    answered = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2_body(ROW),
                         headers={"x-request-id": request_id})
    log = replica_log_text(answered.headers["x-modelpool-replica"], wait_for=request_id)  # flushed up to this call
    assert request_id in log, "the access line of the call (access log on by default)"
    assert "applied user_config" not in log, "INFO: no DEBUG lines"


def test_default_errors_name_no_server_path(cluster, admin, http, tmp_path, defaults_then_turned):
    failed = http.post(ensure_weightless(cluster, admin, tmp_path), json=v2_body(ROW))
    assert failed.status_code == 500 and failed.headers["x-modelpool-pool"] == "generic"
    error = failed.json()["error"]
    assert error.startswith("model 'weightless' version '1' failed: FileNotFoundError:"), error
    assert error.endswith("'<server path>/weights.bin'") and str(cluster.home) not in error
    assert "traceback" not in failed.json()


def test_restart_with_every_setting_turned_restores_models_defaults_and_pools(cluster, admin, http, tmp_path,
                                                                            ray_client, defaults_then_turned):
    """One restart serves two checks: every registered model and pool comes back, and the settings change."""
    import ray

    models = f"{cluster.url}/models"
    gone = store_handler_archive(cluster, tmp_path, "gone", FRAGILE_HANDLER)
    registered = register_together(cluster, [{"url": gone, "synchronous": "true"},
                                             {"url": "iris-2.zip", "model_name": "durable", "synchronous": "true"},
                                             {"url": "iris-1.zip", "model_name": "durable_generic", "synchronous": "true"}])
    assert [r.status_code for r in registered] == [200, 200, 200], [r.text for r in registered]
    assert admin.delete(f"{models}/gone/1").status_code == 200  # its archive stays in the model store
    assert admin.put(f"{cluster.url}/pools/durable/2", params={"initial_pool_size": 1, "max_pool_size": 2}).status_code == 200
    assert admin.put(f"{models}/iris/1/set-default").status_code == 200
    graph = admin.put(f"{cluster.url}/graphs/durable_graph", json={"graph": {"name": "only", "model": "durable"}})
    assert graph.status_code == 201, graph.text
    before = sorted((s["name"], s["version"], s["pool"], s["isDefault"]) for s in admin.get(f"{cluster.url}/services").json())

    if ray.is_initialized():
        ray.shutdown()
    assert cluster.cli("stop", check=False).returncode == 0
    # and listening on every interface, which a given management token allows (the generated one stays loopback's)
    started = subprocess.run([*MODELPOOL, "start", *TURNED, "--http-host", "0.0.0.0", "--pidfile",
                              str(pidfile_of(cluster))], env={**cluster.env, "MODELPOOL_MANAGEMENT_TOKEN": cluster.token},
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    from ray.serve.context import _set_global_client

    from modelpool.cluster.runtime import connect

    _set_global_client(None)  # the old cluster's Serve controller is gone
    connect(cluster.address)
    defaults_then_turned["restarted"] = True

    after = sorted((s["name"], s["version"], s["pool"], s["isDefault"]) for s in admin.get(f"{cluster.url}/services").json())
    assert after == before, "unregistered store archives must not come back at start"
    assert admin.get(f"{models}/gone").status_code == 404
    assert all(n["status"] == "Success" for n in admin.get(f"{cluster.url}/pools/durable/2").json())
    assert http.post(f"{cluster.url}/v2/models/durable/infer", json=v2_body(ROW)).json()["model_version"] == "2"
    generic = http.post(f"{cluster.url}/v2/models/durable_generic/infer", json=v2_body(ROW))
    assert generic.status_code == 200 and generic.headers.get("x-modelpool-pool") == "generic"
    assert http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW)).json()["model_version"] == "1"
    through_graph = http.post(f"{cluster.url}/v2/models/durable_graph/infer", json=v2_body(ROW))
    assert through_graph.status_code == 200 and through_graph.headers["x-modelpool-graph-path"] == "only", \
        "graphs come back after a restart, like models"


@pytest.fixture()
def turned(defaults_then_turned):
    if not defaults_then_turned["restarted"]:
        pytest.fail("the restart with turned settings failed")


def test_a_wide_http_host_opens_the_fronts_two_ports_and_nothing_else(cluster, turned):
    sockets = listening_sockets(cluster_processes())
    wide = {address: owner for address, owner in sockets.items() if not is_loopback_host(address[0])}
    assert set(wide) == {("0.0.0.0", int(cluster.env["MODELPOOL_HTTP_PORT"])),
                         ("0.0.0.0", int(cluster.env["MODELPOOL_GRPC_PORT"]))}, listing(wide)
    assert all(" haproxy " in owner for owner in wide.values()), listing(wide)


def test_keep_alive_closes_idle_connections_sooner(cluster, turned):
    assert not idle_connection_survives(cluster.url, 2.5), "--keep-alive-s 1 closes a 2.5 s idle connection"


def test_payload_passthrough_gives_the_raw_body_to_the_handler(cluster, http, turned):
    answered = http.post(f"{cluster.url}/v2/models/iris_report/predict", data=CSV, headers={"content-type": "text/csv"})
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"].startswith("text/csv")
    assert [line.split(",")[1] for line in answered.text.splitlines()[1:]] == ["setosa", "virginica"]
    ordinary = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW))
    assert ordinary.status_code == 200, "models without predict_raw still decode"


def test_debug_answers_carry_the_traceback_and_logs_go_to_debug(cluster, http, fragile_model, turned):
    failed = http.post(f"{cluster.url}/v2/models/{fragile_model}/infer", json=v2_body([[1.0, -1.0]]))
    assert failed.status_code == 500
    assert any("negative readings" in line for line in failed.json()["traceback"])
    answered = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2_body(ROW))
    assert "applied user_config" in replica_log_text(answered.headers["x-modelpool-replica"], wait_for="applied user_config")
    weightless = http.post(f"{cluster.url}/v2/models/weightless/infer", json=v2_body(ROW)).json()
    assert "<server path>" not in weightless["error"] and weightless["error"].endswith("/weights.bin'")


@pytest.mark.parametrize("method, path", [("POST", "/v2/models/iris/infer"), ("POST", "/v2/models/iris/versions/1/infer"),
                                          ("GET", "/v2/models/iris"), ("GET", "/v2/models/iris/ready"),
                                          ("POST", "/v2/models/nosuch/infer"), ("GET", "/v2/models/weightless")])
def test_the_inference_token_guards_every_model_route(cluster, method, path, turned):
    body = v2_body(ROW) if method == "POST" else None
    with requests.Session() as anonymous:
        for header in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": INFERENCE_TOKEN}):
            refused = anonymous.request(method, cluster.url + path, json=body, headers=header)
            assert refused.status_code == 401, (header, refused.text)
            assert refused.json()["field"] == "authorization" and refused.headers["WWW-Authenticate"] == "Bearer"
            assert "nosuch" not in refused.text and "iris" not in refused.text, "a refusal reveals no model"
        for token in (INFERENCE_TOKEN, cluster.token):  # the management token is accepted too
            answered = anonymous.request(method, cluster.url + path, json=body,
                                         headers={"Authorization": f"Bearer {token}"})
            assert answered.status_code == (404 if "nosuch" in path else 200), answered.text
    if path.endswith("weightless"):
        assert answered.headers["x-modelpool-pool"] == "generic"


def test_health_routes_stay_open_with_an_inference_token(cluster, turned):
    with requests.Session() as anonymous:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
            assert anonymous.get(cluster.url + path).status_code == 200, path


def test_the_metrics_path_moves_and_takes_the_inference_token(cluster, http, turned):
    """--metrics-path /custom-metrics; with --inference-token set, scrapes need a token like model calls."""
    scraped = http.get(f"{cluster.url}/custom-metrics")
    assert scraped.status_code == 200 and "ray_modelpool_requests_total" in scraped.text
    assert scraped.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    with requests.Session() as anonymous:
        refused = anonymous.get(f"{cluster.url}/custom-metrics")
        assert refused.status_code == 401 and "ray_modelpool" not in refused.text
        assert anonymous.get(f"{cluster.url}/metrics").status_code == 404, "the default path is free again"


def test_the_pidfile_names_the_running_gcs_server(cluster, turned):
    import os
    import stat

    import psutil

    path = pidfile_of(cluster)
    pid = int(path.read_text())
    assert psutil.Process(pid).name() == "gcs_server", "without --block: the Ray head's GCS server"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    again = cluster.cli("start", "--pidfile", str(path), check=False)
    assert again.returncode == 1 and again.stderr.strip() == again.stderr.strip().splitlines()[0]
    assert f"{path} names process {pid}, which is running" in again.stderr


def test_a_trickling_body_gets_408_while_other_requests_are_answered(cluster, http, turned):
    import select

    parts = urlsplit(cluster.url)
    head = (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"{AUTHORIZATION}\r\nContent-Length: 4000\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as slow:
        slow.sendall(head + b'{"inputs": [')
        began = time.monotonic()
        answered = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW))
        assert answered.status_code == 200, "a trickling client must not hold up the others"
        while time.monotonic() - began < 15 and not select.select([slow], [], [], 0.5)[0]:
            slow.sendall(b" ")  # a byte every half second: alive, but 4,000 bytes would take half an hour
        waited = time.monotonic() - began
        answer = b""
        while not answer.rstrip().endswith(b"}") and (chunk := slow.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"field":"body"' in answer.replace(b" ", b"")
    assert 2 <= waited < 10, f"answered after {waited:.1f} s with --body-timeout-s 2"


def test_tokens_stay_out_of_serve_status_and_debug_logs(cluster, http, turned):
    import glob
    import json
    import os

    from modelpool.management.serve_state import serve_details

    http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW))
    status = json.dumps(serve_details())
    assert INFERENCE_TOKEN not in status and cluster.token not in status
    time.sleep(1.5)  # replicas flush their buffered logs every second
    leaked = [path for path in glob.glob("/tmp/ray/session_latest/logs/**/*", recursive=True)
              if os.path.isfile(path) and INFERENCE_TOKEN.encode() in open(path, "rb").read()]
    assert not leaked, "DEBUG logging must not write the inference token"


def test_single_threaded_serves_one_request_at_a_time_unbatched(cluster, turned):
    config = deployment_config("model:iris:1")
    assert config["max_ongoing_requests"] == 1

    session_headers = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}

    def call(_: int) -> requests.Response:
        with requests.Session() as session:
            return session.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW), headers=session_headers,
                                timeout=60)

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


def test_stop_removes_the_pidfile(cluster, turned):
    """Last (it stops the package's cluster; the fixture's own stop then finds nothing to do). `stop` is not
    given --pidfile: the cluster state recorded it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    assert pidfile_of(cluster).exists()
    assert cluster.cli("stop", check=False).returncode == 0
    assert not pidfile_of(cluster).exists()
