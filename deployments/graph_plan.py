"""A graph as its replicas run it: every node resolved to what executes it.

Management checks a graph request (``management.graph_spec``) and resolves each node against the registry
and the placement of the moment: a model node to the Serve application and deployment that serve its version
(its own app, or the generic pool), a role node (TRANSFORMER, ROUTER, COMBINER, OUTLIER_DETECTOR) to the
archive the graph's replicas load, a graph node to that graph's application. The result travels to the
graph's replicas in ``user_config`` as plain JSON, so a new weight or a version moving to other replicas
is applied live, without a restart. Pure: no Ray, no management.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, Optional

#: how a node runs: ``model`` and ``graph`` nodes are called through a DeploymentHandle (the model keeps its own
#: batching and autoscaling), ``role`` nodes run in the graph's replica (glue code: a hop each would cost more than
#: they do), ``split`` and ``shadow`` are the built-in routers
NodeKind = Literal["model", "graph", "role", "split", "shadow"]


@dataclass(frozen=True)
class PlanNode:
    name: str
    kind: NodeKind
    role: str = "MODEL"                  # Seldon's type of the node
    model: Optional[str] = None          # model and graph nodes: what they call; role nodes: whose archive
    version: Optional[str] = None        # the concrete version (a node naming none gets the default's)
    app: Optional[str] = None            # model and graph nodes: the Serve application they call
    deployment: Optional[str] = None
    source: Optional[str] = None         # role nodes: the archive to load, its digest, its handler
    digest: Optional[str] = None
    handler: Optional[str] = None
    outputs: Optional[tuple[str, ...]] = None  # model nodes: the outputs asked of the model (None: its default)
    weights: Optional[tuple[float, ...]] = None
    routing_header: Optional[str] = None
    children: tuple["PlanNode", ...] = field(default_factory=tuple)

    def walk(self) -> Iterator["PlanNode"]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, ())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PlanNode":
        values = dict(data)
        values["children"] = tuple(cls.from_dict(child) for child in values.get("children", ()))
        for key in ("outputs", "weights"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def load_key(self) -> str:
        """What makes a loaded role handler current: its archive, digest and handler."""
        return f"{self.model}:{self.version}:{self.digest}:{self.handler}"
