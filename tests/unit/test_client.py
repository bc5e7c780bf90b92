"""The Python client against a tiny real HTTP server that imitates the management and batch API.

A real server (not mocks) so the tests see what goes over the wire: paths, query strings, JSON
bodies, the Authorization header of every request, and which TCP connection carried it. The server
lives in fake_modelpool.py, shared with the asyncio client's tests.
"""
from __future__ import annotations

import json
import socket
from typing import Optional

import numpy as np
import pytest
import requests

from modelpool.client import (Batch, BadRequest, BatchResults, Client, Conflict, ModelpoolError, NotFound, RowResult,
                              Service, Unauthorized, resolve_token)
from tests.unit.fake_modelpool import (TOKEN, FakeModelpool, iris_frame,  # noqa: F401 (fixtures)
                                       no_token_env_fixture, server_fixture)
from tests.unit.fake_modelpool import client_sockets_to as _client_sockets_to


@pytest.fixture()
def client(server: FakeModelpool) -> Client:
    return Client(server.url, token=TOKEN, timeout=10)


# ------------------------------------------------------------------------------------------ models
def test_model_calls_send_mms_parameters_and_return_the_json(server, client):
    assert client.register_model("y-1.zip", model_name="y", initial_workers=1, batch_size=8, max_batch_delay=2.5,
                                 synchronous=True) == {"status": 'Model "y" registered'}
    sent = server.seen[-1]
    assert (sent.method, sent.path) == ("POST", "/models")
    assert sent.query == {"url": "y-1.zip", "model_name": "y", "initial_workers": "1", "batch_size": "8",
                          "max_batch_delay": "2.5", "synchronous": "true"}

    described = client.describe_model("y")
    assert [(d["modelName"], d["modelVersion"]) for d in described] == [("y", "1")]
    assert client.describe_model("y", "1") == described
    assert server.seen[-1].path == "/models/y/1"

    assert client.scale_model("y", "1", min_worker=1, max_worker=3, synchronous=True) == {"status": "Worker scaled"}
    assert (server.seen[-1].method, server.seen[-1].path) == ("PUT", "/models/y/1")
    assert server.seen[-1].query == {"min_worker": "1", "max_worker": "3", "synchronous": "true"}
    assert client.scale_model("y", batch_size=16, max_batch_delay=2) == {"status": "Worker updated"}  # a 202
    assert (server.seen[-1].path, server.seen[-1].query) == (
        "/models/y", {"synchronous": "false", "batch_size": "16", "max_batch_delay": "2"})

    assert client.set_default("y", "1") == {"status": 'Default version successfully updated for model "y" to "1"'}
    assert (server.seen[-1].method, server.seen[-1].path) == ("PUT", "/models/y/1/set-default")
    assert client.unregister_model("y", "1") == {"status": 'Model "y" unregistered'}
    assert (server.seen[-1].method, server.seen[-1].path) == ("DELETE", "/models/y/1")
    with pytest.raises(NotFound):
        client.describe_model("y")


def test_list_models_follows_next_page_token_over_three_pages(server, client):
    for name in ("a", "b", "c", "d"):
        client.register_model(f"{name}-1.zip")
    models = client.list_models(limit=2)
    assert [m["modelName"] for m in models] == ["a", "b", "c", "d", "x"]
    assert models[0] == {"modelName": "a", "modelUrl": "a-1.zip"}
    pages = server.requests_to("/models", "GET")
    assert [p.query for p in pages] == [{"limit": "2"}, {"limit": "2", "next_page_token": "b"},
                                        {"limit": "2", "next_page_token": "d"}]


def test_services_pools_and_ping(server, client):
    assert client.ping() is True
    assert client.list_services() == [{"name": "x", "version": "1", "pool": "generic", "state": "Running",
                                       "isDefault": True}]
    assert client.create_or_update_service_pool("x", "1", 2, 4) == {"status": 'Pool for "x" version "1" set to 2..4 replicas'}
    assert server.seen[-1].body == {"initial_pool_size": 2, "max_pool_size": 4}
    assert client.get_service_pool_status("x", "1") == [{"computeNodeEndpoint": "127.0.0.1", "status": "Success",
                                                         "errors": []}]
    assert client.list_services()[0]["pool"] == "dedicated"
    assert client.delete_service_pool("x", "1")["status"].endswith("served by the generic pool")
    assert client.delete_service_pool("x", "1")["status"].endswith("served by the generic pool")  # harmless again
    assert client.get_service_pool_status("x", "1")[0]["status"] == "NotFound"
    assert [(s.method, s.path) for s in server.seen[-3:]] == [("DELETE", "/pools/x/1"), ("DELETE", "/pools/x/1"),
                                                              ("GET", "/pools/x/1")]


def test_ping_is_false_when_nothing_answers():
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert Client(f"http://127.0.0.1:{port}", token=TOKEN, timeout=2).ping() is False


# ------------------------------------------------------------------------------------------ errors
def test_errors_are_typed_and_carry_the_server_message_and_field(server, client):
    with pytest.raises(Conflict) as conflict:
        client.register_model("x-1.zip", model_name="x")
    assert (conflict.value.status, conflict.value.field) == (409, "model_name")
    assert conflict.value.message == "model 'x' version '1' is already registered; unregister it first"

    with pytest.raises(NotFound) as missing:
        client.describe_model("nope")
    assert (missing.value.status, missing.value.field, missing.value.message) == (
        404, "model_name", "model 'nope' is not registered")
    with pytest.raises(NotFound) as version:
        client.get_service("x", "9")
    assert version.value.field == "version"

    with pytest.raises(BadRequest) as bad:
        client.create_or_update_service_pool("x", "1", initial_pool_size=4, max_pool_size=2)
    assert (bad.value.status, bad.value.field) == (400, "initial_pool_size")
    assert "must not exceed max_pool_size" in bad.value.message and "initial_pool_size" in str(bad.value)

    with pytest.raises(Unauthorized) as denied:
        Client(server.url, token="wrong").list_services()
    assert (denied.value.status, denied.value.field) == (401, "authorization")
    assert "management token" in denied.value.message

    for error in (conflict.value, missing.value, bad.value, denied.value):
        assert isinstance(error, ModelpoolError)
    # the errors' tracebacks still reference each call's session: its connection must be closed anyway
    assert not _client_sockets_to(server)


# ------------------------------------------------------------------------------------------ sessions and token
def _twenty_calls(client: Client) -> None:
    """Management, inference and batch calls: every kind must ride the same session."""
    svc = client.get_service("x", "1")
    batch = svc.batch(iris_frame(), parallel_count=2).start()
    for _ in range(5):
        client.list_services()
        svc.predict([[5.1, 3.5, 1.4, 0.2]])
    batch.state
    batch.cancel()
    client.describe_model("x")
    client.get_service_pool_status("x", "1")
    svc.get_batch_executions()
    batch.results()
    client.list_models()
    client.ping()


def test_inside_with_twenty_calls_share_one_connection(server, client):
    with client as c:
        _twenty_calls(c)
        assert len(_client_sockets_to(server)) == 1
    assert not _client_sockets_to(server), "leaving the with block must close its connection"
    assert len(server.seen) == 20
    assert len(server.connections) == 1
    assert {s.port for s in server.seen} == {server.connections[0]}


def test_outside_with_each_call_has_its_own_connection(server, client):
    _twenty_calls(client)
    assert not _client_sockets_to(server), "a call outside a with block must close its connection"
    assert len(server.seen) == 20
    assert len(server.connections) == 20 and len(set(server.connections)) == 20
    assert [s.port for s in server.seen] == server.connections


def test_token_is_sent_on_every_management_call(server, client):
    with client as c:
        _twenty_calls(c)
    _twenty_calls(client)
    management = [s for s in server.seen if s.path != "/ping"]
    assert len(management) == 38
    assert {s.authorization for s in management} == {f"Bearer {TOKEN}"}


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


def test_token_from_env_beats_the_token_file(server, no_token_env, tmp_path):
    no_token_env.setenv("MODELPOOL_MANAGEMENT_TOKEN", TOKEN)
    (tmp_path / "home" / ".modelpool").mkdir(parents=True)
    (tmp_path / "home" / ".modelpool" / "management_token").write_text("from-file\n")
    client = Client(server.url)
    assert client.token == TOKEN
    assert client.list_services()[0]["name"] == "x"
    assert server.seen[-1].authorization == f"Bearer {TOKEN}"
    assert Client(server.url, token="explicit").token == "explicit"


def test_token_from_the_home_token_file(server, no_token_env, tmp_path):
    (tmp_path / "home" / ".modelpool").mkdir(parents=True)
    (tmp_path / "home" / ".modelpool" / "management_token").write_text(TOKEN + "\n")
    assert Client(server.url).list_services()[0]["name"] == "x"
    assert server.seen[-1].authorization == f"Bearer {TOKEN}"


def test_token_from_modelpool_home(server, no_token_env, tmp_path):
    home = tmp_path / "mp-home"
    home.mkdir()
    (home / "management_token").write_text(TOKEN)
    no_token_env.setenv("MODELPOOL_HOME", str(home))
    assert Client(server.url).list_services()[0]["name"] == "x"
    assert server.seen[-1].authorization == f"Bearer {TOKEN}"


def test_no_token_anywhere_is_unauthorized(server, no_token_env):
    assert resolve_token() is None
    with pytest.raises(Unauthorized):
        Client(server.url).list_services()
    assert server.seen[-1].authorization is None


# ------------------------------------------------------------------------------------------ services
def test_get_service_resolves_the_default_version(server, client):
    svc = client.get_service("x")
    assert isinstance(svc, Service) and (svc.name, svc.version) == ("x", "1")
    assert server.seen[-1].path == "/models/x"


def test_predict_sends_instances_and_returns_predictions(server, client):
    svc = client.get_service("x", "1")
    assert svc.predict([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]) == [0, 1]
    sent = server.seen[-1]
    assert (sent.method, sent.path) == ("POST", "/v2/models/x/versions/1/predict")
    assert sent.body == {"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}
    from_frame = svc.predict(iris_frame(2))
    assert isinstance(from_frame, np.ndarray) and from_frame.tolist() == [0, 1]
    assert server.seen[-1].body == sent.body


def test_infer_builds_a_v2_request_and_reshapes_outputs(server, client):
    svc = client.get_service("x", "1")
    answer = svc.infer(iris_frame(3))
    sent = server.seen[-1]
    assert sent.path == "/v2/models/x/versions/1/infer"
    assert sent.body == {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                                     "data": iris_frame(3).to_numpy().ravel().tolist()}]}
    assert set(answer) == {"predict", "predict_proba"}
    assert answer["predict"].dtype == np.int64 and answer["predict"].tolist() == [0, 1, 2]
    assert answer["predict_proba"].shape == (3, 2) and answer["predict_proba"].dtype == np.float64
    only = svc.infer([5.1, 3.5, 1.4, 0.2], outputs=["predict_proba"])
    assert server.seen[-1].body["inputs"][0]["shape"] == [1, 4]
    assert server.seen[-1].body["outputs"] == [{"name": "predict_proba"}]
    assert list(only) == ["predict_proba"] and only["predict_proba"].tolist() == [[0.25, 0.75]]


# ------------------------------------------------------------------------------------------ batches
def test_batch_workflow(server, client, tmp_path):
    svc = client.get_service("x", "1")
    batch = svc.batch(iris_frame(3), parallel_count=2)
    assert isinstance(batch, Batch) and batch.execution_id is None
    assert batch.start() is batch and batch.execution_id is not None
    sent = server.requests_to("/batches", "POST")[-1].body
    assert sent == {"service": "x", "version": "1", "parallel_count": 2,
                    "records": iris_frame(3).to_dict("records")}
    assert sent["records"][0] == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}

    assert batch.state == "Running"  # the fake scores one row per poll
    early = batch.results(show_partial_results=False)  # not Complete yet: no rows
    assert isinstance(early, BatchResults) and early.state == "Running" and early.results == [] and list(early) == []
    assert (early.completed_rows, early.total_rows) == (2, 3)
    partial = batch.results()
    assert server.seen[-1].query == {"show_partial_results": "true", "offset": "0", "limit": "1000"}
    assert partial.state == "Complete" and [row.index for row in partial] == [0, 1, 2]
    assert (partial.total_rows, partial.completed_rows, partial.failed_rows) == (3, 3, 0)
    assert (partial.total_item_count, partial.completed_item_count, partial.execution_id) == (3, 3, batch.execution_id)
    assert partial.execution(2) == [2] and partial.execution(2).outputs == {"predict": 2}  # no request
    assert partial["state"] == "Complete" and [r["index"] for r in partial["results"]] == [0, 1, 2]  # read as the dict
    assert partial.get("nextOffset") is None and partial.get("nothing", "default") == "default"
    assert partial.to_dict()["results"][1] == {"index": 1, "status": "Complete", "outputs": {"predict": 1}}
    assert batch.results(show_partial_results=False).results == partial.results
    assert [s.query.get("show_partial_results") for s in server.seen[-2:]] == ["false", "true"]

    row = batch.execution(1)
    assert isinstance(row, RowResult) and row == [1] and np.asarray(row).tolist() == [1]  # the outputs as an array
    assert (row.index, row.status, row.outputs, row.error) == (1, "Complete", {"predict": 1}, None)
    assert row.output("predict") == 1
    assert row["outputs"] == {"predict": 1} and row.get("error") is None  # read as the dict it was
    assert batch.list_artifacts(1) == ["report.json"]
    assert json.loads(batch.artifact(1, "report.json")) == {"index": 1, "class": 1}
    written = batch.download(1, dest=tmp_path / "out")
    assert written == [tmp_path / "out" / "report.json"]
    assert json.loads(written[0].read_text()) == {"index": 1, "class": 1}
    assert batch.download(0, "report.json", destination=tmp_path / "out") == [tmp_path / "out" / "report.json"]
    assert json.loads(written[0].read_text())["index"] == 0
    assert batch.download(2, file_name="report.json", dest=tmp_path / "out") == written  # new and earlier names mix
    assert json.loads(written[0].read_text())["index"] == 2

    assert svc.list_batch_executions() == [batch.execution_id]
    assert server.seen[-1].query == {"service": "x", "version": "1"}
    assert svc.get_batch_executions() == [batch.execution_id]
    again = svc.get_batch(batch.execution_id)
    assert again.state == "Complete"
    assert again.cancel() is again and again.last_state == "Complete"  # a finished job stays as it ended
    assert server.seen[-1].method == "DELETE"
    with pytest.raises(NotFound) as row:
        batch.execution(7)
    assert row.value.field == "index"


def test_results_follow_the_pages_in_index_order(server, client):
    batch = client.get_service("x", "1").batch([[1, 2, 3, 4]] * 5).start()
    batch.wait(poll=0)
    before = len(server.seen)
    answer = batch.results(page_size=2)
    assert [row.index for row in answer.results] == [0, 1, 2, 3, 4]
    assert (answer.state, answer["nextOffset"]) == ("Complete", None)
    assert [(s.query["offset"], s.query["limit"]) for s in server.seen[before:]] == [("0", "2"), ("2", "2"), ("4", "2")]


def test_cancel_stops_a_running_batch(server, client):
    batch = client.get_service("x", "1").batch([[1, 2, 3, 4]] * 5).start()
    assert batch.last_state == "Pending"
    assert batch.cancel() is batch and batch.last_state == "Cancelled"
    assert (server.seen[-1].method, server.seen[-1].path) == ("DELETE", f"/batches/{batch.execution_id}")
    assert batch.state == "Cancelled"


def test_batch_takes_ml_servers_spellings_and_refuses_both_names_at_once(server, client, tmp_path):
    svc = client.get_service("x", "1")
    batch = svc.batch({"hp": [110, 93], "wt": [2.62, 2.32]}, parallelCount=4).start()  # the SDK's dict of columns
    assert server.requests_to("/batches", "POST")[-1].body["parallel_count"] == 4
    assert server.requests_to("/batches", "POST")[-1].body["records"] == [{"hp": 110, "wt": 2.62}, {"hp": 93, "wt": 2.32}]
    before = len(server.seen)
    with pytest.raises(TypeError, match="file_name or name"):
        batch.download(0, "report.json", name="report.json")
    with pytest.raises(TypeError, match="destination or dest"):
        batch.download(0, destination=tmp_path, dest=tmp_path)
    with pytest.raises(TypeError, match="needs the artifact's file_name"):
        batch.artifact(0)
    assert len(server.seen) == before  # refused before asking the server


def test_batch_records_from_a_tsv_file_keep_the_header_names(server, client, tmp_path):
    tsv = tmp_path / "cars.tsv"
    tsv.write_text("hp\twt\n110\t2.62\n93\t2.32\n")
    client.get_service("x", "1").batch(tsv).start()
    assert server.requests_to("/batches", "POST")[-1].body["records"] == [{"hp": 110, "wt": 2.62}, {"hp": 93, "wt": 2.32}]


def test_unstarted_batches_say_so(client):
    batch = Service(client, "x", "1").get_batch("0" * 32)
    with pytest.raises(RuntimeError, match="already started"):
        batch.start()
    with pytest.raises(RuntimeError, match="not started"):
        Service(client, "x", "1").batch([[1.0]]).state


@pytest.mark.parametrize("name", ["../x", "..", "/etc/passwd", "sub/dir.json", "a\\b", ".hidden", ""])
def test_download_refuses_names_that_would_leave_dest(server, client, tmp_path, name):
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    batch.wait(poll=0)
    dest = tmp_path / "dest"
    before = len(server.seen)
    with pytest.raises(ValueError, match="refusing artifact"):
        batch.download(1, name, dest=dest)
    assert len(server.seen) == before  # refused before asking the server
    assert list(tmp_path.iterdir()) == []


def test_download_refuses_a_listed_name_that_escapes_and_writes_nothing(server, client, tmp_path):
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    batch.wait(poll=0)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="escape.txt"):
        batch.download(2, dest=dest)  # the server lists "report.json" and "../escape.txt"
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


def test_download_refuses_a_symlink_in_dest_pointing_outside(server, client, tmp_path):
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    batch.wait(poll=0)
    dest, outside = tmp_path / "dest", tmp_path / "outside.json"
    dest.mkdir()
    (dest / "report.json").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        batch.download(1, dest=dest)
    assert not outside.exists()


def test_wait_reports_progress_and_stops_on_complete(server, client):
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    seen: list[tuple[int, Optional[int]]] = []
    final = batch.wait(timeout=30, poll=0.01, progress=lambda done, total: seen.append((done, total)))
    assert final["state"] == "Complete" and final["completedItems"] == 3
    assert "results" not in final  # polling stays cheap: rows come from results()
    assert seen == [(1, 3), (2, 3), (3, 3)]
    polls = server.requests_to(f"/batches/{batch.execution_id}", "GET")
    assert len(polls) == 3 and all(p.query == {"show_partial_results": "false"} for p in polls)
    assert server.seen[-1] is polls[-1]  # nothing after Complete


def test_wait_times_out_with_the_last_state(server, client):
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    with pytest.raises(TimeoutError, match="still Running"):
        batch.wait(timeout=0, poll=0)


# ------------------------------------------------------------------------------------------ retries
def test_a_register_lost_at_the_ingress_is_retried_with_the_same_idempotency_key(server):
    server.ingress_failures = 2  # the management replica is down: HAProxy answers for it
    with Client(server.url, token=TOKEN) as client:
        assert client.register_model("y-1.zip")["status"] == 'Model "y" registered'
    tries = server.requests_to("/models", "POST")
    assert len(tries) == 3
    assert tries[0].idempotency_key and {t.idempotency_key for t in tries} == {tries[0].idempotency_key}


def test_a_batch_start_lost_at_the_ingress_is_retried_with_one_idempotency_key(server):
    with Client(server.url, token=TOKEN) as client:
        service = client.get_service("x", "1")
        server.ingress_failures = 1  # the management replica is down when the batch is sent
        batch = service.batch([[1.0, 2.0, 3.0, 4.0]]).start()
    tries = server.requests_to("/batches", "POST")
    assert batch.execution_id and len(tries) == 2
    assert tries[0].idempotency_key and tries[1].idempotency_key == tries[0].idempotency_key


def test_reads_and_scale_are_retried_but_modelpools_own_errors_are_not(server):
    server.ingress_failures = 1
    with Client(server.url, token=TOKEN) as client:
        assert client.describe_model("x")[0]["modelName"] == "x"
        server.ingress_failures = 1
        client.scale_model("x", "1", min_worker=1, max_worker=2)
        with pytest.raises(NotFound):
            client.describe_model("nope")
    assert len(server.requests_to("/models/nope")) == 1, "a JSON error from modelpool is an answer, not a blip"


def test_retries_stop_after_retry_for_and_the_ingress_error_surfaces(server):
    server.ingress_failures = 1000
    with Client(server.url, token=TOKEN, retry_for=0.6) as client:
        with pytest.raises(ModelpoolError) as raised:
            client.describe_model("x")
    assert raised.value.status == 500 and 2 <= len(server.requests_to("/models/x")) <= 4


def test_calls_that_are_not_safe_to_repeat_are_not_retried(server):
    server.ingress_failures = 1
    with Client(server.url, token=TOKEN) as client:
        with pytest.raises(ModelpoolError):
            client.unregister_model("x", "1")
    assert len(server.requests_to("/models/x/1", "DELETE")) == 1


def test_what_counts_as_an_ingress_blip():
    from modelpool.client import is_transient, retry_delay

    assert is_transient(500, "Internal Server Error") and is_transient(503, b"")
    assert not is_transient(500, '{"error": "the handler raised", "field": null}')
    assert not is_transient(404, "Not Found") and not is_transient(409, "x")
    assert [retry_delay(n) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_a_refused_connection_is_not_retried():
    """Nothing listening (wrong URL, stopped cluster) fails at once; only a dropped connection is retried."""
    import time as clock

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = clock.monotonic()
    with pytest.raises(requests.ConnectionError):
        Client(f"http://127.0.0.1:{port}", token=TOKEN).describe_model("x")
    assert clock.monotonic() - started < 2
