"""The client's persistent session against the real cluster: one TCP connection carries many calls."""
from __future__ import annotations

import asyncio
import os
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


@pytest.fixture(autouse=True)
def settled_ingress(ray_client):
    """Earlier tests' unregisters delete applications; Serve then reloads its HAProxy, whose old process
    closes idle keep-alive connections (README: differences). Measure the client, not that: start once
    Serve has no application deploying or deleting, and the reload that follows has had time to land."""
    import time

    from ray import serve

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {str(getattr(app.status, "value", app.status)) for app in serve.status().applications.values()}
        if states <= {"RUNNING"}:
            break
        time.sleep(0.5)
    time.sleep(3)


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
