"""Batch scoring through an inference graph: a graph's partitions are scored by the graph's own replicas.

A job that names a graph (``"service": "<graph>"``, no version) keeps the batch path it has for models: the
workers read and partition the input, halve failing spans, write parts and artifacts. Only the call differs:
instead of a handler loaded in the worker, each chunk goes to the graph's application through a
DeploymentHandle (``graph_node``, the entry a graph answers as a node of another graph), so it meets the same
nodes, splits and shadows as the online requests, and each model node batches it with its own traffic.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from modelpool.deployments.app_names import GRAPH_DEPLOYMENT, graph_app_name
from modelpool.deployments.handlers import Handler, ModelContext, check_outputs, count_rows
from modelpool.deployments.manifest import Manifest

#: a job's ``source`` when it scores through a graph: ``graph:{name}`` (a model's source is an archive)
GRAPH_SOURCE_PREFIX = "graph:"
#: how long one chunk may take through the graph before the worker gives up on it (its rows fail)
CHUNK_TIMEOUT_S = 600.0


def graph_source(name: str) -> str:
    return f"{GRAPH_SOURCE_PREFIX}{name}"


def graph_of(source: Optional[str]) -> Optional[str]:
    return source[len(GRAPH_SOURCE_PREFIX):] if source and source.startswith(GRAPH_SOURCE_PREFIX) else None


class GraphHandler(Handler):
    """A handler whose ``handle`` is one call of the graph; a refusal raises, so the batch path halves the span."""

    def __init__(self, graph: str) -> None:
        self.graph = graph
        self._handle: Any = None

    def predict(self, data: Any) -> Any:  # pragma: no cover - handle() calls the graph instead
        raise NotImplementedError

    def handle(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._handle is None:
            from ray import serve

            handle = serve.get_deployment_handle(GRAPH_DEPLOYMENT, app_name=graph_app_name(self.graph))
            # a batch worker calls from plain threads: the handle's router needs a loop of its own (Serve's
            # throughput mode, which the cluster runs in, puts it on the caller's loop, which is a replica's)
            handle._init(_run_router_in_separate_loop=True)
            self._handle = handle
        answer = self._handle.graph_node.remote(self.graph, None, inputs, None).result(timeout_s=CHUNK_TIMEOUT_S)
        if answer.status >= 400:
            raise RuntimeError(answer.error)
        outputs = answer.outputs
        wanted = self.context.requested_outputs
        if wanted:
            missing = [name for name in wanted if name not in outputs]
            if missing:
                raise RuntimeError(f"graph '{self.graph}' has no output {', '.join(missing)}; it answers "
                                   f"{', '.join(outputs)}")
            outputs = {name: outputs[name] for name in wanted}
        check_outputs(outputs, count_rows(inputs), lambda: f"graph '{self.graph}'")
        return outputs

    def describe(self) -> str:
        return f"graph '{self.graph}'"


def graph_handler(graph: str) -> tuple[GraphHandler, ModelContext]:
    """The handler and the context the batch path sets artifact_root and requested_outputs on."""
    manifest = Manifest(name=graph, version="1", handler="graph:handle")
    handler = GraphHandler(graph)
    context = ModelContext(model_dir=Path("."), manifest=manifest, parameters={})
    handler.initialize(context)
    return handler, context
