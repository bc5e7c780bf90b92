"""Running one request through an inference graph: Seldon's semantics on named numpy tensors, no transport.

A message is a dict of named arrays (rows first). Each node kind does one thing:

- **model** (and **graph**): the message goes to the model's (or graph's) replicas through the caller the
  replica gives (a DeploymentHandle call: the model batches it with its other requests); its outputs are the
  next message, passed to its one child when it has one;
- **TRANSFORMER**: ``transform_input`` -> its child -> ``transform_output``;
- **ROUTER**: ``route`` picks one child; **SPLIT** picks by weight or routing key (``traffic.Split``);
- **COMBINER**: every child gets the message at once, ``aggregate`` merges their outputs;
- **OUTLIER_DETECTOR**: ``score`` per row, attached to the answer; the message passes on unchanged;
- **SHADOW**: the first child answers; the others get a copy in the background, and their errors and latency
  go to the metrics only. A slow shadow never holds the answer: it is not awaited, and beyond
  ``MAX_SHADOWS_IN_FLIGHT`` a copy is dropped (and counted) rather than queued.

What the request went through comes back as V2 response parameters: ``graph_path`` (the nodes that answered,
comma-separated, as the ``x-modelpool-graph-path`` header has it), ``routing`` (each router's choice) and
``outlier_scores`` (per detector), the last two as JSON text because V2 parameter values are scalars.
A node that fails stops the request with its own status and the node named (``field: node:<name>``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Optional

import numpy as np

from modelpool.deployments import tracing
from modelpool.deployments.errors import RequestError
from modelpool.deployments.graph_plan import PlanNode
from modelpool.deployments.metrics import GraphMetrics
from modelpool.deployments.roles import RoleHandler
from modelpool.deployments.traffic import Split

logger = logging.getLogger("ray.serve")

Message = dict[str, np.ndarray]
GRAPH_PATH = "graph_path"
ROUTING = "routing"
OUTLIER_SCORES = "outlier_scores"
PATH_HEADER = "x-modelpool-graph-path"
MAX_SHADOWS_IN_FLIGHT = 256
INLINE_BELOW_S = 0.002  # a role hook faster than this runs on the event loop (a thread handoff costs ~50 us)


@dataclass(frozen=True)
class NodeAnswer:
    """What a model or graph replica hands back for one node call: outputs, or the refusal's status and message."""

    outputs: Message
    parameters: dict = field(default_factory=dict)
    status: int = 200
    error: str = ""


#: (node, message) -> the node's answer, from the replicas serving it
RemoteCall = Callable[[PlanNode, Message], Awaitable[NodeAnswer]]


@dataclass
class Trace:
    """What one request went through (primary traffic only)."""

    path: list[str] = field(default_factory=list)
    routing: dict[str, int] = field(default_factory=dict)
    outlier_scores: dict[str, list[float]] = field(default_factory=dict)

    def parameters(self) -> dict:
        answer: dict = {GRAPH_PATH: ",".join(self.path)}
        if self.routing:
            answer[ROUTING] = json.dumps(self.routing, sort_keys=True)
        if self.outlier_scores:
            answer[OUTLIER_SCORES] = json.dumps(self.outlier_scores, sort_keys=True)
        return answer


def node_error(graph: str, node: str, message: str, status: int = 500) -> RequestError:
    return RequestError(f"graph '{graph}' node '{node}': {message}", status=status, field=f"node:{node}")


class GraphExecutor:
    """One graph's tree, its loaded role handlers and the way to call remote nodes."""

    def __init__(self, graph: str, root: PlanNode, roles: Mapping[str, RoleHandler], call: RemoteCall,
                 metrics: Optional[GraphMetrics] = None) -> None:
        self.graph = graph
        self.root = root
        self.roles = roles  # node name -> its loaded handler
        self.call = call
        self.metrics = metrics or GraphMetrics(graph)
        self.shadows: set[asyncio.Task] = set()
        self.shadows_dropped = 0
        self._hook_seconds: dict[str, float] = {}

    async def run(self, message: Message, headers: Mapping[str, str]) -> tuple[Message, dict]:
        trace = Trace()
        outputs = await self._node(self.root, message, headers, trace, "primary")
        return outputs, trace.parameters()

    # --- one node ----------------------------------------------------------------------------

    async def _node(self, node: PlanNode, message: Message, headers: Mapping[str, str], trace: Trace,
                    traffic: str) -> Message:
        started = time.perf_counter()
        status = 200
        scope = tracing.span(f"graph {self.graph} node {node.name}", {
            "modelpool.graph": self.graph, "modelpool.graph.node": node.name, "modelpool.graph.kind": node.kind,
            "modelpool.graph.traffic": traffic}) if tracing.active() else tracing.NO_SCOPE
        with scope as traced:
            try:
                return await self._run_node(node, message, headers, trace, traffic)
            except RequestError as exc:
                status = exc.status
                raise
            except Exception as exc:  # noqa: BLE001 - a role hook raised: the node is named, the graph keeps serving
                status = 500
                raise node_error(self.graph, node.name, f"{type(exc).__name__}: {exc}") from exc
            finally:
                tracing.mark_error(traced, status)
                self.metrics.node(node.name, traffic, status, (time.perf_counter() - started) * 1000)

    async def _run_node(self, node: PlanNode, message: Message, headers: Mapping[str, str], trace: Trace,
                        traffic: str) -> Message:
        trace.path.append(node.name)
        kind = node.kind
        if kind in ("model", "graph"):
            answer = await self.call(node, message)
            if answer.status >= 400:
                raise node_error(self.graph, node.name, answer.error, answer.status)
            nested = answer.parameters.get(GRAPH_PATH)
            if kind == "graph" and nested:
                trace.path.extend(f"{node.name}/{step}" for step in str(nested).split(","))
            return await self._pass_on(node, answer.outputs, headers, trace, traffic)
        if kind == "split":
            weights = node.weights or ()
            key = headers.get(node.routing_header.lower()) if node.routing_header else None
            index = Split(weights).pick(key or None)
            trace.routing[node.name] = index
            return await self._node(node.children[index], message, headers, trace, traffic)
        if kind == "shadow":
            for child in node.children[1:]:
                self._shadow(child, message, headers)
            return await self._node(node.children[0], message, headers, trace, traffic)
        return await self._role(node, message, headers, trace, traffic)

    async def _pass_on(self, node: PlanNode, message: Message, headers: Mapping[str, str], trace: Trace,
                       traffic: str) -> Message:
        """Seldon's chain: a MODEL, TRANSFORMER or OUTLIER_DETECTOR with a child hands its output to it."""
        if not node.children:
            return message
        return await self._node(node.children[0], message, headers, trace, traffic)

    async def _role(self, node: PlanNode, message: Message, headers: Mapping[str, str], trace: Trace,
                    traffic: str) -> Message:
        handler = self.roles.get(node.name)
        if handler is None:
            raise node_error(self.graph, node.name, "its handler is not loaded on this replica yet; retry", 503)
        if node.role == "TRANSFORMER":
            transformed = await self._hook(node, handler.transform_input, message)
            answer = await self._pass_on(node, transformed, headers, trace, traffic)
            return await self._hook(node, handler.transform_output, answer)
        if node.role == "OUTLIER_DETECTOR":
            trace.outlier_scores[node.name] = await self._hook(node, handler.score, message)
            return await self._pass_on(node, message, headers, trace, traffic)
        if node.role == "ROUTER":
            index = self._child_index(node, await self._hook(node, handler.route, message))
            trace.routing[node.name] = index
            return await self._node(node.children[index], message, headers, trace, traffic)
        if node.role == "COMBINER":
            branches = [Trace() for _ in node.children]
            answers = await asyncio.gather(*(self._node(child, message, headers, branch, traffic)
                                             for child, branch in zip(node.children, branches)))
            for branch in branches:  # in child order, whichever finished first
                trace.path.extend(branch.path)
                trace.routing.update(branch.routing)
                trace.outlier_scores.update(branch.outlier_scores)
            return await self._hook(node, handler.aggregate, list(answers))
        raise node_error(self.graph, node.name, f"a {node.role} node cannot run here")

    def _child_index(self, node: PlanNode, choice: int | str) -> int:
        """A router's choice as a child's index; one that names no child is the router's fault: 500, named."""
        names = [child.name for child in node.children]
        if isinstance(choice, str) and choice in names:
            return names.index(choice)
        if isinstance(choice, int) and 0 <= choice < len(names):
            return choice
        raise node_error(self.graph, node.name, f"route returned {choice!r}, which is not a child; its children are "
                         f"{', '.join(f'{i}: {n}' for i, n in enumerate(names))}")

    async def _hook(self, node: PlanNode, fn: Callable, argument):
        """A role's hook on the event loop when it is quick, else on a thread (the loop keeps serving).

        Only the hook's own run is timed (in whichever thread runs it): timing the handoff too would make a
        microsecond hook look slow on a busy loop and keep it on threads for good."""
        def timed():
            started = time.perf_counter()
            try:
                return fn(argument)
            finally:
                elapsed = time.perf_counter() - started
                previous = self._hook_seconds.get(node.name)
                self._hook_seconds[node.name] = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed

        if self._hook_seconds.get(node.name, float("inf")) < INLINE_BELOW_S:
            return timed()
        return await asyncio.to_thread(timed)

    # --- Seldon's feedback ------------------------------------------------------------------------

    async def feedback(self, routing: Mapping[str, int], reward: float, message: Optional[Message],
                       truth: Optional[Message]) -> list[str]:
        """A reward for the choices an answer's ``routing`` lists, to each of those routers' ``send_feedback``
        (Seldon's: features, names, reward, truth, the child the router picked); the routers told."""
        routers = {node.name: node for node in self.root.walk() if node.kind == "role" and node.role == "ROUTER"}
        told = []
        for name, index in routing.items():
            node = routers.get(name)
            if node is None:
                known = ", ".join(routers) or "none"
                raise RequestError(f"routing names '{name}', which is not a ROUTER of graph '{self.graph}' (its "
                                   f"routers: {known}); send the routing an answer carried", field="routing")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(node.children):
                raise RequestError(f"routing.{name} is {index!r}; router '{name}' has children 0 to "
                                   f"{len(node.children) - 1}", field=f"routing.{name}")
            handler = self.roles.get(name)
            if handler is None or not handler.has("send_feedback"):
                continue  # a router without send_feedback takes no reward: not the caller's error
            await asyncio.to_thread(handler.send_feedback, message, reward, truth, index)
            told.append(name)
        return told

    # --- shadow traffic ------------------------------------------------------------------------

    def _shadow(self, node: PlanNode, message: Message, headers: Mapping[str, str]) -> None:
        if len(self.shadows) >= MAX_SHADOWS_IN_FLIGHT:
            self.shadows_dropped += 1
            self.metrics.node(node.name, "shadow", 429, 0.0)
            return
        task = asyncio.get_running_loop().create_task(self._shadow_call(node, message, headers))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    async def _shadow_call(self, node: PlanNode, message: Message, headers: Mapping[str, str]) -> None:
        try:
            await self._node(node, message, headers, Trace(), "shadow")
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is the metrics' business only
            logger.debug("graph %s: shadow node %s failed: %s", self.graph, node.name, exc)
