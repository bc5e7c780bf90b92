"""The pure mapping from a stored graph to the Serve application that serves it.

A checked :class:`~modelpool.management.graph_spec.GraphSpec` is resolved against the registry and the placement
of the moment (``resolve_graph``): each model node gets its concrete version (the default's, when the node names
none) and the application that serves it now (its own, or the generic pool); each role node the archive its
graph's replicas load; each graph node that graph's application. The tree travels in ``user_config``, so a
default moving, a version scaled to the pool and back, or a new weight is applied in place by the graph's
replicas. Resolution runs on every ``apply``: a graph follows its models without anyone re-sending it.

No Ray here: tested in milliseconds (tests/unit/test_graph_configs.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from modelpool.cluster.settings import DEFAULT_MAX_WORKERS, DEFAULT_RESPONSE_TIMEOUT_S
from modelpool.deployments.app_names import (GENERIC_POOL_APP, GENERIC_POOL_DEPLOYMENT, GENERIC_POOL_ROUTE,
                                             GRAPH_DEPLOYMENT, app_name, deployment_name, graph_app_name)
from modelpool.deployments.autoscaling import POLICY as AUTOSCALING_POLICY
from modelpool.deployments.graph_plan import PlanNode
from modelpool.management.graph_spec import GraphNode, GraphSpec
from modelpool.management.registry import ModelRecord
from modelpool.management.serve_configs import (AppConfig, ReplicaOptions, _fingerprint, admission_limits,
                                                load_shedding)


@dataclass(frozen=True)
class GraphConfig(ReplicaOptions):
    """Everything management decides about one graph's application."""

    name: str
    root: PlanNode
    metadata: dict
    response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S
    min_replicas: int = 1
    max_replicas: int = DEFAULT_MAX_WORKERS


def resolve_graph(spec: GraphSpec, records: Mapping[tuple[str, str], ModelRecord], defaults: Mapping[str, str],
                  dedicated: set[tuple[str, str]]) -> PlanNode:
    """The spec's tree with every node bound to what runs it now; KeyError when a model it names is gone."""

    def resolve(node: GraphNode) -> PlanNode:
        children = tuple(resolve(child) for child in node.children)
        if node.implementation:
            return PlanNode(name=node.name, kind="split" if node.implementation == "SPLIT" else "shadow",
                            role="ROUTER", weights=tuple(node.weights) if node.weights else None,
                            routing_header=node.routing_header, children=children)
        if node.graph:
            return PlanNode(name=node.name, kind="graph", role=node.type, model=node.graph,
                            app=graph_app_name(node.graph), deployment=GRAPH_DEPLOYMENT, children=children)
        model = node.model or ""
        version = node.version or defaults[model]
        record = records[(model, version)]
        if node.type != "MODEL":
            return PlanNode(name=node.name, kind="role", role=node.type, model=model, version=version,
                            source=record.source, digest=record.digest or record.source, handler=record.handler,
                            children=children)
        own = (model, version) in dedicated
        return PlanNode(name=node.name, kind="model", model=model, version=version,
                        app=app_name(model, version) if own else GENERIC_POOL_APP,
                        deployment=deployment_name(model, version) if own else GENERIC_POOL_DEPLOYMENT,
                        outputs=tuple(node.outputs) if node.outputs else None, children=children)

    return resolve(spec.root)


def graph_metadata(root: PlanNode, records: Mapping[tuple[str, str], ModelRecord]) -> dict[str, Any]:
    """V2 metadata of the graph: the inputs of the first model a request meets (down the first children)."""
    node: Optional[PlanNode] = root
    while node is not None:
        if node.kind in ("model", "role") and node.model and node.role in ("MODEL", "TRANSFORMER"):
            manifest = records[(node.model, node.version or "")].manifest
            return {"inputs": [_tensor(t) for t in manifest.get("inputs", [])]}
        node = node.children[0] if node.children else None
    return {}


def _tensor(spec: dict) -> dict:
    return {"name": spec.get("name"), "datatype": spec.get("datatype"), "shape": list(spec.get("shape") or [])}


def graph_timeout_s(root: PlanNode, records: Mapping[tuple[str, str], ModelRecord]) -> float:
    """The graph answers within the sum of its model nodes' response timeouts (a chain waits for each)."""
    total = sum(records[(node.model, node.version or "")].response_timeout_s for node in root.walk()
                if node.kind == "model" and node.model)
    return max(total, DEFAULT_RESPONSE_TIMEOUT_S)


def graph_route(name: str) -> str:
    return f"{GENERIC_POOL_ROUTE}/{name}"


def graph_app_config(graph: GraphConfig, cache_dir: str, code_version: str) -> AppConfig:
    """Serve options for one graph (pure): the tree and the live settings in user_config."""
    init_kwargs = {"name": graph.name, "cache_dir": cache_dir, "max_body_bytes": graph.max_body_bytes,
                   "object_store": graph.object_store}
    ray_actor_options = {"num_cpus": graph.num_cpus}
    options: dict[str, Any] = {
        "name": GRAPH_DEPLOYMENT,
        "version": _fingerprint({"init": init_kwargs, "actor": ray_actor_options, "code": code_version}),
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": graph.max_ongoing_requests,
        **load_shedding(graph),  # Serve's router, for calls through Serve's ingress
        "autoscaling_config": {
            "min_replicas": graph.min_replicas,
            "initial_replicas": graph.min_replicas,
            "max_replicas": max(graph.max_replicas, graph.min_replicas),
            "target_ongoing_requests": graph.target_ongoing_requests,
            "policy": {"policy_function": AUTOSCALING_POLICY},
        },
        "user_config": {
            "plan": graph.root.to_dict(),
            "metadata": graph.metadata,
            "response_timeout_s": graph.response_timeout_s,
            "max_body_bytes": graph.max_body_bytes,
            **admission_limits(graph),  # the graph replica's own port, which the front's calls reach
            "serving": dict(graph.serving),
        },
        "health_check_period_s": graph.health_check_period_s,
        "graceful_shutdown_timeout_s": graph.response_timeout_s,
    }
    if graph.logging:
        options["logging_config"] = dict(graph.logging)
    return AppConfig(graph_app_name(graph.name), graph_route(graph.name), GRAPH_DEPLOYMENT, options, init_kwargs)
