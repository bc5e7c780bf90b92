"""Both Python clients' graph calls (``put_graph``, ``get_graph``, ``list_graphs``, ``delete_graph``) against the
real management application.

The app runs in process over real HTTP (management_app.py: the real ModelManager and its graph routes on a local
object store, Serve kept in memory, a graph's replica a stand-in that answers the ingress probe), so the clients
are held to the server's own checks, answers and errors; the ingress in front records what went over the wire.
Each test runs once per client (``flavour``: see both_clients.py). Graph inference runs on the cluster
(tests/integration).
"""
from __future__ import annotations

from typing import Any

import pytest

from modelpool.client_core import graph_body
from modelpool.errors import BadRequest, Conflict, ModelpoolError, NotFound
from modelpool.management.params import RegisterParams
from tests.unit.both_clients import flavour_fixture  # noqa: F401 (a fixture)
from tests.unit.management_app import Proxy, RunningManagement, management_fixture, model_store  # noqa: F401
from tests.unit.test_clients import client, ingress  # noqa: F401 (fixtures: the ingress and a client per flavour)

#: Seldon Core's nested shape: a 90/10 canary of iris 2 beside iris 1, sticky by a header
CANARY = {"name": "split", "type": "ROUTER", "implementation": "SPLIT", "weights": [90, 10],
          "routing_header": "x-user",
          "children": [{"name": "stable", "type": "MODEL", "model": "iris", "version": "1"},
                       {"name": "canary", "type": "MODEL", "model": "iris", "version": "2"}]}
ONE_MODEL = {"name": "only", "model": "iris", "version": "1"}


@pytest.fixture()
def iris(management: RunningManagement) -> None:
    """iris versions 1 and 2, registered in process (so the ingress has seen nothing yet)."""
    for url in ("iris-1.zip", "iris-2.zip"):
        management.manager.register(RegisterParams(url=url))


def calls(ingress: Proxy) -> list[tuple[str, str, Any]]:
    """Method, path and JSON body of every graph call the cluster saw."""
    return [(s.method, s.path, s.body) for s in ingress.seen if s.path.startswith("/graphs")]


# ------------------------------------------------------------------------------------------ the body
@pytest.mark.parametrize("given, sent", [
    (CANARY, {"graph": CANARY}),                                        # the root node
    ({"graph": CANARY}, {"graph": CANARY}),                             # already wrapped
    ({"name": "g", "graph": "other"}, {"graph": {"name": "g", "graph": "other"}}),  # a root calling a graph
])
def test_the_body_is_the_root_under_graph_as_the_server_reads_it(given, sent):
    assert graph_body(given) == sent


# ------------------------------------------------------------------------------------------ calls
def test_put_creates_then_updates_and_answers_the_endpoint(iris, ingress, client):
    assert client.put_graph("canary", CANARY) == {"status": 'Graph "canary" created', "name": "canary",
                                                   "endpoint": "/v2/models/canary/infer"}
    assert client.put_graph("canary", {"graph": {**CANARY, "weights": [50, 50]}}) == {
        "status": 'Graph "canary" updated', "name": "canary", "endpoint": "/v2/models/canary/infer"}
    assert calls(ingress) == [("PUT", "/graphs/canary", {"graph": CANARY}),
                              ("PUT", "/graphs/canary", {"graph": {**CANARY, "weights": [50, 50]}})]
    assert [s.path for s in ingress.probes] == ["/v2/models/canary/-"] * 2, (
        "each PUT answered once the ingress routed the graph to its replica")


def test_get_and_list_answer_the_graph_as_stored_with_its_status(iris, ingress, client):
    client.put_graph("canary", CANARY)
    client.put_graph("only", ONE_MODEL)
    graph = client.get_graph("canary")
    assert calls(ingress)[-1] == ("GET", "/graphs/canary", None)
    assert {k: graph[k] for k in ("name", "endpoint", "status")} == {
        "name": "canary", "endpoint": "/v2/models/canary/infer", "status": "RUNNING"}
    assert graph["graph"]["name"] == "split" and graph["graph"]["implementation"] == "SPLIT"
    assert [c["model"] + " " + c["version"] for c in graph["graph"]["children"]] == ["iris 1", "iris 2"]
    assert graph["createdAt"] <= graph["updatedAt"]

    graphs = client.list_graphs()
    assert calls(ingress)[-1] == ("GET", "/graphs", None)
    assert isinstance(graphs, list), "the list itself, not the server's {'graphs': [...]}"
    assert [g["name"] for g in graphs] == ["canary", "only"]
    assert graphs[0] == graph


def test_delete_then_get_and_delete_are_not_found(iris, ingress, client):
    client.put_graph("canary", CANARY)
    assert client.delete_graph("canary") == {"status": 'Graph "canary" deleted'}
    assert calls(ingress)[-1] == ("DELETE", "/graphs/canary", None)
    assert client.list_graphs() == []
    with pytest.raises(NotFound) as missing:
        client.get_graph("canary")
    assert (missing.value.status, missing.value.field) == (404, "name")
    assert missing.value.message == "no graph 'canary'; graphs: none"
    with pytest.raises(NotFound):
        client.delete_graph("canary")
    assert len([c for c in calls(ingress) if c[0] == "DELETE"]) == 2, "a delete is not retried"


def test_names_are_one_path_segment(ingress, client):
    with pytest.raises(NotFound):
        client.get_graph("a/b")
    assert calls(ingress)[-1][1] == "/graphs/a%2Fb"


# ------------------------------------------------------------------------------------------ errors
def test_a_bad_graph_is_bad_request_naming_the_node_and_nothing_is_written(iris, client):
    broken = {**CANARY, "children": [CANARY["children"][0], {"name": "typo", "model": "irsi", "version": "1"}]}
    with pytest.raises(BadRequest) as bad:
        client.put_graph("canary", broken)
    assert (bad.value.status, bad.value.field) == (400, "node:typo")
    assert bad.value.message.startswith("graph node 'typo': ") and "irsi" in bad.value.message
    assert "field node:typo" in str(bad.value)
    assert client.list_graphs() == []


def test_a_models_name_and_a_called_graph_are_conflicts(iris, client):
    with pytest.raises(Conflict) as taken:
        client.put_graph("iris", ONE_MODEL)
    assert (taken.value.status, taken.value.field) == (409, "name")
    assert "a model is registered as 'iris'" in taken.value.message

    client.put_graph("canary", CANARY)
    client.put_graph("front", {"name": "calls", "graph": "canary"})  # a root node with a "graph" key
    with pytest.raises(Conflict) as called:
        client.delete_graph("canary")
    assert (called.value.field, called.value.message) == (
        "name", "graph 'canary' is called by graph(s) front; change or delete those first")
    assert isinstance(called.value, ModelpoolError)
    assert [g["name"] for g in client.list_graphs()] == ["canary", "front"]
