"""A stored graph resolved against the registry and placement, and the Serve app serving it (pure mapping)."""
from __future__ import annotations

import pytest

from modelpool.deployments.graph_plan import PlanNode
from modelpool.management.graph_configs import GraphConfig, graph_app_config, graph_metadata, graph_timeout_s, resolve_graph
from modelpool.management.graph_spec import parse_graph
from modelpool.management.serve_configs import front_routes, protocol_routes
from tests.unit.test_placement import record


def role(name: str, kind: str):
    found = record(name=name)
    return found.model_copy(update={"handler": f"roles:{name}", "manifest": {"service_type": kind}})


RECORDS = {(r.name, r.version): r for r in [
    record(version="1").model_copy(update={"manifest": {"inputs": [{"name": "input-0", "datatype": "FP64",
                                                                     "shape": [-1, 4]}]}}),
    record(version="2").model_copy(update={"response_timeout_s": 200}),
    role("prep", "TRANSFORMER")]}
SPEC = parse_graph("flow", {"graph": {"name": "in", "type": "TRANSFORMER", "model": "prep", "children": [{
    "name": "canary", "type": "ROUTER", "implementation": "SPLIT", "weights": [9, 1], "routing_header": "x-user",
    "children": [{"name": "stable", "model": "iris", "outputs": ["predict_proba"]},
                 {"name": "next", "model": "iris", "version": "2"}]}]}})


def test_nodes_bind_to_their_version_and_the_app_serving_it_now():
    root = resolve_graph(SPEC, RECORDS, {"iris": "1", "prep": "1"}, dedicated={("iris", "1")})
    assert (root.kind, root.role, root.source, root.handler) == ("role", "TRANSFORMER", "objects://prep/1", "roles:prep")
    split = root.children[0]
    assert (split.kind, split.weights, split.routing_header) == ("split", (9.0, 1.0), "x-user")
    stable, following = split.children
    assert (stable.version, stable.app, stable.deployment, stable.outputs) == ("1", "model:iris:1", "iris_v1",
                                                                               ("predict_proba",))
    assert (following.app, following.deployment) == ("generic-pool", "GenericPool"), "v2 has no replicas of its own"


def test_a_default_that_moves_moves_the_node_with_it():
    root = resolve_graph(SPEC, RECORDS, {"iris": "2", "prep": "1"}, dedicated=set())
    assert root.children[0].children[0].version == "2"


def test_a_model_no_longer_registered_fails_to_resolve():
    with pytest.raises(KeyError):
        resolve_graph(SPEC, {k: v for k, v in RECORDS.items() if k != ("iris", "2")}, {"iris": "1"}, set())


def test_metadata_timeout_and_the_app_config():
    root = resolve_graph(SPEC, RECORDS, {"iris": "1", "prep": "1"}, dedicated={("iris", "1")})
    assert graph_metadata(root, RECORDS) == {"inputs": []}, "the first node is a transformer declaring none"
    assert graph_metadata(root.children[0].children[0], RECORDS)["inputs"][0]["shape"] == [-1, 4]
    assert graph_timeout_s(root, RECORDS) == 320, "a chain waits for each model: 120 + 200"
    app = graph_app_config(GraphConfig(name="flow", root=root, metadata={}, num_cpus=0.1), "/cache", "0.1")
    assert (app.app_name, app.route_prefix, app.deployment_name) == ("graph:flow", "/v2/models/flow", "Graph")
    assert PlanNode.from_dict(app.deployment_options["user_config"]["plan"]) == root
    moved = graph_app_config(GraphConfig(name="flow", root=root.children[0], metadata={}, num_cpus=0.1), "/cache", "0.1")
    assert moved.deployment_options["version"] == app.deployment_options["version"], \
        "a new tree is user_config: applied in place, no restart"


def test_graphs_are_routes_of_the_front_and_the_protocol_fronts():
    assert front_routes([], ["flow"]) == {"flow/": "graph:flow"}
    assert protocol_routes([], {"flow": 320.0})["flow/"] == {"app": "graph:flow", "deployment": "Graph",
                                                            "timeout_s": 320.0}
