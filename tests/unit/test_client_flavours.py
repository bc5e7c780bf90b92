"""What only one of the two clients has (a caller's own requests.Session or httpx.AsyncClient, coroutines
running side by side), and the pure pieces both share (error mapping, what counts as an ingress blip).

Everything the clients have in common is tested once for both in test_clients.py. pytest-asyncio is not
installed: each ``async def`` test runs in its own event loop through :func:`in_event_loop` (asyncio.run).
"""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Awaitable, Callable, Optional

import httpx
import pytest
import requests

from modelpool import __version__
from modelpool.async_client import AsyncClient
from modelpool.client import Client, error_for, error_from
from modelpool.errors import BadRequest, ModelpoolError, NotFound
from tests.unit.both_clients import iris_frame
from tests.unit.management_app import (TOKEN, Proxy, client_sockets_to,  # noqa: F401
                                       gate_fixture, management_fixture, model_store,
                                       server_fixture)  # (fixtures)


def in_event_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """An ``async def`` test run by asyncio.run; pytest still passes fixtures by name."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


@pytest.fixture()
def client(server: Proxy) -> AsyncClient:
    return AsyncClient(server.url, token=TOKEN, timeout=10)


# ------------------------------------------------------------------------------------------ the sync client
def test_a_callers_session_is_used_and_left_open(server):
    with requests.Session() as session:
        client = Client(server.url, token=TOKEN, session=session)
        for _ in range(3):
            client.list_services()
        with client:
            client.list_services()
        client.list_services()  # still open: the caller owns it
        assert "Authorization" not in session.headers
    assert len(server.connections) == 1
    assert {s.authorization for s in server.seen} == {f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------------------------ the asyncio client
@in_event_loop
async def test_a_callers_httpx_client_is_used_and_left_open(server):
    async with httpx.AsyncClient() as http:
        client = AsyncClient(server.url, token=TOKEN, client=http)
        for _ in range(3):
            await client.list_services()
        async with client:
            await client.list_services()
        await client.list_services()  # still open: the caller owns it
        assert not http.is_closed
        assert "Authorization" not in http.headers
    assert len(server.connections) == 1
    assert {s.authorization for s in server.seen} == {f"Bearer {TOKEN}"}
    assert {s.user_agent for s in server.seen} == {f"modelpool-client/{__version__}"}


@in_event_loop
async def test_concurrent_calls_inside_async_with_share_the_pool(management, server, client):
    setosa, virginica = [5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]
    rows = [[[v + i / 100 for v in (setosa if i % 2 == 0 else virginica)]] for i in range(10)]
    async with client as c:
        svc = await c.get_service("x", "1")
        answers = await asyncio.gather(*(svc.predict(row) for row in rows))
        assert 1 <= len(client_sockets_to(management)) <= 10
    assert not client_sockets_to(management)
    assert len(server.seen) == 11 and 1 <= len(server.connections) <= 10
    assert {s.port for s in server.seen} == set(server.connections)  # pooled: no request opened a spare
    assert answers == [[0], [2]] * 5  # each answer is its own row's: setosa, virginica, ...


@in_event_loop
async def test_methods_are_awaitables_a_task_can_run(server, client):
    task = asyncio.create_task(client.list_services())  # a coroutine, not just an awaitable
    assert (await task)[0]["name"] == "x"


@in_event_loop
async def test_wait_awaits_a_coroutine_progress_callback(server, client, gate):
    gate.hold()  # the first poll sees the job unscored; the callback then lets it be scored
    batch = await (await client.get_service("x", "1")).batch(iris_frame(3)).start()
    seen: list[tuple[int, Optional[int]]] = []

    async def record_later(done: int, total: Optional[int]) -> None:
        await asyncio.sleep(0)
        seen.append((done, total))
        gate.release()

    final = await batch.wait(timeout=30, poll=0.01, progress=record_later)
    assert (final["state"], final["completedItems"]) == ("Complete", 3)
    assert seen[0] == (0, 3) and seen[-1] == (3, 3) and set(seen) == {(0, 3), (3, 3)}  # awaited after every poll


@in_event_loop
async def test_wait_sleeps_without_blocking_the_event_loop(server, client):
    batch = await (await client.get_service("x", "1")).batch(iris_frame(3)).start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    other = asyncio.create_task(ticker())
    assert (await batch.wait(timeout=30, poll=0.02))["state"] == "Complete"
    other.cancel()
    assert ticks >= 2, "other tasks must run while wait sleeps between polls"


# ------------------------------------------------------------------------------------------ shared, pure
def test_one_pure_error_mapping_serves_both_clients():
    assert error_for is not error_from  # the sync wrapper stays, over the shared function
    found = error_from(404, b'{"error": "no model", "field": "model_name"}', "Not Found")
    assert (type(found), found.message, found.field) == (NotFound, "no model", "model_name")
    detail = error_from(422, '{"detail": "limit: must be positive"}')
    assert (type(detail), detail.message, detail.field) == (BadRequest, "limit: must be positive", None)
    assert type(error_from(413, b'{"error": "too big", "field": "body"}')) is BadRequest
    html = error_from(503, b"<html>no server is available</html>\n", "Service Unavailable")
    assert (type(html), html.status, html.message) == (ModelpoolError, 503, "<html>no server is available</html>")
    assert error_from(502, b"", "Bad Gateway").message == "Bad Gateway"
    assert error_from(500, b"\xff not utf-8", None).message == "\ufffd not utf-8"
    assert error_from(500, "", None).message == "request failed"
    assert error_from(400, b'["not", "an", "object"]', None).message == '["not", "an", "object"]'


def test_what_counts_as_an_ingress_blip():
    from modelpool.client import is_transient, retry_delay

    assert is_transient(500, "Internal Server Error") and is_transient(503, b"")
    assert not is_transient(500, '{"error": "the handler raised", "field": null}')
    assert not is_transient(404, "Not Found") and not is_transient(409, "x")
    assert [retry_delay(n) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_the_package_is_the_public_face_and_stays_light():
    """``from modelpool import Client`` works; ``import modelpool`` alone pulls in no HTTP library, numpy or Ray."""
    import subprocess
    import sys

    code = ("import sys, modelpool; heavy = [m for m in ('requests', 'httpx', 'numpy', 'ray') if m in sys.modules]; "
            "from modelpool import AsyncClient, Client, NotFound, __all__; import modelpool.client as c; "
            "print(heavy, c.Client is Client, c.NotFound is NotFound, 'ray' in sys.modules, sorted(__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("[] True True False ['AsyncClient', 'BadRequest', 'Client', 'Conflict', 'ModelpoolError', "
                   "'NotFound', 'Overloaded', 'Unauthorized', '__version__']")
