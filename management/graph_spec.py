"""Inference graphs as ``PUT /graphs/{name}`` takes them, checked whole before anything is built.

The shape is Seldon Core's ``graph``: a nested tree of nodes, each with a ``name``, a ``type`` (Seldon's
service types: MODEL, TRANSFORMER, ROUTER, COMBINER, OUTLIER_DETECTOR) and ``children``, so a Seldon
user's graph reads the same here. A node is one of:

- a registered model version (``model``, optional ``version``: the default version when left out), whose
  handler's role must be the node's ``type``;
- another graph (``graph``), served as a model is;
- a built-in router (``type: ROUTER`` with ``implementation``): ``SPLIT`` sends each request to one child by
  ``weights`` (a canary), the same child for the same value of ``routing_header``; ``SHADOW`` answers from the
  first child and copies every request to the others, whose answers are dropped.

Pure: a request body and what is registered -> a :class:`GraphSpec`, or a :class:`RequestError` (400) that
names the node at fault and the fix. No Ray here, so every rule is tested in milliseconds
(tests/unit/test_graph_spec.py).
"""
from __future__ import annotations

from typing import Callable, Iterator, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import ServiceType, check_segment

Role = ServiceType  # a node's type is a handler's role, as the archive manifest declares it
BUILT_IN_ROUTERS = ("SPLIT", "SHADOW")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: bounds on hostile input: a graph this deep or this large is a mistake, and each node costs a hop
MAX_DEPTH = 16
MAX_NODES = 64
#: how many children each role takes (Seldon's semantics: a MODEL, TRANSFORMER or OUTLIER_DETECTOR with a
#: child passes its output on to it; a ROUTER picks one child; a COMBINER merges the outputs of all)
CHILDREN: dict[str, tuple[int, int]] = {
    "MODEL": (0, 1),
    "TRANSFORMER": (0, 1),
    "OUTLIER_DETECTOR": (0, 1),
    "ROUTER": (1, MAX_NODES),
    "COMBINER": (2, MAX_NODES),
    "SPLIT": (2, MAX_NODES),
    "SHADOW": (2, MAX_NODES),  # the graph's node count bounds these
}

#: (model name, version or None for the default) -> the role its handler declares, None when not registered
RoleOf = Callable[[str, Optional[str]], Optional[str]]


class GraphNode(BaseModel):
    """One node of a graph (Seldon's ``PredictiveUnit``, with modelpool's way of naming what runs it)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    type: Role = "MODEL"
    model: Optional[str] = Field(None, pattern=NAME_PATTERN)
    version: Optional[str] = Field(None, pattern=NAME_PATTERN)
    graph: Optional[str] = Field(None, pattern=NAME_PATTERN)
    implementation: Optional[Literal["SPLIT", "SHADOW"]] = None
    weights: Optional[list[float]] = None
    routing_header: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: a model node's outputs to ask for (a scikit-learn model gives predict_proba only when asked)
    outputs: Optional[list[str]] = Field(None, min_length=1, max_length=64)
    children: list["GraphNode"] = Field(default_factory=list)

    @property
    def kind(self) -> str:
        """The key of :data:`CHILDREN`: the built-in router's name, else the role."""
        return self.implementation or self.type

    def walk(self, depth: int = 1) -> Iterator[tuple["GraphNode", int]]:
        yield self, depth
        for child in self.children:
            yield from child.walk(depth + 1)


class GraphSpec(BaseModel):
    """A graph as stored and served: its name and its root node."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    root: GraphNode

    def nodes(self) -> list[GraphNode]:
        return [node for node, _ in self.root.walk()]

    def models(self) -> set[tuple[str, Optional[str]]]:
        """The model versions the graph calls (version None: the default one)."""
        return {(node.model, node.version) for node in self.nodes() if node.model}

    def graphs(self) -> set[str]:
        return {node.graph for node in self.nodes() if node.graph}


def _fail(node: str, message: str, fix: str) -> RequestError:
    return RequestError(f"graph node '{node}': {message}; {fix}", field=f"node:{node}")


def parse_graph(name: str, body: object) -> GraphSpec:
    """The request body (``{"graph": {...}}``, Seldon's key, or the root node itself: a body with a ``name``)
    as a spec; shape only."""
    try:
        check_segment(name, "graph name")  # a URL path segment, an app name and a registry key
    except ValueError as exc:
        raise RequestError(str(exc), field="name") from None
    root = body.get("graph") if isinstance(body, dict) and "name" not in body else body
    if not isinstance(root, dict):
        raise RequestError('the body must be a JSON object: {"graph": {"name": ..., "type": ..., "children": [...]}}',
                           field="graph")
    try:
        return GraphSpec(name=name, root=root)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"][1:]) or "graph"
        raise RequestError(f"graph field '{where}': {error['msg']}; see the graph shape in the README",
                           field=where) from None


def check_graph(spec: GraphSpec, role_of: RoleOf, graphs: Mapping[str, GraphSpec]) -> None:
    """Every rule a graph must meet against what is registered; ``graphs`` are the other stored graphs."""
    walked = list(spec.root.walk())
    if len(walked) > MAX_NODES:
        raise _fail(walked[MAX_NODES][0].name, f"the graph has more than {MAX_NODES} nodes",
                    "split it into graphs that call each other")
    for node, depth in walked:
        if depth > MAX_DEPTH:
            raise _fail(node.name, f"the graph is deeper than {MAX_DEPTH} nodes", "flatten it")
    seen: set[str] = set()
    for node, _ in walked:
        if node.name in seen:
            raise _fail(node.name, "another node has the same name", "give every node a name of its own")
        seen.add(node.name)
        _check_target(node, role_of, {**graphs, spec.name: spec})  # a graph calling itself is a cycle, found below
        _check_children(node)
    _check_cycles(spec, graphs)


def _check_target(node: GraphNode, role_of: RoleOf, graphs: Mapping[str, GraphSpec]) -> None:
    targets = [field for field in ("model", "graph", "implementation") if getattr(node, field)]
    if len(targets) != 1:
        raise _fail(node.name, "a node runs exactly one of 'model', 'graph' or 'implementation'"
                    f" (found {', '.join(targets) or 'none'})",
                    "name a registered model, another graph, or a built-in router (SPLIT, SHADOW)")
    if node.implementation and node.type != "ROUTER":
        raise _fail(node.name, f"implementation {node.implementation} is a router", "set \"type\": \"ROUTER\"")
    if node.version and not node.model:
        raise _fail(node.name, "'version' goes with 'model'", "name the model, or drop the version")
    if node.outputs is not None and (not node.model or node.type != "MODEL"):
        raise _fail(node.name, "'outputs' are asked of a MODEL node's model", "drop them from this node")
    if node.weights is not None and node.implementation != "SPLIT":
        raise _fail(node.name, "'weights' belong to a SPLIT router", "set \"implementation\": \"SPLIT\" or drop them")
    if node.routing_header is not None and node.implementation != "SPLIT":
        raise _fail(node.name, "'routing_header' belongs to a SPLIT router",
                    "set \"implementation\": \"SPLIT\" or drop it")
    if node.model:
        role = role_of(node.model, node.version)
        shown = f"{node.model}" + (f" version {node.version}" if node.version else " (default version)")
        if role is None:
            raise _fail(node.name, f"model {shown} is not registered", "register it first (POST /models)")
        if role != node.type:
            raise _fail(node.name, f"model {shown} is a {role}, the node says {node.type}",
                        f"set \"type\": \"{role}\", or register the handler with service_type={node.type}")
    if node.graph and node.graph not in graphs:
        raise _fail(node.name, f"graph '{node.graph}' does not exist", "create it first (PUT /graphs/{name})")


def _check_children(node: GraphNode) -> None:
    low, high = CHILDREN[node.kind]
    count = len(node.children)
    if not low <= count <= high:
        wanted = f"exactly {low}" if low == high else (f"at most {high}" if low == 0 else f"at least {low}")
        raise _fail(node.name, f"a {node.kind} takes {wanted} children, it has {count}",
                    "add or remove children")
    if node.graph and node.children:
        raise _fail(node.name, "a graph node takes no children", "put them in that graph, or after this node's parent")
    if node.implementation == "SPLIT":
        weights = node.weights
        if weights is None or len(weights) != count:
            raise _fail(node.name, f"a SPLIT needs one weight per child ({count})", "set \"weights\": [...]")
        if any(weight < 0 for weight in weights):
            raise _fail(node.name, "a weight is negative", "use weights of 0 or more")
        if sum(weights) <= 0:
            raise _fail(node.name, "the weights add up to 0", "give at least one child a positive weight")


def _check_cycles(spec: GraphSpec, graphs: Mapping[str, GraphSpec]) -> None:
    """A graph that reaches itself through graph nodes would call itself forever."""
    stored = {**graphs, spec.name: spec}

    def visit(name: str, path: tuple[str, ...]) -> None:
        for node in stored[name].nodes():
            if not node.graph or node.graph not in stored:
                continue
            if node.graph in path:
                loop = " -> ".join((*path, node.graph))
                raise _fail(node.name, f"graph '{node.graph}' is called in a cycle ({loop})",
                            "a graph must not call itself through other graphs")
            visit(node.graph, (*path, node.graph))

    visit(spec.name, (spec.name,))


def referencing_graphs(graphs: Mapping[str, GraphSpec], model: str, version: str, is_default: bool) -> list[str]:
    """The graphs that call ``model`` ``version`` (by version, or by default when it is the default):
    unregistering it would break them (a 409 names them)."""
    return sorted(name for name, spec in graphs.items()
                  if (model, version) in spec.models() or (is_default and (model, None) in spec.models()))
