"""The asyncio client against the same tiny real HTTP server as the sync client's tests.

A real server (fake_modelpool.py) so the tests see what goes over the wire, including which TCP
connection carried each request. pytest-asyncio is not installed: each ``async def`` test runs in
its own event loop through :func:`in_event_loop` (asyncio.run).
"""
from __future__ import annotations

import asyncio
import functools
import json
import socket
from typing import Any, Awaitable, Callable, Optional

import httpx
import numpy as np
import pytest

from modelpool import __version__
from modelpool.async_client import (AsyncBatch, AsyncClient, AsyncService, BadRequest, BatchResults, Conflict,
                                    ModelpoolError, NotFound, RowResult, Unauthorized, resolve_token)
from modelpool.client import error_for, error_from
from tests.unit.fake_modelpool import (TOKEN, FakeModelpool, client_sockets_to, iris_frame,  # noqa: F401
                                       no_token_env_fixture, server_fixture)  # (fixtures)

ROW = [[5.1, 3.5, 1.4, 0.2]]


def in_event_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """An ``async def`` test run by asyncio.run; pytest still passes fixtures by name."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


@pytest.fixture()
def client(server: FakeModelpool) -> AsyncClient:
    return AsyncClient(server.url, token=TOKEN, timeout=10)


def last(server: FakeModelpool) -> tuple[str, str, dict, Any]:
    """Method, path, query and JSON body of the latest request the server saw."""
    seen = server.seen[-1]
    return seen.method, seen.path, seen.query, seen.body


# ------------------------------------------------------------------------------------------ models
@in_event_loop
async def test_model_calls_send_mms_parameters_and_return_the_json(server, client):
    registered = await client.register_model("y-1.zip", model_name="y", initial_workers=1, batch_size=8,
                                             max_batch_delay=2.5, synchronous=True)
    assert registered == {"status": 'Model "y" registered'}
    assert last(server) == ("POST", "/models", {"url": "y-1.zip", "model_name": "y", "initial_workers": "1",
                                                "batch_size": "8", "max_batch_delay": "2.5", "synchronous": "true"},
                            None)

    described = await client.describe_model("y")
    assert [(d["modelName"], d["modelVersion"]) for d in described] == [("y", "1")]
    assert await client.describe_model("y", "1") == described and last(server)[:2] == ("GET", "/models/y/1")

    scaled = await client.scale_model("y", "1", min_worker=1, max_worker=3, synchronous=True)
    assert scaled == {"status": "Worker scaled"}
    assert last(server)[:3] == ("PUT", "/models/y/1", {"min_worker": "1", "max_worker": "3", "synchronous": "true"})
    assert await client.scale_model("y", batch_size=16, max_batch_delay=2) == {"status": "Worker updated"}  # a 202
    assert last(server)[1:3] == ("/models/y", {"synchronous": "false", "batch_size": "16", "max_batch_delay": "2"})

    default = await client.set_default("y", "1")
    assert default == {"status": 'Default version successfully updated for model "y" to "1"'}
    assert last(server)[:2] == ("PUT", "/models/y/1/set-default")
    assert await client.unregister_model("y", "1") == {"status": 'Model "y" unregistered'}
    assert last(server)[:2] == ("DELETE", "/models/y/1")
    with pytest.raises(NotFound):
        await client.describe_model("y")


@in_event_loop
async def test_names_are_one_path_segment(server, client):
    with pytest.raises(NotFound, match="'a/b' is not registered"):
        await client.describe_model("a/b", "1")
    assert last(server)[1] == "/models/a%2Fb/1"


@in_event_loop
async def test_list_models_follows_next_page_token_over_three_pages(server, client):
    for name in ("a", "b", "c", "d"):
        await client.register_model(f"{name}-1.zip")
    models = await client.list_models(limit=2)
    assert [m["modelName"] for m in models] == ["a", "b", "c", "d", "x"]
    assert models[0] == {"modelName": "a", "modelUrl": "a-1.zip"}
    assert [p.query for p in server.requests_to("/models", "GET")] == [
        {"limit": "2"}, {"limit": "2", "next_page_token": "b"}, {"limit": "2", "next_page_token": "d"}]


@in_event_loop
async def test_services_pools_and_ping(server, client):
    assert await client.ping() is True
    assert await client.list_services() == [{"name": "x", "version": "1", "pool": "generic", "state": "Running",
                                             "isDefault": True}]
    created = await client.create_or_update_service_pool("x", "1", 2, 4)
    assert created == {"status": 'Pool for "x" version "1" set to 2..4 replicas'}
    assert last(server) == ("PUT", "/pools/x/1", {}, {"initial_pool_size": 2, "max_pool_size": 4})
    status = await client.get_service_pool_status("x", "1")
    assert status == [{"computeNodeEndpoint": "127.0.0.1", "status": "Success", "errors": []}]
    assert last(server)[:2] == ("GET", "/pools/x/1")
    assert (await client.list_services())[0]["pool"] == "dedicated"
    for _ in range(2):  # deleting again is harmless
        assert (await client.delete_service_pool("x", "1"))["status"].endswith("served by the generic pool")
        assert last(server)[:2] == ("DELETE", "/pools/x/1")
    assert (await client.get_service_pool_status("x", "1"))[0]["status"] == "NotFound"


@in_event_loop
async def test_ping_is_false_when_nothing_answers():
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert await AsyncClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=2).ping() is False


# ------------------------------------------------------------------------------------------ errors
@in_event_loop
async def test_errors_are_typed_and_carry_the_server_message_and_field(server, client):
    with pytest.raises(Conflict) as conflict:
        await client.register_model("x-1.zip", model_name="x")
    assert (conflict.value.status, conflict.value.field) == (409, "model_name")
    assert conflict.value.message == "model 'x' version '1' is already registered; unregister it first"

    with pytest.raises(NotFound) as missing:
        await client.describe_model("nope")
    assert (missing.value.status, missing.value.field, missing.value.message) == (
        404, "model_name", "model 'nope' is not registered")
    with pytest.raises(NotFound) as version:
        await client.get_service("x", "9")
    assert version.value.field == "version"

    with pytest.raises(BadRequest) as bad:
        await client.create_or_update_service_pool("x", "1", initial_pool_size=4, max_pool_size=2)
    assert (bad.value.status, bad.value.field) == (400, "initial_pool_size")
    assert "must not exceed max_pool_size" in bad.value.message and "initial_pool_size" in str(bad.value)

    with pytest.raises(Unauthorized) as denied:
        await AsyncClient(server.url, token="wrong").list_services()
    assert (denied.value.status, denied.value.field) == (401, "authorization")
    assert "management token" in denied.value.message

    assert all(isinstance(e.value, ModelpoolError) for e in (conflict, missing, bad, denied))
    assert not client_sockets_to(server)  # a failed call closes its connection too


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


# ------------------------------------------------------------------------------------------ sessions and token
async def _twenty_calls(client: AsyncClient, after_each: Callable[[], None] = lambda: None) -> None:
    """Management, inference and batch calls: every kind must ride the same connection pool."""
    svc = await client.get_service("x", "1")
    after_each()
    batch = svc.batch(iris_frame(), parallel_count=2)
    calls: list[Callable[[], Awaitable[Any]]] = [batch.start]
    calls += [client.list_services, functools.partial(svc.predict, ROW)] * 5
    calls += [batch.state, batch.cancel, functools.partial(client.describe_model, "x"),
              functools.partial(client.get_service_pool_status, "x", "1"), svc.list_batch_executions,
              batch.results, client.list_models, client.ping]
    for call in calls:
        await call()
        after_each()


@in_event_loop
async def test_inside_async_with_twenty_calls_share_one_connection(server, client):
    async with client as c:
        await _twenty_calls(c)
        assert len(client_sockets_to(server)) == 1
    assert not client_sockets_to(server), "leaving the async with block must close its connection"
    assert len(server.seen) == 20
    assert len(server.connections) == 1
    assert {s.port for s in server.seen} == {server.connections[0]}


@in_event_loop
async def test_outside_async_with_each_call_has_its_own_connection_closed_after_it(server, client):
    def no_connection_left() -> None:
        assert not client_sockets_to(server), "a call outside an async with block must close its connection"

    await _twenty_calls(client, after_each=no_connection_left)
    assert len(server.seen) == 20
    assert len(server.connections) == 20 and len(set(server.connections)) == 20
    assert [s.port for s in server.seen] == server.connections


@in_event_loop
async def test_nested_async_with_keeps_the_pool_until_the_outer_block_ends(server, client):
    async with client:
        async with client:
            await client.list_services()
        await client.list_services()  # still the outer block's connection
        assert len(client_sockets_to(server)) == 1
    assert not client_sockets_to(server)
    assert len(server.connections) == 1 and len(server.seen) == 2
    await client.list_services()  # the block is over: a connection of its own
    assert len(server.connections) == 2 and not client_sockets_to(server)


@in_event_loop
async def test_concurrent_calls_inside_async_with_share_the_pool(server, client):
    rows = [[[1.0 + i, 2.0, 3.0, 4.0]] for i in range(10)]
    async with client as c:
        svc = await c.get_service("x", "1")
        answers = await asyncio.gather(*(svc.predict(row) for row in rows))
        assert 1 <= len(client_sockets_to(server)) <= 10
    assert answers == [[int(sum(row[0]) > 12)] for row in rows]
    assert not client_sockets_to(server)
    assert len(server.seen) == 11 and 1 <= len(server.connections) <= 10
    assert {s.port for s in server.seen} == set(server.connections)  # pooled: no request opened a spare


@in_event_loop
async def test_token_and_user_agent_are_sent_on_every_call(server, client):
    async with client as c:
        await _twenty_calls(c)
    await _twenty_calls(client)
    management = [s for s in server.seen if s.path != "/ping"]
    assert len(management) == 38
    assert {s.authorization for s in management} == {f"Bearer {TOKEN}"}
    assert {s.user_agent for s in server.seen} == {f"modelpool-client/{__version__}"}
    assert TOKEN not in repr(client)


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
async def test_token_resolution_is_the_sync_clients(server, no_token_env, tmp_path):
    assert resolve_token() is None
    with pytest.raises(Unauthorized):
        await AsyncClient(server.url).list_services()
    assert server.seen[-1].authorization is None

    home = tmp_path / "mp-home"
    home.mkdir()
    (home / "management_token").write_text(TOKEN + "\n")
    no_token_env.setenv("MODELPOOL_HOME", str(home))
    assert (await AsyncClient(server.url).list_services())[0]["name"] == "x"
    assert server.seen[-1].authorization == f"Bearer {TOKEN}"

    no_token_env.setenv("MODELPOOL_MANAGEMENT_TOKEN", "from-env")
    assert AsyncClient(server.url).token == "from-env"
    assert AsyncClient(server.url, token="explicit").token == "explicit"


# ------------------------------------------------------------------------------------------ services
@in_event_loop
async def test_get_service_resolves_the_default_version(server, client):
    svc = await client.get_service("x")
    assert isinstance(svc, AsyncService) and (svc.name, svc.version) == ("x", "1")
    assert last(server)[:2] == ("GET", "/models/x")
    assert repr(svc) == "AsyncService(name='x', version='1')"


@in_event_loop
async def test_predict_sends_instances_and_returns_predictions(server, client):
    svc = await client.get_service("x", "1")
    two = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]
    assert await svc.predict(two) == [0, 1]
    assert last(server) == ("POST", "/v2/models/x/versions/1/predict", {}, {"instances": two})
    for rows in (iris_frame(2), np.array(two)):  # arrays and DataFrames get an array back
        answer = await svc.predict(rows)
        assert isinstance(answer, np.ndarray) and answer.tolist() == [0, 1]
        assert last(server)[3] == {"instances": two}


@in_event_loop
async def test_infer_builds_a_v2_request_and_reshapes_outputs(server, client):
    svc = await client.get_service("x", "1")
    answer = await svc.infer(iris_frame(3))
    assert last(server)[:2] == ("POST", "/v2/models/x/versions/1/infer")
    assert last(server)[3] == {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                                           "data": iris_frame(3).to_numpy().ravel().tolist()}]}
    assert set(answer) == {"predict", "predict_proba"}
    assert answer["predict"].dtype == np.int64 and answer["predict"].tolist() == [0, 1, 2]
    assert answer["predict_proba"].shape == (3, 2) and answer["predict_proba"].dtype == np.float64
    only = await svc.infer([5.1, 3.5, 1.4, 0.2], outputs=["predict_proba"])
    sent = last(server)[3]
    assert sent["inputs"][0]["shape"] == [1, 4] and sent["outputs"] == [{"name": "predict_proba"}]
    assert list(only) == ["predict_proba"] and only["predict_proba"].tolist() == [[0.25, 0.75]]


# ------------------------------------------------------------------------------------------ batches
@in_event_loop
async def test_batch_workflow(server, client, tmp_path):
    svc = await client.get_service("x", "1")
    batch = svc.batch(iris_frame(3), parallel_count=2)
    assert isinstance(batch, AsyncBatch) and batch.execution_id is None
    assert await batch.start() is batch and batch.execution_id is not None
    assert last(server)[:2] == ("POST", "/batches")
    assert last(server)[3] == {"service": "x", "version": "1", "parallel_count": 2,
                               "records": iris_frame(3).to_dict("records")}
    assert "records" not in repr(batch) and batch.execution_id in repr(batch)

    assert await batch.state() == "Running"  # the fake scores one row per poll
    early = await batch.results(show_partial_results=False)  # not Complete yet: no rows
    assert isinstance(early, BatchResults) and early.state == "Running" and list(early) == []
    partial = await batch.results()
    assert last(server)[2] == {"show_partial_results": "true", "offset": "0", "limit": "1000"}
    assert partial.state == "Complete" and [row.index for row in partial] == [0, 1, 2]
    assert (partial.total_rows, partial.completed_rows, partial.execution(2)) == (3, 3, [2])
    assert [r["index"] for r in partial["results"]] == [0, 1, 2] and partial["nextOffset"] is None  # read as the dict
    assert (await batch.results(show_partial_results=False)).results == partial.results
    assert [s.query.get("show_partial_results") for s in server.seen[-2:]] == ["false", "true"]

    row = await batch.execution(1)
    assert isinstance(row, RowResult) and row == [1] and (row.index, row.outputs) == (1, {"predict": 1})
    assert row["status"] == "Complete"  # read as the dict it was
    assert last(server)[1] == f"/batches/{batch.execution_id}/results/1"
    assert await batch.list_artifacts(1) == ["report.json"]
    assert json.loads(await batch.artifact(1, "report.json")) == {"index": 1, "class": 1}
    assert last(server)[1] == f"/batches/{batch.execution_id}/results/1/artifacts/report.json"
    written = await batch.download(1, dest=tmp_path / "out")
    assert written == [tmp_path / "out" / "report.json"]
    assert json.loads(written[0].read_text()) == {"index": 1, "class": 1}
    assert await batch.download(0, "report.json", destination=tmp_path / "out") == written
    assert json.loads(written[0].read_text())["index"] == 0
    with pytest.raises(TypeError, match="destination or dest"):
        await batch.download(0, destination=tmp_path, dest=tmp_path)

    assert await svc.list_batch_executions() == [batch.execution_id]
    assert last(server)[:3] == ("GET", "/batches", {"service": "x", "version": "1"})
    assert await svc.get_batch_executions() == [batch.execution_id]
    again = svc.get_batch(batch.execution_id)
    assert await again.state() == "Complete"
    assert await again.cancel() is again and again.last_state == "Complete"
    assert last(server)[:2] == ("DELETE", f"/batches/{batch.execution_id}")
    with pytest.raises(NotFound) as row:
        await batch.execution(7)
    assert (row.value.field, row.value.message) == ("index", "row 7 is not scored yet")


@in_event_loop
async def test_results_follow_the_pages_in_index_order(server, client):
    batch = await (await client.get_service("x", "1")).batch([[1, 2, 3, 4]] * 5).start()
    await batch.wait(poll=0)
    before = len(server.seen)
    answer = await batch.results(page_size=2)
    assert [row.index for row in answer] == [0, 1, 2, 3, 4]
    assert (answer.state, answer["nextOffset"]) == ("Complete", None)
    assert [(s.query["offset"], s.query["limit"]) for s in server.seen[before:]] == [("0", "2"), ("2", "2"), ("4", "2")]


@in_event_loop
async def test_cancel_stops_a_running_batch(server, client):
    batch = await (await client.get_service("x", "1")).batch([[1, 2, 3, 4]] * 5, parallelCount=3).start()
    assert last(server)[3]["parallel_count"] == 3  # ML Server's spelling of parallel_count
    assert await batch.cancel() is batch and batch.last_state == "Cancelled"
    assert last(server)[:2] == ("DELETE", f"/batches/{batch.execution_id}")
    assert await batch.state() == "Cancelled"


@in_event_loop
async def test_unstarted_batches_say_so(server, client):
    svc = AsyncService(client, "x", "1")
    with pytest.raises(RuntimeError, match="already started"):
        await svc.get_batch("0" * 32).start()
    with pytest.raises(RuntimeError, match="not started"):
        await svc.batch([[1.0]]).state()
    assert server.seen == []  # refused before asking the server


@pytest.fixture()
def scored(server, client):
    """A three-row job, complete, with row 2 listing a name that escapes the download directory."""
    async def start() -> str:
        batch = await (await client.get_service("x", "1")).batch(iris_frame(3)).start()
        await batch.wait(poll=0)
        return batch.execution_id
    return AsyncService(client, "x", "1").get_batch(asyncio.run(start()))


@pytest.mark.parametrize("name", ["../x", "..", "/etc/passwd", "sub/dir.json", "a\\b", ".hidden", ""])
@in_event_loop
async def test_download_refuses_names_that_would_leave_dest(server, scored, tmp_path, name):
    before = len(server.seen)
    with pytest.raises(ValueError, match="refusing artifact"):
        await scored.download(1, name, dest=tmp_path / "dest")
    assert len(server.seen) == before  # refused before asking the server
    assert list(tmp_path.iterdir()) == []


@in_event_loop
async def test_download_refuses_a_listed_name_that_escapes_and_writes_nothing(scored, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="escape.txt"):
        await scored.download(2, dest=dest)  # the server lists "report.json" and "../escape.txt"
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


@in_event_loop
async def test_download_refuses_a_symlink_in_dest_pointing_outside(scored, tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside.json"
    dest.mkdir()
    (dest / "report.json").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        await scored.download(1, dest=dest)
    assert not outside.exists()


@pytest.mark.parametrize("awaited", [False, True], ids=["function", "coroutine-function"])
@in_event_loop
async def test_wait_reports_progress_and_stops_on_complete(server, client, awaited):
    batch = await (await client.get_service("x", "1")).batch(iris_frame(3)).start()
    seen: list[tuple[int, Optional[int]]] = []

    async def record_later(done: int, total: Optional[int]) -> None:
        await asyncio.sleep(0)
        seen.append((done, total))

    progress = record_later if awaited else lambda done, total: seen.append((done, total))
    final = await batch.wait(timeout=30, poll=0.01, progress=progress)
    assert (final["state"], final["completedItems"], seen) == ("Complete", 3, [(1, 3), (2, 3), (3, 3)])
    assert "results" not in final  # polling stays cheap: rows come from results()
    polls = server.requests_to(f"/batches/{batch.execution_id}", "GET")
    assert [p.query for p in polls] == [{"show_partial_results": "false"}] * 3
    assert server.seen[-1] is polls[-1]  # nothing after Complete


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


@in_event_loop
async def test_wait_times_out_with_the_last_state(server, client):
    batch = await (await client.get_service("x", "1")).batch(iris_frame(3)).start()
    with pytest.raises(TimeoutError, match="still Running"):
        await batch.wait(timeout=0, poll=0)


@in_event_loop
async def test_the_async_client_retries_a_lost_register_with_one_idempotency_key(server):
    server.ingress_failures = 2
    async with AsyncClient(server.url, token=TOKEN) as client:
        await client.register_model("y-1.zip")
        with pytest.raises(NotFound):
            await client.describe_model("nope")
    tries = server.requests_to("/models", "POST")
    assert len(tries) == 3 and len({t.idempotency_key for t in tries}) == 1 and tries[0].idempotency_key
    assert len(server.requests_to("/models/nope")) == 1


@in_event_loop
async def test_the_async_client_retries_a_lost_batch_start_with_one_idempotency_key(server):
    async with AsyncClient(server.url, token=TOKEN) as client:
        service = await client.get_service("x", "1")
        server.ingress_failures = 1  # the management replica is down when the batch is sent
        batch = await service.batch([[1.0, 2.0, 3.0, 4.0]]).start()
    tries = server.requests_to("/batches", "POST")
    assert batch.execution_id and len(tries) == 2
    assert tries[0].idempotency_key and tries[1].idempotency_key == tries[0].idempotency_key
