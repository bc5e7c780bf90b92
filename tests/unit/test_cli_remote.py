"""The remote ``modelpool`` commands (models, pools, services, batches) against the fake server.

``main(argv)`` runs as a user would run the command; the tests read what the user sees (stdout,
stderr, the exit code) and what went over the wire (the fake records requests and connections).
"""
from __future__ import annotations

import io
import json
import socket
from typing import Any, Callable, Optional

import pytest

from modelpool.cli import main
from modelpool.client import DEFAULT_URL
from modelpool.remote import ProgressBar, default_url, read_csv, table
from tests.unit.fake_modelpool import TOKEN, FakeModelpool, Reply, server_fixture  # noqa: F401 (a fixture)

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


def cli(server: FakeModelpool, *args: str, token: str = TOKEN) -> int:
    return main([*args, "--url", server.url, "--token", token])


def out_json(capsys) -> Any:
    captured = capsys.readouterr()
    return json.loads(captured.out)  # the whole of stdout is one JSON document


def replace_route(server: FakeModelpool, name: str, handler: Callable) -> None:
    """Swap the fake's handler called ``name`` (e.g. "describe") for ``handler``."""
    server.routes = [(m, p, handler if getattr(h, "__name__", "") == name else h) for m, p, h in server.routes]


def add_version(server: FakeModelpool, name: str, version: str, **fields: Any) -> None:
    template = next(iter(server.models.get("x").values()))
    server.models.setdefault(name, {})[version] = {**template, "modelName": name, "modelVersion": version,
                                                    "modelUrl": f"{name}-{version}.zip", **fields}
    server.defaults.setdefault(name, version)


def with_describe_all(server: FakeModelpool) -> None:
    """The fake answers one version; the real server also answers ``/models/NAME/all``."""
    original = server.describe

    def describe(query: dict, body: Any, name: str, version: Optional[str] = None) -> tuple[int, list]:
        if version == "all":
            server.record(name, None)
            return 200, [{**r, "isDefault": server.defaults[name] == v} for v, r in sorted(server.models[name].items())]
        return original(query, body, name, version)

    describe.__name__ = "describe"
    replace_route(server, "describe", describe)


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
def test_models_list_table_uses_one_connection(server, capsys):
    with_describe_all(server)
    add_version(server, "x", "2", minWorkers=1, maxWorkers=3)
    add_version(server, "y", "1")
    assert cli(server, "models", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "DEFAULT", "WORKERS(min/max)", "STATUS", "URL"]
    assert [line.split() for line in lines[1:]] == [["x", "1", "yes", "0/0", "Running", "x-1.zip"],
                                                   ["x", "2", "no", "1/3", "Running", "x-2.zip"],
                                                   ["y", "1", "yes", "0/0", "Running", "y-1.zip"]]
    assert lines[0].index("VERSION") == lines[1].index("1")  # aligned
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/models"), ("GET", "/services"),
                                                        ("GET", "/models/x/all"), ("GET", "/models/y/all")]
    assert len(server.connections) == 1, "one command, one keep-alive connection"
    assert {s.port for s in server.seen} == {server.connections[0]}


def test_models_list_json_is_the_servers_models(server, capsys):
    add_version(server, "y", "1")
    assert cli(server, "models", "list", "--json") == 0
    assert out_json(capsys) == [{"modelName": "x", "modelUrl": "x-1.zip"}, {"modelName": "y", "modelUrl": "y-1.zip"}]


def test_models_describe_json_and_table_with_workers(server, capsys):
    assert cli(server, "models", "describe", "x", "1", "--json") == 0
    assert out_json(capsys) == [server.models["x"]["1"]]
    assert server.seen[-1].path == "/models/x/1"

    server.models["x"]["1"]["workers"] = [{"id": "r1", "startTime": "2024-01-01T00:00:00+00:00", "status": "READY",
                                           "gpu": False, "memoryUsage": 1024, "node": "10.0.0.5"}]
    assert cli(server, "models", "describe", "x") == 0
    assert server.seen[-1].path == "/models/x"
    versions, workers = capsys.readouterr().out.split("\n\n")
    assert versions.splitlines()[1].split() == ["x", "1", "-", "-", "0/0", "-", "-", "-", "x-1.zip"]
    assert workers.splitlines()[0].split() == ["VERSION", "WORKER", "STATUS", "NODE", "GPU", "MEMORY", "STARTED"]
    assert workers.splitlines()[1].split() == ["1", "r1", "READY", "10.0.0.5", "no", "1024", "2024-01-01T00:00:00+00:00"]


def test_register_set_default_unregister(server, capsys):
    assert cli(server, "models", "register", "y-1.zip", "--model-name", "y", "--handler", "sklearn",
               "--initial-workers", "1", "--batch-size", "8", "--max-batch-delay", "2.5", "--synchronous",
               "--response-timeout", "30", "--startup-timeout", "90") == 0
    assert capsys.readouterr().out == 'Model "y" registered\n'
    assert server.seen[-1].query == {"url": "y-1.zip", "model_name": "y", "handler": "sklearn", "initial_workers": "1",
                                     "batch_size": "8", "max_batch_delay": "2.5", "synchronous": "true",
                                     "response_timeout": "30.0", "startup_timeout": "90.0"}
    assert cli(server, "models", "set-default", "y", "1", "--json") == 0
    assert out_json(capsys) == {"status": 'Default version successfully updated for model "y" to "1"'}
    assert cli(server, "models", "unregister", "y", "1") == 0
    assert capsys.readouterr().out == 'Model "y" unregistered\n'
    assert (server.seen[-1].method, server.seen[-1].path) == ("DELETE", "/models/y/1")


def test_scale_without_wait_is_asynchronous(server, capsys):
    assert cli(server, "models", "scale", "x", "1", "--min-worker", "1", "--max-worker", "2", "--batch-size", "16") == 0
    assert capsys.readouterr().out == "Worker updated\n"
    assert server.seen[-1].query == {"min_worker": "1", "max_worker": "2", "batch_size": "16", "synchronous": "false"}
    assert len(server.seen) == 1


def with_workers_starting(server: FakeModelpool) -> None:
    """Scaling records min/max; each describe afterwards finds one more READY worker, up to the minimum."""
    original_scale = server.scale

    def scale(query: dict, body: Any, name: str, version: Optional[str] = None) -> tuple[int, dict]:
        record = server.record(name, version)
        record.update(minWorkers=int(query.get("min_worker", 0)), maxWorkers=int(query.get("max_worker", 0)), workers=[])
        return original_scale(query, body, name, version)

    def describe(_: dict, __: Any, name: str, version: Optional[str] = None) -> tuple[int, list]:
        record = server.record(name, version)
        if len(record["workers"]) < record["minWorkers"]:
            record["workers"].append({"id": f"r{len(record['workers'])}", "status": "READY"})
        return 200, [record]

    scale.__name__, describe.__name__ = "scale", "describe"
    replace_route(server, "scale", scale)
    replace_route(server, "describe", describe)


def test_scale_wait_polls_describe_with_a_progress_bar_on_a_tty(server, capsys, monkeypatch):
    with_workers_starting(server)
    stderr = FakeTTY()
    monkeypatch.setattr("sys.stderr", stderr)
    assert cli(server, "models", "scale", "x", "--min-worker", "2", "--max-worker", "3", "--wait", "--poll", "0") == 0
    assert capsys.readouterr().out == "Worker updated; x version 1: 2 workers READY\n"
    assert stderr.getvalue().startswith("\r[")
    assert stderr.getvalue().endswith("] 2/2 workers\n")
    assert "1/2 workers" in stderr.getvalue()
    assert server.seen[0].query["synchronous"] == "false"
    assert [s.path for s in server.seen] == ["/models/x", "/models/x", "/models/x"]
    assert len(server.connections) == 1


def test_scale_wait_json_is_the_last_description_and_no_bar_off_a_tty(server, capsys):
    with_workers_starting(server)
    assert cli(server, "models", "scale", "x", "1", "--min-worker", "1", "--wait", "--poll", "0", "--json") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [server.models["x"]["1"]] and len(server.models["x"]["1"]["workers"]) == 1
    assert captured.err == ""


def test_scale_wait_gives_up_at_the_deadline(server, capsys):
    assert cli(server, "models", "scale", "x", "1", "--min-worker", "1", "--wait", "--wait-timeout", "0") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "modelpool: x version 1: 0/1 workers READY after 0s (--wait-timeout)\n"


# ------------------------------------------------------------------------------------------ pools and services
def test_pools_set_list_status_delete(server, capsys):
    assert cli(server, "pools", "set", "x", "1", "--initial-pool-size", "2", "--max-pool-size", "4") == 0
    assert capsys.readouterr().out == 'Pool for "x" version "1" set to 2..4 replicas\n'
    assert server.seen[-1].body == {"initial_pool_size": 2, "max_pool_size": 4}
    add_version(server, "y", "1")
    assert cli(server, "pools", "list") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["NAME", "VERSION", "DEFAULT", "POOL", "STATE"], ["x", "1", "yes", "dedicated", "Running"]]
    assert cli(server, "pools", "list", "--json") == 0
    assert out_json(capsys) == [{"name": "x", "version": "1", "pool": "dedicated", "state": "Running", "isDefault": True}]
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
        ["NAME", "VERSION", "DEFAULT", "POOL", "STATE"], ["x", "1", "yes", "generic", "Running"]]

    assert cli(server, "services", "predict", "x", "1", "--rows", "[[5.1,3.5,1.4,0.2],[6.3,3.3,6.0,2.5]]") == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [["ROW", "PREDICTION"], ["0", "0"], ["1", "1"]]
    assert server.seen[-1].body == {"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}
    assert len(server.connections) == 2  # one per command: list, then describe + predict

    rows = tmp_path / "rows.csv"
    rows.write_text(IRIS_CSV)
    assert cli(server, "services", "predict", "x", "--csv", str(rows), "--json") == 0
    assert out_json(capsys) == {"predictions": [0, 1, 1]}
    assert server.seen[-2].path == "/models/x"  # no version: the default one, resolved first
    assert server.seen[-1].body == {"instances": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 5.1, 1.9]]}


def test_predict_refuses_rows_that_are_not_json(server, capsys):
    assert cli(server, "services", "predict", "x", "1", "--rows", "[[5.1,") == 2
    assert capsys.readouterr().err.startswith("modelpool: --rows is not JSON: ")
    assert server.seen == []


# ------------------------------------------------------------------------------------------ batches
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
    assert started == {"service": "x", "version": "1", "parallel_count": 2, "records": [
        {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5},
        {"sepal_length": 5.8, "sepal_width": 2.7, "petal_length": 5.1, "petal_width": 1.9}]}
    assert len(server.seen) == 4 and len(server.connections) == 1  # start + three polls, one connection


def test_batch_start_wait_draws_the_bar_on_a_tty(server, capsys, monkeypatch, tmp_path):
    records = tmp_path / "rows.json"
    records.write_text(json.dumps([[5.1, 3.5, 1.4, 0.2]] * 4))
    stderr = FakeTTY()
    monkeypatch.setattr("sys.stderr", stderr)
    assert cli(server, "batches", "start", "x", "1", "--json-file", str(records), "--wait", "--poll", "0") == 0
    bar = stderr.getvalue()
    assert bar.split("\r")[1:] == [f"[{'#' * (30 * n // 4)}{'-' * (30 - 30 * n // 4)}] {n}/4 rows" + ("\n" if n == 4 else "")
                                   for n in (1, 2, 3, 4)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["EXECUTION", "STATE", "ROWS(done/total)", "FAILED", "SERVICE", "VERSION"]
    assert lines[1].split()[1:] == ["Complete", "4/4", "0", "x", "1"]


def test_batch_start_without_wait_says_how_to_follow(server, capsys, iris_csv):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv) == 0
    execution_id = next(iter(server.batches))
    assert capsys.readouterr().out == (f"started batch {execution_id} (3 rows); follow it with: "
                                       f"modelpool batches wait {execution_id}\n")
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    assert out_json(capsys) == {"executionId": list(server.batches)[1], "state": "Pending"}


def with_optional_batch_filters(server: FakeModelpool) -> None:
    """As on the real server, GET /batches without service/version lists every job."""
    def list_batches(query: dict, _: Any) -> tuple[int, list]:
        return 200, [i for i, job in server.batches.items() if query.get("service", job["service"]) == job["service"]
                     and query.get("version", job["version"]) == job["version"]]

    replace_route(server, "list_batches", list_batches)


def test_batch_commands_need_only_the_execution_id(server, capsys, iris_csv, tmp_path):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    execution_id = out_json(capsys)["executionId"]

    assert cli(server, "batches", "wait", execution_id, "--poll", "0") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == [execution_id, "Complete", "3/3", "0", "x", "1"]
    assert cli(server, "batches", "status", execution_id, "--json") == 0
    assert out_json(capsys)["state"] == "Complete"

    assert cli(server, "batches", "results", execution_id) == 0
    results = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert [line.split() for line in results] == [["INDEX", "STATUS", "OUTPUTS", "ERROR"],
                                                  ["0", "Complete", '{"predict":0}', "-"],
                                                  ["1", "Complete", '{"predict":1}', "-"],
                                                  ["2", "Complete", '{"predict":2}', "-"]]
    assert cli(server, "batches", "results", execution_id, "--json") == 0
    assert [r["index"] for r in out_json(capsys)["results"]] == [0, 1, 2]

    assert cli(server, "batches", "artifacts", execution_id, "1") == 0
    assert capsys.readouterr().out.split() == ["ARTIFACT", "report.json"]
    dest = tmp_path / "out"
    assert cli(server, "batches", "download", execution_id, "1", "--dest", str(dest)) == 0
    assert capsys.readouterr().out == f"{dest / 'report.json'}\n"
    assert json.loads((dest / "report.json").read_text()) == {"index": 1, "class": 1}
    assert cli(server, "batches", "download", execution_id, "0", "--name", "report.json", "--dest", str(dest), "--json") == 0
    assert out_json(capsys) == [str(dest / "report.json")]

    assert cli(server, "batches", "list", "--service", "x", "--version", "1", "--json") == 0
    assert out_json(capsys) == [execution_id]
    assert server.seen[-1].query == {"service": "x", "version": "1"}
    with_optional_batch_filters(server)
    assert cli(server, "batches", "list") == 0
    assert capsys.readouterr().out.split() == ["EXECUTION", execution_id]
    assert server.seen[-1].query == {}

    assert cli(server, "batches", "cancel", execution_id, "--service", "x", "--version", "1") == 0
    assert capsys.readouterr().out == f"batch {execution_id}: Complete\n"
    assert (server.seen[-1].method, server.seen[-1].path) == ("DELETE", f"/batches/{execution_id}")


def test_download_refuses_an_escaping_name_and_writes_nothing(server, capsys, iris_csv, tmp_path):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--wait", "--poll", "0", "--json") == 0
    execution_id = out_json(capsys)["executionId"]
    dest = tmp_path / "dest"
    assert cli(server, "batches", "download", execution_id, "2", "--dest", str(dest)) == 1
    assert capsys.readouterr().err.startswith("modelpool: refusing artifact name '../escape.txt'")
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


def test_wait_on_a_cancelled_batch_exits_1(server, capsys, iris_csv):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    execution_id = out_json(capsys)["executionId"]
    assert cli(server, "batches", "cancel", execution_id, "--json") == 0
    assert out_json(capsys) == {"executionId": execution_id, "state": "Cancelled"}
    assert cli(server, "batches", "wait", execution_id) == 1
    captured = capsys.readouterr()
    assert captured.err == f"modelpool: batch {execution_id} ended Cancelled\n"
    assert captured.out.splitlines()[1].split()[1] == "Cancelled"


def test_batch_wait_timeout_exits_1(server, capsys, iris_csv):
    assert cli(server, "batches", "start", "x", "1", "--csv", iris_csv, "--json") == 0
    execution_id = out_json(capsys)["executionId"]
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
                      "(field authorization)")
    assert err[1].startswith("hint: pass --token")


def test_server_error_is_exit_1(server, capsys):
    def broken(*_: Any, **__: Any) -> None:
        raise Reply(500, "the registry is unreachable", None)

    broken.__name__ = "services"
    replace_route(server, "services", broken)
    assert cli(server, "services", "list", "--json") == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "modelpool: the registry is unreachable\n")


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
