"""Two Ray nodes on one machine, started the way cluster.yaml starts them, for the fault tests.

A head (``ray start --head``) and a worker raylet joined with ``ray start --address``, then
``modelpool start --address`` as cluster.yaml's head does. Both raylets share the machine's IP, so
Serve runs one HTTP ingress on the head (``--proxy-location HeadOnly``): two HAProxies would fight
over the same port. Everything is stopped with ``ray stop --force`` at the end, the way a node
would be, and the caller checks that no Ray or haproxy process is left.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import psutil
import requests

from modelpool.cluster.net import free_port
from modelpool.cluster.runtime import (SERVE_ENV, ensure_ray_token, haproxy_processes, ray_executable, ray_processes,
                                       stop_local_head)
from tests.cluster_home import ManagementAccess

MODELPOOL = [sys.executable, "-m", "modelpool.cli"]
WORKER_RESOURCE = "worker_node"  # a custom resource that marks the joined node


@dataclass
class TwoNodeCluster(ManagementAccess):
    url: str
    home: Path
    address: str
    env: dict
    worker_metrics_port: int

    def start_worker_node(self) -> None:
        """Join one more raylet (2 CPUs) to the head, as cluster.yaml's worker_start_ray_commands do."""
        run([ray_executable(), "start", f"--address={self.address}", "--num-cpus=2",
             f"--metrics-export-port={self.worker_metrics_port}", "--disable-usage-stats",
             f"--resources={json.dumps({WORKER_RESOURCE: 1})}"], self.env)

    def node_ids(self) -> tuple[str, Optional[str]]:
        """(head node id, alive worker node id or None), from Ray's own node table."""
        import ray

        head, worker = None, None
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            if WORKER_RESOURCE in node["Resources"]:
                worker = node["NodeID"]
            else:
                head = node["NodeID"]
        assert head, ray.nodes()
        return head, worker

    def worker_raylet(self) -> psutil.Process:
        """The raylet process of the joined node (the one started with the worker resource)."""
        for process in ray_processes():
            try:
                if process.name() == "raylet" and WORKER_RESOURCE in " ".join(process.cmdline()):
                    return process
            except psutil.NoSuchProcess:
                continue
        raise AssertionError("no worker raylet is running")


def run(command: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stdout}\n{result.stderr}")
    return result


@contextmanager
def two_node_cluster(home: Path, extra_env: Optional[dict] = None,
                     start_worker: bool = True) -> Iterator[TwoNodeCluster]:
    """Head + worker raylet + modelpool; always torn down, and checked to leave nothing running. ``start_worker``
    False: the head alone, until the caller joins the worker (``start_worker_node``)."""
    http_port, ray_port = free_port(), free_port()
    env = {
        **os.environ, **SERVE_ENV,
        "MODELPOOL_HOME": str(home),
        "MODELPOOL_HTTP_PORT": str(http_port),
        "MODELPOOL_PROXY_LOCATION": "HeadOnly",
        "MODELPOOL_REPLICA_NUM_CPUS": "0.1",
        # Serve's HTTP path only, no front. Serve places replicas with Ray's SPREAD, a round robin over the nodes
        # that every actor placement advances: with the front's replica placed too (pinned to the head), both iris
        # replicas landed on the head in each run seen (3 of 3), where the spread test needs one per node. The front's own
        # faults (a killed replica's port, redispatch) are tested in tests/unit/test_front_http.py and the gRPC
        # replica kill of tests/integration/test_v2_clients.py.
        "MODELPOOL_GRPC_WORKERS": "0",
        "MODELPOOL_HTTP_FRONT": "false",
        **(extra_env or {}),
    }
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{ray_port}"
    cluster = TwoNodeCluster(url=f"http://127.0.0.1:{http_port}", home=home, address=address, env=env,
                             worker_metrics_port=free_port())
    try:
        ensure_ray_token(env)  # as `modelpool start` does: `ray start` makes none on a fresh machine
        run([ray_executable(), "start", "--head", f"--port={ray_port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", f"--metrics-export-port={free_port()}"], env)
        if start_worker:
            cluster.start_worker_node()
        run([*MODELPOOL, "start", "--address", address], env, timeout=400)
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        from ray.serve import context

        context._set_global_client(None)
        # Not `modelpool stop`: on a joined cluster it shuts Serve down first, which after a node loss takes ~40 s
        # (seen in every CI run); the whole cluster is ours and goes anyway, as `modelpool stop` ends a local head.
        stop_local_head()  # `ray stop --force` and the haproxys, as `modelpool stop` ends a local head
        leftovers = wait_until(lambda: not ray_processes() and not haproxy_processes(), timeout_s=20)
        assert leftovers, f"left running: {ray_processes() + haproxy_processes()}"


def wait_until(predicate: Callable[[], object], timeout_s: float = 60, step_s: float = 0.25):
    """Poll ``predicate`` until it is truthy or the time is up; return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step_s)


def post_ok(url: str, body: dict, headers: Optional[dict] = None, timeout: float = 10) -> bool:
    try:
        return requests.post(url, json=body, headers=headers, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def kill(process: psutil.Process) -> None:
    """SIGKILL, as the OOM killer or a lost machine would: no cleanup runs."""
    os.kill(process.pid, signal.SIGKILL)
