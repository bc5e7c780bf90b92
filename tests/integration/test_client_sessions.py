"""The client's persistent session against the real cluster: one TCP connection carries many calls."""
from __future__ import annotations

import asyncio
import os
import re
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from modelpool.async_client import AsyncClient
from modelpool.client import Client

pytestmark = pytest.mark.integration


def connections_to(url: str) -> set[tuple[str, int]]:
    """This process's open TCP connections to the cluster's ingress (local address, port)."""
    port = urlsplit(url).port
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}


def safe_name(name: str) -> str:
    """How Serve names an application's backend and a replica's server in its HAProxy config (its get_safe_name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("#", "-").replace("/", "."))


def routed_replicas(config: str) -> dict[str, set[str]]:
    """HTTP backend -> the replica servers it routes to, from a Serve HAProxy config."""
    backends: dict[str, set[str]] = {}
    current = None
    for line in config.splitlines():
        if line.startswith(("backend ", "frontend ")):
            name = line.split()[1]
            current = backends.setdefault(name, set()) if name.startswith("http-") else None
        elif current is not None and line.strip().startswith("server SERVE_REPLICA"):
            current.add(line.split()[1])
    return backends


def ingress_settled() -> bool:
    """No HAProxy reload is under way or due: one Serve HAProxy process runs, every application is RUNNING,
    and the config routes each application's backend to exactly its running replicas."""
    from ray import serve

    from modelpool.cluster.runtime import haproxy_processes
    from modelpool.management.serve_state import serve_details, status_name

    try:
        commands = [p.cmdline() for p in haproxy_processes()]
    except psutil.Error:
        return False
    serve_proxies = [c for c in commands if any("haproxy-serve" in part for part in c)]
    if len(serve_proxies) != 1:  # none yet, or a reload's old process still soft-stopping
        return False
    if any(status_name(app.status) != "RUNNING" for app in serve.status().applications.values()):
        return False  # deploying or deleting: its routes are about to change (Serve's details lag behind this)
    config = Path(serve_proxies[0][serve_proxies[0].index("-f") + 1]).read_text()
    expected = {}
    for name, app in serve_details().get("applications", {}).items():
        if app.get("route_prefix"):
            expected[f"http-{safe_name(name)}"] = {
                safe_name(replica["actor_name"]) for deployment in app.get("deployments", {}).values()
                for replica in deployment.get("replicas", []) if status_name(replica.get("state")) == "RUNNING"}
    return routed_replicas(config) == expected


@pytest.fixture(autouse=True)
def settled_ingress(ray_client):
    """Earlier tests' unregisters delete applications; Serve then reloads its HAProxy, whose old process
    closes idle keep-alive connections (README: differences). Measure the client, not that: start once no
    reload is under way or due (``ingress_settled``, twice in a row, a moment apart)."""
    deadline = time.monotonic() + 60
    settled_in_a_row = 0
    while time.monotonic() < deadline:
        settled_in_a_row = settled_in_a_row + 1 if ingress_settled() else 0
        if settled_in_a_row == 2:
            break
        time.sleep(0.2)
    if settled_in_a_row < 2:
        warnings.warn("Serve's HAProxy did not settle in 60 s; the connection counts may include its reloads")


def test_one_connection_serves_every_call_of_a_with_block(cluster):
    before = connections_to(cluster.url)
    seen: set = set()
    with Client(cluster.url, token=cluster.token) as client:
        for _ in range(10):
            client.describe_model("iris", "1")
            client.list_models()
            client.get_service("iris", "1").predict([[5.1, 3.5, 1.4, 0.2]])
            seen |= connections_to(cluster.url) - before
    assert len(seen) == 1, f"30 calls should ride one connection, saw {len(seen)}"
    assert connections_to(cluster.url) - before == set(), "the block closes its connection"


def test_outside_a_block_no_connection_stays_open(cluster):
    before = connections_to(cluster.url)
    client = Client(cluster.url, token=cluster.token)
    for _ in range(5):
        client.describe_model("iris", "1")
        assert connections_to(cluster.url) - before == set()


def test_the_async_client_rides_one_connection_too(cluster):
    async def calls() -> set:
        before = connections_to(cluster.url)
        seen: set = set()
        async with AsyncClient(cluster.url, token=cluster.token) as client:
            for _ in range(10):
                await client.describe_model("iris", "1")
                await client.list_models()
                seen |= connections_to(cluster.url) - before
        return seen

    assert len(asyncio.run(calls())) == 1
