"""``modelpool graphs put|list|get|delete`` against the real management application.

``main(argv)`` runs as a user would run the command, against the app served in process over real HTTP
(management_app.py: the real graph routes; a graph's replica a stand-in that answers the ingress probe),
with iris versions 1 and 2 registered. The tests read what the user sees (stdout, stderr, the exit code)
and what went over the wire.
"""
from __future__ import annotations

import io
import json
from typing import Any

import pytest

from modelpool.cli import main
from modelpool.management.params import RegisterParams
from tests.unit.management_app import (TOKEN, Proxy, RunningManagement, management_fixture,  # noqa: F401
                                       model_store)  # (fixtures)
from tests.unit.test_client_graphs import CANARY, ONE_MODEL, calls


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No URL, token or cluster state from this machine may leak into a test."""
    for name in ("MODELPOOL_URL", "MODELPOOL_MANAGEMENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELPOOL_HOME", str(tmp_path / "home"))


@pytest.fixture()
def server(management: RunningManagement) -> Proxy:
    """The ingress of the app with iris versions 1 and 2 registered in process (so ``seen`` starts empty)."""
    for url in ("iris-1.zip", "iris-2.zip"):
        management.manager.register(RegisterParams(url=url))
    return management.ingress


def cli(server: Proxy, *args: str) -> int:
    return main([*args, "--url", server.url, "--token", TOKEN])


def out_json(capsys) -> Any:
    return json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON document


def graph_file(tmp_path, body: Any, name: str = "graph.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return str(path)


# ------------------------------------------------------------------------------------------ commands
def test_put_creates_then_updates_from_a_file_or_stdin(server, capsys, tmp_path, monkeypatch):
    assert cli(server, "graphs", "put", "canary", graph_file(tmp_path, CANARY)) == 0
    assert capsys.readouterr().out == 'Graph "canary" created\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"graph": CANARY})))
    assert cli(server, "graphs", "put", "canary", "-", "--json") == 0
    assert out_json(capsys) == {"status": 'Graph "canary" updated', "name": "canary",
                                "endpoint": "/v2/models/canary/infer"}
    assert calls(server) == [("PUT", "/graphs/canary", {"graph": CANARY})] * 2  # the file's root, wrapped


def test_list_and_get_print_tables_or_the_servers_json(server, capsys, tmp_path):
    assert cli(server, "graphs", "list") == 0
    assert capsys.readouterr().out == "NAME  STATUS  NODES  ENDPOINT\n"
    cli(server, "graphs", "put", "canary", graph_file(tmp_path, CANARY))
    cli(server, "graphs", "put", "only", graph_file(tmp_path, ONE_MODEL))
    capsys.readouterr()

    assert cli(server, "graphs", "list") == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME    STATUS   NODES  ENDPOINT",
        "canary  RUNNING  3      /v2/models/canary/infer",
        "only    RUNNING  1      /v2/models/only/infer",
    ]
    assert cli(server, "graphs", "list", "--json") == 0
    listed = out_json(capsys)
    assert [g["name"] for g in listed] == ["canary", "only"]
    assert calls(server)[-1] == ("GET", "/graphs", None)

    assert cli(server, "graphs", "get", "canary", "--json") == 0
    assert out_json(capsys) == listed[0]
    assert cli(server, "graphs", "get", "canary") == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME    STATUS   NODES  ENDPOINT",
        "canary  RUNNING  3      /v2/models/canary/infer",
        "",
        "NODE      TYPE    RUNS",
        "split     ROUTER  SPLIT 90/10 by x-user",
        "  stable  MODEL   iris 1",
        "  canary  MODEL   iris 2",
    ]
    assert calls(server)[-1] == ("GET", "/graphs/canary", None)


def test_delete_then_not_found_is_exit_2(server, capsys, tmp_path):
    cli(server, "graphs", "put", "canary", graph_file(tmp_path, CANARY))
    capsys.readouterr()
    assert cli(server, "graphs", "delete", "canary") == 0
    assert capsys.readouterr().out == 'Graph "canary" deleted\n'
    assert calls(server)[-1] == ("DELETE", "/graphs/canary", None)
    for action in ("get", "delete"):
        assert cli(server, "graphs", action, "canary") == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", "modelpool: no graph 'canary'; graphs: none (field name)\n")


# ------------------------------------------------------------------------------------------ errors
def test_a_bad_graph_is_exit_2_naming_the_node(server, capsys, tmp_path):
    broken = {**CANARY, "children": [CANARY["children"][0], {"name": "typo", "model": "irsi", "version": "1"}]}
    assert cli(server, "graphs", "put", "canary", graph_file(tmp_path, broken), "--json") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("modelpool: graph node 'typo': ")
    assert captured.err.endswith(" (field node:typo)\n")


def test_a_models_name_is_exit_2(server, capsys, tmp_path):
    assert cli(server, "graphs", "put", "iris", graph_file(tmp_path, ONE_MODEL)) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelpool: a model is registered as 'iris'") and err.endswith(" (field name)\n")


@pytest.mark.parametrize("content, message", [
    (None, "cannot read {path}: No such file or directory"),
    ("{not json", "{path} is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("[1, 2]", '{path} must be a JSON object: the root node, or {{"graph": {{"name": ..., "type": ..., '
               '"children": [...]}}}}'),
])
def test_an_unusable_file_is_one_line_exit_2_and_nothing_is_sent(server, capsys, tmp_path, content, message):
    path = tmp_path / "graph.json"
    if content is not None:
        path.write_text(content)
    assert cli(server, "graphs", "put", "canary", str(path)) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"modelpool: {message.format(path=path)}\n")
    assert server.seen == []


def test_invalid_json_on_stdin_names_stdin(server, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli(server, "graphs", "put", "canary", "-") == 2
    assert capsys.readouterr().err == "modelpool: stdin is not JSON: Expecting value: line 1 column 1 (char 0)\n"
    assert server.seen == []
