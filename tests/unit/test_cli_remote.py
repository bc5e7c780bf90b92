"""The remote ``modelpool`` commands (models, pools, services, batches) against the real management application.

``main(argv)`` runs as a user would run the command, against the app served in process over real HTTP
(management_app.py; batch jobs scored on threads, in_process_actors.py), with model ``x`` version 1
registered (the iris_report example). The tests read what the user sees (stdout, stderr, the exit
code) and what went over the wire (the ingress records requests and connections).
"""
from __future__ import annotations

import io
import json
import socket
import threading
from typing import Any

import pytest

from modelpool.cli import main
from modelpool.client import DEFAULT_URL
from modelpool.management.params import RegisterParams, ScaleParams
from modelpool.remote import ProgressBar, default_url, read_csv, table
from tests.unit.in_process_actors import Gate
from tests.unit.management_app import (TOKEN, Proxy, RunningManagement, gate_fixture,  # noqa: F401
                                       management_fixture, model_store, server_fixture)  # (fixtures)

IRIS_CSV = "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.3,3.3,6.0,2.5\n5.8,2.7,5.1,1.9\n"


class FakeTTY(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No URL, token or cluster state from this machine may leak into a test."""
    for name in ("MODELPOOL_URL", "MODELPOOL_MANAGEMENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELPOOL_HOME", str(tmp_path / "home"))


def cli(server: Proxy, *args: str, token: str = TOKEN) -> int:
    return main([*args, "--url", server.url, "--token", token])


def out_json(capsys) -> Any:
    captured = capsys.readouterr()
    return json.loads(captured.out)  # the whole of stdout is one JSON document


def add_version(management: RunningManagement, url: str, name: str, **scale: int) -> None:
    """Register ``url`` as ``name`` (its archive's version) in process, then scale it (min_worker=...)."""
    status, answer = management.manager.register(RegisterParams(url=url, model_name=name))
    assert status == 200, answer
    if scale:
        version = url.rsplit("-", 1)[1].removesuffix(".zip")
        management.manager.scale(name, version, ScaleParams(**scale))


def without_memory(described: list[dict]) -> list[dict]:
    """A description without its workers' memory use, which is read live."""
    return [{**d, "workers": [{**w, "memoryUsage": None} for w in d["workers"]]} for d in described]


# ------------------------------------------------------------------------------------------ table and inputs
def test_table_aligns_columns_and_shows_none_as_dash():
    assert table(("NAME", "V", "URL"), [("iris", 1, "iris-1.zip"), ("x", None, "a")]).splitlines() == [
        "NAME  V  URL",
        "iris  1  iris-1.zip",
        "x     -  a",
    ]
    assert table(("A", "B"), []) == "A  B"


def test_read_csv_numbers_header_and_headerless(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("a,b,label\n1,2.5,cat\n3,,dog\n")
    assert read_csv(str(with_header)) == (["a", "b", "label"], [[1, 2.5, "cat"], [3, None, "dog"]])
    bare = tmp_path / "b.csv"
    bare.write_text("5.1,3.5\n6.3,3.3\n")
    assert read_csv(str(bare)) == (None, [[5.1, 3.5], [6.3, 3.3]])


# ------------------------------------------------------------------------------------------ models
def test_models_list_table_uses_one_connection(management, server, capsys):
    add_version(management, "iris-2.zip", "x", min_worker=1, max_worker=3)
    add_version(management, "iris-1.zip", "y")
    assert cli(server, "models", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "DEFAULT", "WORKERS(min/max)", "STATUS", "URL"]
    assert [line.split() for line in lines[1:]] == [["x", "1", "no", "0/0", "RUNNING", "iris_report-1.zip"],
                                                   ["x", "2", "yes", "1/3", "RUNNING", "iris-2.zip"],  # newest wins
                                                   ["y", "1", "yes", "0/0", "RUNNING", "iris-1.zip"]]
    assert lines[0].index("VERSION") == lines[1].index("1")  # aligned
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/models"), ("GET", "/services"),
                                                        ("GET", "/models/x/all"), ("GET", "/models/y/all")]
    assert len(server.connections) == 1, "one command, one keep-alive connection"
    assert {s.port for s in server.seen} == {server.connections[0]}


def test_models_list_json_is_the_servers_models(management, server, capsys):
    add_version(management, "iris-1.zip", "y")
    assert cli(server, "models", "list", "--json") == 0
    assert out_json(capsys) == [{"modelName": "x", "modelUrl": "iris_report-1.zip"},
                                {"modelName": "y", "modelUrl": "iris-1.zip"}]


def test_models_describe_json_and_table_with_workers(management, server, capsys):
    assert cli(server, "models", "describe", "x", "1", "--json") == 0
    assert out_json(capsys) == management.manager.describe("x", "1")
    assert server.seen[-1].path == "/models/x/1"

    management.manager.scale("x", "1", ScaleParams(min_worker=1, max_worker=2))  # one replica starts
    assert cli(server, "models", "describe", "x") == 0
    assert server.seen[-1].path == "/models/x"
    versions, workers = capsys.readouterr().out.split("\n\n")
    assert versions.splitlines()[0].split() == ["NAME", "VERSION", "DEFAULT", "POOL", "WORKERS(min/max)", "BATCH",
                                                "DELAY(ms)", "QUEUE", "HANDLER", "URL"]
    assert versions.splitlines()[1].split() == ["x", "1", "yes", "dedicated", "1/2", "64", "5.0", "100",
                                                "row_report:RowReport", "iris_report-1.zip"]
    assert workers.splitlines()[0].split() == ["VERSION", "WORKER", "STATUS", "NODE", "GPU", "MEMORY", "STARTED"]
    worker = management.manager.describe("x", "1")[0]["workers"][0]
    assert workers.splitlines()[1].split()[:5] == ["1", worker["id"], "READY", "127.0.0.1", "no"]
    assert workers.splitlines()[1].split()[6] == worker["startTime"]


def test_register_set_default_unregister(server, capsys):
    assert cli(server, "models", "register", "iris-1.zip", "--model-name", "y", "--handler", "sklearn",
               "--initial-workers", "1", "--batch-size", "8", "--max-batch-delay", "2.5", "--synchronous",
               "--response-timeout", "30", "--startup-timeout", "90") == 0
    assert capsys.readouterr().out == 'Model "y" Version: 1 registered with 1 initial workers\n'
    assert server.seen[-1].query == {"url": "iris-1.zip", "model_name": "y", "handler": "sklearn",
                                     "initial_workers": "1", "batch_size": "8", "max_batch_delay": "2.5",
                                     "synchronous": "true", "response_timeout": "30.0", "startup_timeout": "90.0"}
    assert cli(server, "models", "set-default", "y", "1", "--json") == 0
    assert out_json(capsys) == {"status": 'Default version successfully updated for model "y" to "1"'}
    assert cli(server, "models", "unregister", "y", "1") == 0
    assert capsys.readouterr().out == 'Model "y" unregistered\n'
    assert (server.seen[-1].method, server.seen[-1].path) == ("DELETE", "/models/y/1")


def test_scale_without_wait_is_asynchronous(server, capsys):
    assert cli(server, "models", "scale", "x", "1", "--min-worker", "1", "--max-worker", "2", "--batch-size", "16") == 0
    assert capsys.readouterr().out == "Processing worker updates...\n"
    assert server.seen[-1].query == {"min_worker": "1", "max_worker": "2", "batch_size": "16", "synchronous": "false"}
    assert len(server.seen) == 1


@pytest.fixture()
def replicas_start_one_by_one(management: RunningManagement) -> None:
    """Serve starts a version's replicas one after another: each read of its state finds one more RUNNING."""
    management.serve.gradual_start = True


def test_scale_wait_polls_describe_with_a_progress_bar_on_a_tty(server, replicas_start_one_by_one, capsys,
                                                                monkeypatch):
    stderr = FakeTTY()
    monkeypatch.setattr("sys.stderr", stderr)
    assert cli(server, "models", "scale", "x", "--min-worker", "2", "--max-worker", "3", "--wait", "--poll", "0") == 0
    assert capsys.readouterr().out == "Processing worker updates...; x version 1: 2 workers READY\n"
    assert stderr.getvalue().startswith("\r[")
    assert stderr.getvalue().endswith("] 2/2 workers\n")
    assert "1/2 workers" in stderr.getvalue()
    assert server.seen[0].query["synchronous"] == "false"
    assert [(s.method, s.path) for s in server.seen[:2]] == [("PUT", "/models/x"), ("GET", "/models/x")]
    assert {(s.method, s.path) for s in server.seen[2:]} == {("GET", "/models/x")}  # describe polled till 2 READY
    assert len(server.connections) == 1


def test_scale_wait_json_is_the_last_description_and_no_bar_off_a_tty(management, server, replicas_start_one_by_one,
                                                                      capsys):
    assert cli(server, "models", "scale", "x", "1", "--min-worker", "1", "--wait", "--poll", "0", "--json") == 0
    captured = capsys.readouterr()
    described = json.loads(captured.out)
    assert without_memory(described) == without_memory(management.manager.describe("x", "1"))
    assert len(described[0]["workers"]) == 1
    assert captured.err == ""


def test_scale_wait_gives_up_at_the_deadline(server, replicas_start_one_by_one, capsys):
    assert cli(server, "models", "scale", "x", "1", "--min-worker", "1", "--wait", "--wait-timeout", "0") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "modelpool: x version 1: 0/1 workers READY after 0s (--wait-timeout)\n"


# ------------------------------------------------------------------------------------------ pools and services
def test_pools_set_list_status_delete(management, server, capsys):
    assert cli(server, "pools", "set", "x", "1", "--initial-pool-size", "2", "--max-pool-size", "4") == 0
    assert capsys.readouterr().out == 'Pool for "x" version "1" set to 2..4 replicas\n'
    assert server.seen[-1].body == {"initial_pool_size": 2, "max_pool_size": 4}
    add_version(management, "iris-1.zip", "y")
    assert cli(server, "pools", "list") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["NAME", "VERSION", "DEFAULT", "POOL", "STATE"], ["x", "1", "yes", "dedicated", "RUNNING"]]
    assert cli(server, "pools", "list", "--json") == 0
    assert out_json(capsys) == [{"name": "x", "version": "1", "pool": "dedicated", "state": "RUNNING", "isDefault": True}]
    assert cli(server, "pools", "status", "x", "1") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["NODE", "STATUS", "ERRORS"], ["127.0.0.1", "Success"]]
    assert cli(server, "pools", "delete", "x", "1") == 0
    assert capsys.readouterr().out.endswith("served by the generic pool\n")
    assert cli(server, "pools", "status", "x", "1", "--json") == 0
    assert out_json(capsys) == [{"computeNodeEndpoint": "127.0.0.1", "status": "NotFound", "errors": []}]


def test_services_list_and_predict(server, capsys, tmp_path):
    assert cli(server, "services", "list") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["NAME", "VERSION", "DEFAULT", "POOL", "STATE"], ["x", "1", "yes", "generic", "RUNNING"]]

    assert cli(server, "services", "predict", "x", "1", "--rows", "[[5.1,3.5,1.4,0.2],[6.3,3.3,6.0,2.5]]") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [["ROW", "PREDICTION"], ["0", "0"], ["1", "2"]]
    assert server.seen[-1].body == {"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}
    assert len(server.connections) == 2  # one per command: list, then describe + predict

    rows = tmp_path / "rows.csv"
    rows.write_text(IRIS_CSV)
    assert cli(server, "services", "predict", "x", "--csv", str(rows), "--json") == 0
    assert out_json(capsys) == {"predictions": [0, 2, 2]}
    assert server.seen[-2].path == "/models/x"  # no version: the default one, resolved first
    assert server.seen[-1].body == {"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 5.1, 1.9]]}


def test_predict_refuses_rows_that_are_not_json(server, capsys):
    assert cli(server, "services", "predict", "x", "1", "--rows", "[[5.1,") == 2
    assert capsys.readouterr().err.startswith("modelpool: --rows is not JSON: ")
    assert server.seen == []


# ------------------------------------------------------------------------------------------ batches
IRIS_ROWS = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
             {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5},
             {"sepal_length": 5.8, "sepal_width": 2.7, "petal_length": 5.1, "petal_width": 1.9}]


@pytest.fixture()
def iris_csv(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text(IRIS_CSV)
    return str(path)


def test_batch_start_wait_json_off_a_tty_prints_only_the_final_state(server, capsys, iris_csv):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--parallel-count", "2", "--wait",
               "--poll", "0", "--json") == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    final = json.loads(captured.out)
    assert (final["state"], final["completedItems"], final["totalItems"]) == ("Complete", 3, 3)
    started = server.requests_to("/batches", "POST")[0].body
    assert started == {"service": "x", "version": "1", "parallel_count": 2, "records": IRIS_ROWS}
    polls = server.seen[1:]
    assert polls and {(s.method, s.path) for s in polls} == {("GET", f"/batches/{final['executionId']}")}
    assert len(server.connections) == 1  # start and every poll, one connection


def release_after_the_first_poll(server: Proxy, gate: Gate) -> threading.Thread:
    """Let the held job be scored once a poll has seen it unscored (joined by the caller)."""
    def release() -> None:
        while not any(s.method == "GET" and s.path.startswith("/batches/") for s in list(server.seen)):
            threading.Event().wait(0.005)
        gate.release()

    thread = threading.Thread(target=release, name="release-after-first-poll")
    thread.start()
    return thread


def test_batch_start_wait_draws_the_bar_on_a_tty(server, gate, capsys, monkeypatch, tmp_path):
    records = tmp_path / "rows.json"
    records.write_text(json.dumps([[5.1, 3.5, 1.4, 0.2]] * 4))
    stderr = FakeTTY()
    monkeypatch.setattr("sys.stderr", stderr)
    gate.hold()
    releaser = release_after_the_first_poll(server, gate)
    try:
        assert cli(server, "batches", "start", "x", "1", "--json-file", str(records), "--wait", "--poll", "0") == 0
    finally:
        gate.release()
        releaser.join(10)
    frames = stderr.getvalue().split("\r")[1:]
    assert frames[0] == f"[{'-' * 30}] 0/4 rows" and frames[-1] == f"[{'#' * 30}] 4/4 rows\n"
    assert set(frames[:-1]) <= {f"[{'-' * 30}] 0/4 rows", f"[{'#' * 30}] 4/4 rows"}  # one partition: none, then all
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["EXECUTION", "STATE", "ROWS(done/total)", "FAILED", "SERVICE", "VERSION"]
    assert lines[1].split()[1:] == ["Complete", "4/4", "0", "x", "1"]


def test_batch_start_without_wait_says_how_to_follow(management, server, capsys, iris_csv):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv) == 0
    (execution_id,) = management.batches.list(None, None)
    assert capsys.readouterr().out == (f"started batch {execution_id} (3 rows); follow it with: "
                                       f"modelpool batches wait {execution_id}\n")
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    second = management.batches.list(None, None)[1]
    assert out_json(capsys) == {"executionId": second, "state": "Pending"}


def test_batch_commands_need_only_the_execution_id(server, capsys, iris_csv, tmp_path):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    execution_id = out_json(capsys)["executionId"]

    assert cli(server, "batches", "wait", execution_id, "--poll", "0") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == [execution_id, "Complete", "3/3", "0", "x", "1"]
    assert cli(server, "batches", "status", execution_id, "--json") == 0
    assert out_json(capsys)["state"] == "Complete"

    assert cli(server, "batches", "results", execution_id, "--json") == 0
    rows = out_json(capsys)["results"]
    assert [(r["index"], r["status"], r["outputs"]["predict"]) for r in rows] == [(0, "Success", 0), (1, "Success", 2),
                                                                                  (2, "Success", 2)]
    assert cli(server, "batches", "results", execution_id) == 0
    results = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert results[0].split() == ["INDEX", "STATUS", "OUTPUTS", "ERROR"]
    assert [line.split() for line in results[1:]] == [
        [str(r["index"]), "Success", json.dumps(r["outputs"], separators=(",", ":")), "-"] for r in rows]

    assert cli(server, "batches", "artifacts", execution_id, "1") == 0
    assert capsys.readouterr().out.split() == ["ARTIFACT", "report.json"]
    dest = tmp_path / "out"
    assert cli(server, "batches", "download", execution_id, "1", "--dest", str(dest)) == 0
    assert capsys.readouterr().out == f"{dest / 'report.json'}\n"
    report = json.loads((dest / "report.json").read_text())
    assert report == {"features": list(IRIS_ROWS[1].values()), "class": 2, "class_name": "virginica",
                      "confidence": rows[1]["outputs"]["confidence"]}
    assert cli(server, "batches", "download", execution_id, "0", "--name", "report.json", "--dest", str(dest), "--json") == 0
    assert out_json(capsys) == [str(dest / "report.json")]
    assert json.loads((dest / "report.json").read_text())["class_name"] == "setosa"

    assert cli(server, "batches", "list", "--service", "x", "--version", "1", "--json") == 0
    assert out_json(capsys) == [execution_id]
    assert server.seen[-1].query == {"service": "x", "version": "1"}
    assert cli(server, "batches", "list") == 0  # without service and version: every job
    assert capsys.readouterr().out.split() == ["EXECUTION", execution_id]
    assert server.seen[-1].query == {}

    assert cli(server, "batches", "cancel", execution_id, "--service", "x", "--version", "1") == 0
    assert capsys.readouterr().out == f"batch {execution_id}: Complete\n"
    assert (server.seen[-1].method, server.seen[-1].path) == ("DELETE", f"/batches/{execution_id}")


def test_download_refuses_an_escaping_name_and_writes_nothing(server, capsys, iris_csv, tmp_path):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--wait", "--poll", "0", "--json") == 0
    execution_id = out_json(capsys)["executionId"]
    server.forged[f"/batches/{execution_id}/results/2/artifacts"] = ["report.json", "../escape.txt"]  # hostile
    dest = tmp_path / "dest"
    assert cli(server, "batches", "download", execution_id, "2", "--dest", str(dest)) == 1
    assert capsys.readouterr().err.startswith("modelpool: refusing artifact name '../escape.txt'")
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


def test_wait_on_a_cancelled_batch_exits_1(server, gate, capsys, iris_csv):
    gate.hold()
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    execution_id = out_json(capsys)["executionId"]
    assert cli(server, "batches", "cancel", execution_id, "--json") == 0
    assert out_json(capsys) == {"executionId": execution_id, "state": "Cancelled"}
    assert cli(server, "batches", "wait", execution_id) == 1
    captured = capsys.readouterr()
    assert captured.err == f"modelpool: batch {execution_id} ended Cancelled\n"
    assert captured.out.splitlines()[1].split()[1] == "Cancelled"


def test_batch_wait_timeout_exits_1(server, gate, capsys, iris_csv):
    gate.hold()
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    execution_id = out_json(capsys)["executionId"]
    gate.wait_until_held()
    assert cli(server, "batches", "wait", execution_id, "--wait-timeout", "0") == 1
    assert capsys.readouterr().err == (f"modelpool: batch {execution_id} still Running after 0.0s (--wait-timeout)\n")


# ------------------------------------------------------------------------------------------ errors
def test_not_found_is_exit_2_with_the_server_message_and_field(server, capsys):
    assert cli(server, "models", "describe", "nope") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "modelpool: model 'nope' is not registered (field model_name)\n"
    assert cli(server, "batches", "status", "0" * 32) == 2
    assert capsys.readouterr().err == f"modelpool: no batch execution '{'0' * 32}' (field execution_id)\n"


def test_bad_request_is_exit_2(server, capsys):
    assert cli(server, "pools", "set", "x", "1", "--initial-pool-size", "4", "--max-pool-size", "2") == 2
    assert capsys.readouterr().err == ("modelpool: initial_pool_size (4) must not exceed max_pool_size (2) "
                                       "(field initial_pool_size)\n")


def test_wrong_token_is_exit_2_with_a_hint(server, capsys):
    assert cli(server, "services", "list", token="wrong") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("modelpool: missing or wrong management token; send 'Authorization: Bearer <token>' "
                      "(the token file's path is printed by `modelpool start`) (field authorization)")
    assert err[1].startswith("hint: pass --token")


def test_server_error_is_exit_1(management, server, capsys):
    management.serve.deploy_failure = "the replica's constructor raised"  # Serve reports DEPLOY_FAILED
    assert cli(server, "models", "register", "iris-1.zip", "--model-name", "y", "--initial-workers", "1",
               "--synchronous", "--json") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("modelpool: model 'y': application ")
    assert captured.err.endswith("failed to deploy: the replica's constructor raised\n")
    assert len(server.requests_to("/models", "POST")) == 1  # a server's own 500 is not retried


def test_no_server_is_exit_1_with_a_hint_to_check_url(capsys):
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["models", "list", "--url", f"http://127.0.0.1:{port}", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"modelpool: cannot reach http://127.0.0.1:{port} (ConnectionError)")
    assert "check --url" in err


def test_a_missing_input_file_is_exit_2(server, capsys, tmp_path):
    assert cli(server, "batches", "start", "x", "1", "--csv", str(tmp_path / "missing.csv")) == 2
    assert capsys.readouterr().err.startswith(f"modelpool: cannot read {tmp_path / 'missing.csv'}: ")
    assert server.seen == []


# ------------------------------------------------------------------------------------------ url and token
def test_url_from_env_then_cluster_state_then_default(monkeypatch, tmp_path):
    assert default_url() == DEFAULT_URL
    home = tmp_path / "home"
    home.mkdir()
    (home / "cluster.json").write_text(json.dumps({"address": "127.0.0.1:6379", "url": "http://127.0.0.1:8123"}))
    assert default_url() == "http://127.0.0.1:8123"
    monkeypatch.setenv("MODELPOOL_URL", "http://10.0.0.5:8000")
    assert default_url() == "http://10.0.0.5:8000"


def test_url_and_token_from_the_environment(server, capsys, monkeypatch):
    monkeypatch.setenv("MODELPOOL_URL", server.url)
    monkeypatch.setenv("MODELPOOL_MANAGEMENT_TOKEN", TOKEN)
    assert main(["services", "list", "--json"]) == 0
    assert out_json(capsys)[0]["name"] == "x"
    assert server.seen[-1].authorization == f"Bearer {TOKEN}"


def test_progress_bar_is_silent_off_a_tty():
    stream = io.StringIO()
    bar = ProgressBar("rows", stream)
    bar.update(1, 2)
    bar.close()
    assert stream.getvalue() == ""
    tty = FakeTTY()
    bar = ProgressBar("rows", tty)
    bar.update(3, None)
    bar.close()
    assert tty.getvalue() == f"\r[{'-' * 30}] 3/? rows\n"
