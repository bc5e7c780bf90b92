"""Both Python clients' batch jobs and sessions, one test body each, against the real management application.

The app runs in process over real HTTP (management_app.py), with the batch scheduler and its scoring
workers run on threads of this process (in_process_actors.py): a job is scored by the model's own
handler (``iris_report``, registered as ``x``: it writes a report.json per row) while the client
polls it. A test that must see a job unfinished holds scoring at ``actors.gate``. The ingress records
paths, query strings, JSON bodies, headers and which TCP connection carried each request. Each test
runs once per client (``flavour``).
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

import numpy as np
import pytest

from modelpool import __version__
from modelpool.batch_results import BatchResults, RowResult
from modelpool.errors import NotFound
from tests.unit.both_clients import Flavour, flavour_fixture, iris_frame  # noqa: F401 (a fixture)
from tests.unit.management_app import (TOKEN, Proxy, client_sockets_to,  # noqa: F401
                                       gate_fixture, management_fixture, model_store,
                                       server_fixture)  # (fixtures)

ROW = [[5.1, 3.5, 1.4, 0.2]]
ROWS = iris_frame(3).values.tolist()  # a setosa, then two virginica


@pytest.fixture()
def client(server: Proxy, flavour: Flavour) -> Any:
    return flavour.connect(server.url, token=TOKEN, timeout=10)


def last(server: Proxy) -> tuple[str, str, dict, Any]:
    """Method, path, query and JSON body of the latest request the server saw."""
    seen = server.seen[-1]
    return seen.method, seen.path, seen.query, seen.body


def report_of(row: Any, features: list[float]) -> dict:
    """The report.json iris_report writes for a scored row: the row's own input, class and confidence."""
    names = ["setosa", "versicolor", "virginica"]
    return {"features": features, "class": row.output("predict"), "class_name": names[row.output("predict")],
            "confidence": row.output("confidence")}


# ------------------------------------------------------------------------------------------ sessions
def twenty_calls(client: Any, after_each: Callable[[], None] = lambda: None) -> None:
    """Management, inference and batch calls: every kind must ride the same session."""
    svc = client.get_service("x", "1")
    after_each()
    batch = svc.batch(iris_frame(), parallel_count=2)
    calls: list[Callable[[], Any]] = [batch.start]
    calls += [client.list_services, lambda: svc.predict(ROW)] * 5
    calls += [lambda: batch.state, batch.cancel, lambda: client.describe_model("x"),
              lambda: client.get_service_pool_status("x", "1"), svc.get_batch_executions, batch.results,
              client.list_models, client.ping]
    for call in calls:
        call()
        after_each()


def test_inside_with_twenty_calls_share_one_connection(management, server, client):
    with client as c:
        twenty_calls(c)
        assert len(client_sockets_to(management)) == 1
    assert not client_sockets_to(management), "leaving the with block must close its connection"
    assert len(server.seen) == 20
    assert len(server.connections) == 1
    assert {s.port for s in server.seen} == {server.connections[0]}


def test_outside_with_each_call_has_its_own_connection_closed_after_it(management, server, client):
    def no_connection_left() -> None:
        assert not client_sockets_to(management), "a call outside a with block must close its connection"

    twenty_calls(client, after_each=no_connection_left)
    assert len(server.seen) == 20
    assert len(server.connections) == 20 and len(set(server.connections)) == 20
    assert [s.port for s in server.seen] == server.connections


def test_nested_with_keeps_the_session_until_the_outer_block_ends(management, server, client):
    with client:
        with client:
            client.list_services()
        client.list_services()  # still the outer block's connection
        assert len(client_sockets_to(management)) == 1
    assert not client_sockets_to(management)
    assert len(server.connections) == 1 and len(server.seen) == 2
    client.list_services()  # the block is over: a connection of its own
    assert len(server.connections) == 2 and not client_sockets_to(management)


def test_token_and_user_agent_are_sent_on_every_call(server, client):
    with client as c:
        twenty_calls(c)
    twenty_calls(client)
    management = [s for s in server.seen if s.path != "/ping"]
    assert len(management) == 38
    assert {s.authorization for s in management} == {f"Bearer {TOKEN}"}
    assert {s.user_agent for s in server.seen} == {f"modelpool-client/{__version__}"}
    assert TOKEN not in repr(client)


# ------------------------------------------------------------------------------------------ batches
def test_batch_workflow(server, client, flavour, gate, tmp_path):
    svc = client.get_service("x", "1")
    batch = svc.batch(iris_frame(3), parallel_count=2)
    assert isinstance(batch, flavour.Batch) and batch.execution_id is None
    gate.hold()  # scoring waits: the job is read while it runs
    assert batch.start() is batch and batch.execution_id is not None
    assert last(server)[:2] == ("POST", "/batches")
    sent = server.requests_to("/batches", "POST")[-1].body
    assert sent == {"service": "x", "version": "1", "parallel_count": 2, "records": iris_frame(3).to_dict("records")}
    assert sent["records"][0] == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert "records" not in repr(batch) and batch.execution_id in repr(batch)

    gate.wait_until_held()
    assert batch.state == "Running"
    early = batch.results(show_partial_results=False)  # not Complete yet: no rows
    assert isinstance(early, BatchResults) and early.state == "Running" and early.results == [] and list(early) == []
    assert (early.completed_rows, early.total_rows) == (0, 3)
    running = batch.results()  # the rows scored so far: none yet
    assert last(server)[2] == {"show_partial_results": "true", "offset": "0", "limit": "1000"}
    assert (running.state, running.results, running.get("nextOffset")) == ("Running", [], None)
    gate.release()
    assert batch.wait(poll=0.01)["state"] == "Complete"
    partial = batch.results()
    assert last(server)[2] == {"show_partial_results": "true", "offset": "0", "limit": "1000"}
    assert partial.state == "Complete" and [row.index for row in partial] == [0, 1, 2]
    assert (partial.total_rows, partial.completed_rows, partial.failed_rows) == (3, 3, 0)
    assert (partial.total_item_count, partial.completed_item_count, partial.execution_id) == (3, 3, batch.execution_id)
    third = partial.execution(2)  # no request
    assert third == [2, third.output("confidence")] and 0.5 < third.output("confidence") < 1  # predict, confidence
    assert partial["state"] == "Complete" and [r["index"] for r in partial["results"]] == [0, 1, 2]  # read as the dict
    assert partial.get("nextOffset") is None and partial.get("nothing", "default") == "default"
    second = partial.to_dict()["results"][1]
    assert second == {"index": 1, "status": "Success", "outputs": {"predict": 2, "confidence": second["outputs"]["confidence"]}}
    assert batch.results(show_partial_results=False).results == partial.results
    assert [s.query.get("show_partial_results") for s in server.seen[-2:]] == ["false", "true"]

    row = batch.execution(1)
    assert isinstance(row, RowResult) and row == partial.execution(1) and np.asarray(row).tolist() == list(row)
    assert (row.index, row.status, row.outputs, row.error) == (1, "Success", second["outputs"], None)
    assert row.output("predict") == 2
    assert row["outputs"] == second["outputs"] and row["status"] == "Success" and row.get("error") is None  # the dict
    assert last(server)[1] == f"/batches/{batch.execution_id}/results/1"
    assert batch.list_artifacts(1) == ["report.json"]
    assert json.loads(batch.artifact(1, "report.json")) == report_of(row, ROWS[1])
    assert last(server)[1] == f"/batches/{batch.execution_id}/results/1/artifacts/report.json"
    written = batch.download(1, dest=tmp_path / "out")
    assert written == [tmp_path / "out" / "report.json"]
    assert json.loads(written[0].read_text()) == report_of(row, ROWS[1])
    assert batch.download(0, "report.json", destination=tmp_path / "out") == written
    assert json.loads(written[0].read_text())["features"] == ROWS[0]
    assert batch.download(2, file_name="report.json", dest=tmp_path / "out") == written  # new and earlier names mix
    assert json.loads(written[0].read_text())["features"] == ROWS[2]

    assert svc.list_batch_executions() == [batch.execution_id]
    assert last(server)[:3] == ("GET", "/batches", {"service": "x", "version": "1"})
    assert svc.get_batch_executions() == [batch.execution_id]
    again = svc.get_batch(batch.execution_id)
    assert again.state == "Complete"
    assert again.cancel() is again and again.last_state == "Complete"  # a finished job stays as it ended
    assert last(server)[:2] == ("DELETE", f"/batches/{batch.execution_id}")
    with pytest.raises(NotFound) as row:
        batch.execution(7)
    assert (row.value.field, row.value.message) == ("index", "row 7 does not exist; this job has rows 0 to 2")


def test_results_follow_the_pages_in_index_order_on_one_connection(server, client):
    batch = client.get_service("x", "1").batch([[1, 2, 3, 4]] * 5).start()
    batch.wait(poll=0.01)
    before = len(server.seen)
    answer = batch.results(page_size=2)
    assert [row.index for row in answer.results] == [0, 1, 2, 3, 4]
    assert (answer.state, answer["nextOffset"]) == ("Complete", None)
    pages = server.seen[before:]
    assert [(s.query["offset"], s.query["limit"]) for s in pages] == [("0", "2"), ("2", "2"), ("4", "2")]
    assert len({s.port for s in pages}) == 1, "the pages of one read ride one connection, even outside with"


def test_cancel_stops_a_running_batch(server, client, gate):
    gate.hold()
    batch = client.get_service("x", "1").batch([[1, 2, 3, 4]] * 5, parallelCount=3).start()
    assert last(server)[3]["parallel_count"] == 3  # ML Server's spelling of parallel_count
    assert batch.last_state == "Pending"
    gate.wait_until_held()
    assert batch.cancel() is batch and batch.last_state == "Cancelled"
    assert last(server)[:2] == ("DELETE", f"/batches/{batch.execution_id}")
    assert batch.state == "Cancelled"
    gate.wait_until_none_held()  # the scheduler saw the cancel: the partition held at the gate is dropped
    gate.release()
    final = batch.wait(poll=0.01)  # it never ran
    assert (final["state"], final["completedItems"]) == ("Cancelled", 0)


def test_a_cancel_answered_stays_even_when_the_scoring_partition_finishes(server, client, gate):
    """The last partition was already on a worker when the cancel came, and it finishes: the job stays Cancelled
    (its scored rows stay readable), as the cancel's answer said."""
    gate.hold()
    batch = client.get_service("x", "1").batch([[1, 2, 3, 4]] * 5, parallelCount=1).start()
    gate.wait_until_held()
    assert batch.cancel().last_state == "Cancelled"
    gate.release()  # before the scheduler looks again: the partition is scored and its part written
    final = batch.wait(poll=0.01)
    assert final["state"] == "Cancelled"
    time.sleep(0.6)  # past the scheduler's next look at its partitions
    assert batch.state == "Cancelled" and client.get_service("x", "1").list_batch_executions()


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


def test_unstarted_batches_say_so(server, client, flavour):
    svc = flavour.service(client, "x", "1")
    with pytest.raises(RuntimeError, match="already started"):
        svc.get_batch("0" * 32).start()
    with pytest.raises(RuntimeError, match="not started"):
        svc.batch([[1.0]]).state
    assert server.seen == []  # refused before asking the server


@pytest.fixture()
def scored(server, client) -> Any:
    """A three-row job, complete: each row has its report.json."""
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    batch.wait(poll=0.01)
    return batch


@pytest.mark.parametrize("name", ["../x", "..", "/etc/passwd", "sub/dir.json", "a\\b", ".hidden", ""])
def test_download_refuses_names_that_would_leave_dest(server, scored, tmp_path, name):
    before, downloads = len(server.seen), tmp_path / "downloads"  # tmp_path also holds the server's home
    downloads.mkdir()
    with pytest.raises(ValueError, match="refusing artifact"):
        scored.download(1, name, dest=downloads / "dest")
    assert len(server.seen) == before  # refused before asking the server
    assert list(downloads.iterdir()) == []


def test_download_refuses_a_listed_name_that_escapes_and_writes_nothing(server, scored, tmp_path):
    dest = tmp_path / "dest"
    listing = f"/batches/{scored.execution_id}/results/2/artifacts"
    server.forged[listing] = ["report.json", "../escape.txt"]  # a hostile server; the real one lists its files
    with pytest.raises(ValueError, match="escape.txt"):
        scored.download(2, dest=dest)
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()
    assert server.seen[-1].path == listing  # nothing fetched after the listing


def test_download_refuses_a_symlink_in_dest_pointing_outside(scored, tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside.json"
    dest.mkdir()
    (dest / "report.json").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        scored.download(1, dest=dest)
    assert not outside.exists()


def test_wait_reports_progress_and_stops_on_complete_on_one_connection(management, server, client, gate):
    gate.hold()  # the first poll sees the job unscored; the progress callback then lets it be scored
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    gate.wait_until_held()
    seen: list[tuple[int, Optional[int]]] = []

    def progress(done: int, total: Optional[int]) -> None:
        seen.append((done, total))
        gate.release()

    final = batch.wait(timeout=30, poll=0.01, progress=progress)
    assert (final["state"], final["completedItems"]) == ("Complete", 3)
    assert seen[0] == (0, 3) and seen[-1] == (3, 3) and set(seen) == {(0, 3), (3, 3)}  # one partition: 0, then all
    assert seen == sorted(seen), "progress never goes back"
    assert "results" not in final  # polling stays cheap: rows come from results()
    polls = server.requests_to(f"/batches/{batch.execution_id}", "GET")
    assert len(polls) == len(seen), "progress is reported after every poll"
    assert [p.query for p in polls] == [{"show_partial_results": "false"}] * len(polls)
    assert server.seen[-1] is polls[-1]  # nothing after Complete
    assert len({p.port for p in polls}) == 1, "every poll of one wait rides one connection, even outside with"
    assert not client_sockets_to(management), "and it is closed when wait returns"


def test_wait_times_out_with_the_last_state(server, client, gate):
    gate.hold()
    batch = client.get_service("x", "1").batch(iris_frame(3)).start()
    gate.wait_until_held()
    with pytest.raises(TimeoutError, match="still Running"):
        batch.wait(timeout=0, poll=0)


# ------------------------------------------------------------------------------------------ retries
def test_a_batch_start_lost_at_the_ingress_is_retried_with_one_idempotency_key(server, flavour):
    with flavour.connect(server.url, token=TOKEN) as client:
        service = client.get_service("x", "1")
        server.ingress_failures = 1  # the management replica is down when the batch is sent
        batch = service.batch([[1.0, 2.0, 3.0, 4.0]]).start()
    tries = server.requests_to("/batches", "POST")
    assert batch.execution_id and len(tries) == 2
    assert tries[0].idempotency_key and tries[1].idempotency_key == tries[0].idempotency_key
