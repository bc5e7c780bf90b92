"""The Serve deployment serving one inference graph at ``/v2/models/{graph}``, as a model is served.

To every entry point a replica has (V2 REST JSON and binary, V2 gRPC, TorchServe's and KServe V1's
schemes, the replica's own port the front sends calls to) the graph is a model: :class:`GraphModel` answers
what they ask of a loaded model (``infer``, ``metadata``, the timeout and metrics), so a client cannot tell
the two apart. Behind ``infer`` the request runs through ``graph_runtime``: model and graph nodes are called
through DeploymentHandles (``graph_node`` on the replicas serving them, which batch the call with their other
requests), role nodes run here.

The tree (``graph_plan``) arrives in ``user_config``: a new weight, a new child or a model version moving to
other replicas is applied in place by ``reconfigure``, with no restart. Role handlers load once per archive;
requests in flight finish on the tree they started with.
"""
from __future__ import annotations

import contextvars
import json
import logging
from typing import Any, Awaitable, Mapping, Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from modelpool.cluster.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_RESPONSE_TIMEOUT_S
from modelpool.deployments import dataplane
from modelpool.deployments.announced_port import IN_FLIGHT_METRIC
from modelpool.deployments.app_names import GENERIC_POOL_ROUTE
from modelpool.deployments.errors import RequestError
from modelpool.deployments.graph_plan import PlanNode
from modelpool.deployments.graph_runtime import GraphExecutor, Message, NodeAnswer
from modelpool.deployments.codecs import v2_json
from modelpool.deployments.http_io import json_response, read_body, request_headers, sub_path
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.admission import refusal_message
from modelpool.deployments.metrics import GraphMetrics, ModelMetrics
from modelpool.deployments.model_calls import parse_model_call
from modelpool.deployments.node_ports import NodePorts
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.replica_base import HttpTarget, ReplicaBase
from modelpool.deployments.roles import RoleHandler
from modelpool.deployments.serving_options import ServingOptions
from modelpool.deployments.tensors import InferenceRequest, InferenceResult

logger = logging.getLogger("ray.serve")

#: the headers of the request being answered (a SPLIT's routing key is one): each call runs in a task of its own
_HEADERS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("graph_request_headers", default={})
GRAPH_PLATFORM = "modelpool_graph"
FEEDBACK_PATH = "/feedback"  # Seldon's feedback API, below the graph's route: /v2/models/{graph}/feedback


def parse_json_object(body: bytes, example: str) -> dict:
    """A JSON object body, or a 400 showing one."""
    try:
        parsed = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise RequestError(f"the body must be a JSON object, e.g. {example}", field="body")
    return parsed


class GraphModel:
    """A graph as the replica's entry points see a model (``LoadedModel``'s interface)."""

    takes_raw_payloads = False

    def __init__(self, name: str, executor: GraphExecutor, replica: str) -> None:
        self.name = name
        self.version = ""
        self.executor = executor
        self.options = ServingOptions()
        self.metrics = ModelMetrics(name, "graph", replica)
        self.response_timeout_s = DEFAULT_RESPONSE_TIMEOUT_S
        self.metadata_body: dict = {}

    async def infer(self, decode) -> InferenceResult:
        request: InferenceRequest = await decode()
        dataplane.model_request(request, [])  # rows of one batch, as a model checks them
        message = {tensor.name: tensor.data for tensor in request.inputs}
        outputs, parameters = await self.executor.run(message, _HEADERS.get())
        return InferenceResult(self.name, None, request, dataplane.select_outputs(outputs, request, self.name),
                               parameters=parameters)

    def metadata(self, versions: list[str]) -> dict:
        body = {"name": self.name, "versions": [], "platform": GRAPH_PLATFORM, "inputs": [], "outputs": []}
        return {**body, **self.metadata_body, "name": self.name}

    def overdue_call_s(self) -> Optional[float]:
        return None  # the graph runs no handler thread of its own that could hang; its models' replicas watch theirs

    def close(self) -> None:
        pass


class GraphServer(ReplicaBase):
    """One replica of a graph's application; undecorated (management wraps it with ``serve.deployment``)."""

    def __init__(self, name: str, cache_dir: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 object_store: Optional[dict] = None) -> None:
        super().__init__(cache_dir, object_store, max_body_bytes, {"x-modelpool-graph": name})
        self.name = name
        self.metrics = GraphMetrics(name)
        self._loaded: dict[str, LoadedModel] = {}  # role archives by load key
        self._handles: dict[tuple[str, str], Any] = {}
        self.node_ports = NodePorts()
        self.model = GraphModel(name, GraphExecutor(name, PlanNode(name=name, kind="shadow"), {}, self._call,
                                                    self.metrics), self.replica_id)
        self.port = self._announced_port(f"{GENERIC_POOL_ROUTE}/{name}")

    # --- the tree, live -------------------------------------------------------------------------

    def _apply(self, user_config: dict) -> None:
        root = PlanNode.from_dict(user_config["plan"])
        roles: dict[str, RoleHandler] = {}
        wanted: dict[str, LoadedModel] = {}
        for node in root.walk():
            if node.kind != "role":
                continue
            loaded = self._loaded.get(node.load_key) or wanted.get(node.load_key)
            if loaded is None:
                loaded = self._load(node.source or "", node.model or "", node.version or "", node.handler)
            wanted[node.load_key] = loaded
            if not isinstance(loaded.handler, RoleHandler) or loaded.handler.role != node.role:
                raise RuntimeError(f"graph '{self.name}' node '{node.name}': {node.model} version {node.version} "
                                   f"is not a {node.role}")
            roles[node.name] = loaded.handler
        for key, loaded in self._loaded.items():
            if key not in wanted:
                loaded.close()
        self._loaded = wanted
        model = self.model
        model.options = self.options
        model.response_timeout_s = float(user_config.get("response_timeout_s") or DEFAULT_RESPONSE_TIMEOUT_S)
        model.metadata_body = dict(user_config.get("metadata") or {})
        model.executor = GraphExecutor(self.name, root, roles, self._call, self.metrics)  # swapped in one step
        if self.options.replica_port:
            self.port.open()
        logger.debug("graph %s applied its tree (%d nodes)", self.name, sum(1 for _ in root.walk()))

    def _loaded_models(self) -> tuple:
        return (self.model,)

    def _refusal_message(self, max_ongoing: int, max_queued: int) -> str:
        return refusal_message(self.name, "graph", max_ongoing, max_queued)

    def _shed(self, route: str) -> None:
        self.model.metrics.shed(route)  # the graph's own model metrics (version "graph"), as its requests count

    # --- where calls go ---------------------------------------------------------------------------

    async def _http_target(self, request: Request) -> Response | HttpTarget:
        _HEADERS.set(request_headers(request))
        if sub_path(request) == FEEDBACK_PATH:
            return await self._feedback(request)
        call = parse_model_call(sub_path(request), request.method)
        self._check_version(call.version)
        return self.model, call, []

    async def _grpc_target(self, name: str, version: str) -> tuple[Any, list[str]]:
        self._check_name(name)
        self._check_version(version or None)
        return self.model, []

    async def _protocol_target(self, name: str, version: Optional[str]) -> tuple[Any, list[str]]:
        self._check_name(name)
        self._check_version(version)
        return self.model, []

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: Any = None) -> pb.ModelInferResponse:
        if grpc_context is not None:
            _HEADERS.set({key.lower(): value for key, value in grpc_context.invocation_metadata()
                          if isinstance(value, str)})
        return await super().ModelInfer(request, grpc_context)

    async def protocol_request(self, protocol: str, request: Request) -> Response:
        _HEADERS.set(request_headers(request))
        return await super().protocol_request(protocol, request)

    async def _feedback(self, request: Request) -> Response:
        """Seldon's feedback: ``{"reward": r, "routing": <the answer's routing>, "request": <V2 request>,
        "truth": <V2 request>}`` to the routers the routing names (request and truth are optional)."""
        if request.method != "POST":
            raise RequestError(f"method {request.method} not allowed here; use POST", status=405, field="method")
        body = parse_json_object(await read_body(request, self.max_body_bytes, self.options.body_timeout_s),
                                 '{"reward": 1.0, "routing": {"router": 0}}')
        reward = body.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise RequestError("reward must be a number (Seldon's reward, e.g. 1.0 for a good answer)", field="reward")
        routing = body.get("routing")
        if isinstance(routing, str):  # as the answer's parameters carry it: JSON text
            try:
                routing = json.loads(routing)
            except ValueError:
                routing = None
        if not isinstance(routing, dict) or not routing:
            raise RequestError("routing must be the answer's routing: an object of router -> child index, or its "
                               "JSON text", field="routing")
        message, truth = (self._tensors(body.get(key), key) for key in ("request", "truth"))
        told = await self.model.executor.feedback(routing, float(reward), message, truth)
        return json_response({"status": f"feedback sent to {', '.join(told) or 'no router'}", "routers": told},
                             headers=self._headers)

    @staticmethod
    def _tensors(value: Any, field: str) -> Optional[Message]:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise RequestError(f"{field} must be a V2 inference request (an object with inputs)", field=field)
        try:
            decoded = v2_json.parse_infer_request(value)
        except RequestError as exc:
            raise RequestError(f"{field}: {exc.message}", field=f"{field}.{exc.field}" if exc.field else field) from None
        return {tensor.name: tensor.data for tensor in decoded.inputs}

    def _check_name(self, name: str) -> None:
        if name != self.name:
            raise RequestError(f"this is graph '{self.name}', not '{name}'; the routes are being updated, retry",
                               status=503, field="model_name")

    def _check_version(self, version: Optional[str]) -> None:
        if version:
            raise RequestError(f"graph '{self.name}' has no versions; call /v2/models/{self.name}/infer (the "
                               "versions of its models are chosen in the graph)", status=404, field="version")

    async def _call(self, node: PlanNode, message: Message) -> NodeAnswer:
        """A model node on its replicas' own ports (``node_ports``: binary V2 REST, what a client's call costs), else, and
        for graph nodes, ``graph_node`` on its replicas through a DeploymentHandle."""
        if node.kind == "model":
            authorization = _HEADERS.get().get("authorization")
            if authorization or not self.options.inference_token_sha256:  # the caller's token, passed on
                answer = await self.node_ports.call(node, message, authorization)
                if answer is not None:
                    return answer
        key = (node.app or "", node.deployment or "")
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = serve.get_deployment_handle(key[1], app_name=key[0])
        try:
            return await handle.graph_node.remote(node.model or "", node.version, message, node.outputs)
        except Exception as exc:  # noqa: BLE001 - its replicas are gone or moving: the node is named, retry
            logger.warning("graph %s node %s: calling %s failed: %s", self.name, node.name, key[0], exc)
            return NodeAnswer({}, status=503, error=f"its replicas ({key[0]}) did not answer "
                                                    f"({type(exc).__name__}); retry")

    async def graph_node(self, name: str, version: Optional[str], message: Message,
                         outputs: Optional[tuple[str, ...]] = None) -> NodeAnswer:
        """This graph as a node of another graph."""
        try:
            answer, parameters = await self.model.executor.run(message, _HEADERS.get())
            return NodeAnswer(answer, parameters)
        except RequestError as exc:
            return NodeAnswer({}, status=exc.status, error=exc.message)
        finally:
            self.budget.count()

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {IN_FLIGHT_METRIC: float(self.port.in_flight)}

    def __del__(self) -> Optional[Awaitable[None]]:
        """Serve's shutdown hook (see ``ModelServer.__del__``): the port withdrawn and drained, the connections closed."""
        port, ports = getattr(self, "port", None), getattr(self, "node_ports", None)
        if port is None or not port.opened:
            return None

        async def close() -> None:
            await port.close()
            if ports is not None:
                ports.close()

        return close()
