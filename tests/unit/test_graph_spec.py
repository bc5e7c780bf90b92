"""Graph requests checked whole: each bad graph is a 400 that names the node and the fix (no Ray)."""
from __future__ import annotations

from typing import Optional

import pytest

from modelpool.deployments.errors import RequestError
from modelpool.management.graph_spec import GraphSpec, check_graph, parse_graph, referencing_graphs

#: what is registered: (model, version) -> role; version None is the default version's
REGISTERED = {("iris", "1"): "MODEL", ("iris", "2"): "MODEL", ("iris", None): "MODEL",
              ("scaler", "1"): "TRANSFORMER", ("scaler", None): "TRANSFORMER",
              ("mean", "1"): "COMBINER", ("mean", None): "COMBINER",
              ("drift", "1"): "OUTLIER_DETECTOR", ("drift", None): "OUTLIER_DETECTOR",
              ("bandit", "1"): "ROUTER", ("bandit", None): "ROUTER"}


def role_of(model: str, version: Optional[str]) -> Optional[str]:
    return REGISTERED.get((model, version))


def model(name: str, model_name: str = "iris", version: Optional[str] = None, **extra) -> dict:
    return {"name": name, "model": model_name, **({"version": version} if version else {}), **extra}


def checked(body: dict, name: str = "g", graphs: Optional[dict] = None) -> GraphSpec:
    spec = parse_graph(name, body)
    check_graph(spec, role_of, graphs or {})
    return spec


def refused(body: dict, name: str = "g", graphs: Optional[dict] = None) -> RequestError:
    with pytest.raises(RequestError) as caught:
        checked(body, name, graphs)
    assert caught.value.status == 400
    return caught.value


def test_seldons_shape_reads_as_is_and_lists_what_it_calls() -> None:
    spec = checked({"graph": {"name": "pre", "type": "TRANSFORMER", "model": "scaler", "children": [
        {"name": "split", "type": "ROUTER", "implementation": "SPLIT", "weights": [90, 10],
         "routing_header": "x-user", "children": [model("v1", version="1"), model("v2", version="2")]}]}})
    assert [node.name for node in spec.nodes()] == ["pre", "split", "v1", "v2"]
    assert spec.models() == {("scaler", None), ("iris", "1"), ("iris", "2")}
    combiner = checked({"name": "avg", "type": "COMBINER", "model": "mean",
                        "children": [model("a", version="1"), model("b", version="2")]})
    assert combiner.root.kind == "COMBINER" and len(combiner.root.children) == 2


@pytest.mark.parametrize("body, node, words", [
    ({"name": "x", "model": "nope"}, "x", "not registered"),
    ({"name": "x", "model": "iris", "version": "9"}, "x", "iris version 9 is not registered"),
    ({"name": "x", "type": "TRANSFORMER", "model": "iris"}, "x", "is a MODEL, the node says TRANSFORMER"),
    ({"name": "c", "type": "COMBINER", "model": "mean", "children": [model("a")]}, "c", "at least 2 children, it has 1"),
    ({"name": "t", "type": "TRANSFORMER", "model": "scaler", "children": [model("a"), model("b")]}, "t",
     "at most 1 children, it has 2"),
    ({"name": "s", "type": "ROUTER", "implementation": "SPLIT", "weights": [1, -1],
      "children": [model("a"), model("b")]}, "s", "negative"),
    ({"name": "s", "type": "ROUTER", "implementation": "SPLIT", "weights": [0, 0],
      "children": [model("a"), model("b")]}, "s", "add up to 0"),
    ({"name": "s", "type": "ROUTER", "implementation": "SPLIT", "weights": [1],
      "children": [model("a"), model("b")]}, "s", "one weight per child"),
    ({"name": "s", "type": "MODEL", "implementation": "SHADOW", "children": [model("a"), model("b")]}, "s",
     "is a router"),
    ({"name": "x", "model": "iris", "weights": [1]}, "x", "belong to a SPLIT"),
    ({"name": "x", "model": "iris", "graph": "other"}, "x", "exactly one of"),
    ({"name": "x", "type": "ROUTER"}, "x", "exactly one of"),
    ({"name": "dup", "type": "TRANSFORMER", "model": "scaler", "children": [model("dup")]}, "dup", "same name"),
    ({"name": "x", "graph": "missing"}, "x", "does not exist"),
])
def test_each_bad_graph_names_its_node_and_the_fix(body: dict, node: str, words: str) -> None:
    error = refused(body)
    assert error.field == f"node:{node}" and f"graph node '{node}'" in error.message and words in error.message
    assert "; " in error.message, "the fix follows the cause"


def test_a_cycle_through_graphs_is_refused_with_its_path() -> None:
    inner = checked({"name": "call-outer", "graph": "outer"}, name="inner",
                    graphs={"outer": parse_graph("outer", model("m"))})
    outer_again = {"name": "t", "type": "TRANSFORMER", "model": "scaler", "children": [{"name": "to-inner", "graph": "inner"}]}
    error = refused(outer_again, name="outer", graphs={"inner": inner})
    assert error.field == "node:call-outer" and "outer -> inner -> outer" in error.message
    assert "itself" in refused({"name": "me", "graph": "self"}, name="self",
                               graphs={"self": parse_graph("self", model("m"))}).message


@pytest.mark.parametrize("body, field", [
    ({"graph": {"name": "bad name!"}}, "name"),
    ({"graph": {"name": "x", "type": "SPLITTER"}}, "type"),
    ({"graph": {"name": "x", "model": "iris", "colour": "red"}}, "colour"),
    ({"graph": {"name": "x", "children": [{"name": "y", "weights": "lots"}]}}, "children.0.weights"),
    ({"graph": []}, "graph"),
])
def test_a_malformed_body_names_the_field(body: dict, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_graph("g", body)
    assert caught.value.status == 400 and caught.value.field == field and field in caught.value.message


def test_bad_graph_names_and_hostile_sizes_are_refused() -> None:
    for bad in ("../etc", "a..b", "x/y", ""):
        with pytest.raises(RequestError) as caught:
            parse_graph(bad, model("m"))
        assert caught.value.field == "name" and "graph name" in caught.value.message
    chain: dict = model("leaf")
    for depth in range(20):
        chain = {"name": f"t{depth}", "type": "TRANSFORMER", "model": "scaler", "children": [chain]}
    assert "deeper than 16" in refused(chain).message
    wide = {"name": "s", "type": "ROUTER", "implementation": "SHADOW",
            "children": [model(f"m{n}") for n in range(70)]}
    assert "more than 64 nodes" in refused(wide).message


def test_the_graphs_that_call_a_version_are_named() -> None:
    by_version = checked(model("a", version="1"), name="pinned")
    by_default = checked(model("a"), name="follows-default")
    graphs = {"pinned": by_version, "follows-default": by_default}
    assert referencing_graphs(graphs, "iris", "1", is_default=True) == ["follows-default", "pinned"]
    assert referencing_graphs(graphs, "iris", "1", is_default=False) == ["pinned"]
    assert referencing_graphs(graphs, "iris", "2", is_default=False) == []
