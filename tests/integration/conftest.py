"""One real local Ray cluster for the integration package, started like a user would.

Package-scoped, so it is stopped before tests/multinode runs: those tests start clusters of their own
(with `ray stop` in their start commands, as a user's would) and need the machine to themselves.

``modelpool start`` runs as a subprocess with a private home directory and free ports; the test
process joins the same Ray cluster to inspect and reconfigure it. ``modelpool stop`` at the end must
leave no Ray or haproxy process behind, and the fixture checks that it did.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import requests

from modelpool.cluster.net import free_port
from tests.cluster_home import ManagementAccess
from tests.otlp_receiver import OtlpReceiver
from tests.s3server import S3_ENV

pytestmark = pytest.mark.integration

MODELPOOL = [sys.executable, "-m", "modelpool.cli"]


@dataclass
class RunningCluster(ManagementAccess):
    url: str
    home: Path
    address: str
    env: dict
    metrics_url: str = ""
    grpc_target: str = ""
    traces: Optional[OtlpReceiver] = None  # the OTLP receiver the cluster's spans go to (it runs with --tracing)
    start_output: str = ""  # what `modelpool start` printed

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*MODELPOOL, *args], env=self.env, capture_output=True, text=True, check=check, timeout=300)


@pytest.fixture(scope="package")
def traces() -> OtlpReceiver:
    """A real OTLP/HTTP receiver, up before the cluster and down after it: the package's cluster traces every
    request to it (--tracing at ratio 1), so the tracing tests read what a collector would get."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
def cluster(tmp_path_factory, traces) -> RunningCluster:
    home = tmp_path_factory.mktemp("modelpool-home")
    http_port, ray_port, metrics_port = free_port(), free_port(), free_port()
    grpc_port, grpc_ingress_port, serve_http_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MODELPOOL_HOME": str(home),
        "MODELPOOL_HTTP_PORT": str(http_port),
        "MODELPOOL_RAY_PORT": str(ray_port),
        "MODELPOOL_MAX_BODY_BYTES": str(256 * 1024),
        "MODELPOOL_REPLICA_NUM_CPUS": "0.1",
        "MODELPOOL_METRICS_PORT": str(metrics_port),
        "MODELPOOL_GRPC_PORT": str(grpc_port),
        "MODELPOOL_GRPC_INGRESS_PORT": str(grpc_ingress_port),
        "MODELPOOL_SERVE_HTTP_PORT": str(serve_http_port),
        "MODELPOOL_TRACING": "true",
        "MODELPOOL_OTLP_ENDPOINT": traces.endpoint,
        "MODELPOOL_TRACE_SAMPLE_RATIO": "1",
        "RAY_metrics_report_interval_ms": "1000",  # Ray exports metrics every 10 s by default: too slow to wait for
        # A stopping replica stays reachable this long so load balancers can drop it (Serve's default: 30 s). Here
        # the only one is Serve's own HAProxy, which drops it within a second or two of the reload (and retries a
        # refused connection on another server); 30 s made every unregister and scale-down hold its app DELETING,
        # and the tests that wait for one, half a minute.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        **S3_ENV,  # node credentials, as a cloud node has them: the S3 tests' object stores need them in every worker
    }
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([*MODELPOOL, "start"], env=env, capture_output=True, text=True, timeout=400)
    running = RunningCluster(url=f"http://127.0.0.1:{http_port}", home=home, address=f"127.0.0.1:{ray_port}", env=env,
                             metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                             grpc_target=f"127.0.0.1:{grpc_port}", traces=traces, start_output=started.stdout)
    if started.returncode != 0:
        running.cli("stop", check=False)
        pytest.fail(f"modelpool start failed:\n{started.stdout}\n{started.stderr}")
    assert f"serving on {running.url}" in started.stdout
    try:
        yield running
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        from ray.serve import context

        context._set_global_client(None)  # it holds this cluster's controller; later tests join other clusters
        stopped = running.cli("stop", check=False)
        assert stopped.returncode == 0, stopped.stderr
        from modelpool.cluster.runtime import haproxy_processes, ray_processes

        assert not haproxy_processes(), "modelpool stop left haproxy running"
        assert not ray_processes(), "modelpool stop left Ray processes running"


@pytest.fixture(scope="package")
def ray_client(cluster):
    """The test process joined to the cluster, for inspecting and reconfiguring Serve."""
    from modelpool.cluster.runtime import connect

    connect(cluster.address)
    return cluster


@pytest.fixture(scope="package")
def fragile_model(cluster, tmp_path_factory) -> str:
    """One model with replicas of its own that raises on negative readings, shared by the tests that need a failing
    model (a registration and a replica start each, ~10 s, once instead of once per module). Left registered: the
    package's cluster goes at the end, and test_zzz_server_settings checks it comes back after its restart."""
    from tests.integration.handler_models import FRAGILE_HANDLER, register_handler_model

    with requests.Session() as admin:
        admin.headers.update(cluster.auth)
        registered = register_handler_model(cluster, admin, tmp_path_factory.mktemp("fragile"), "fragile",
                                            FRAGILE_HANDLER, initial_workers=1)
    assert registered.status_code == 200, registered.text
    return "fragile"


@pytest.fixture()
def http() -> requests.Session:
    with requests.Session() as session:
        yield session


@pytest.fixture()
def admin(cluster) -> requests.Session:
    """A session that carries the management token."""
    with requests.Session() as session:
        session.headers.update(cluster.auth)
        yield session
