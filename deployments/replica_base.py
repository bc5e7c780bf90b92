"""What every model replica shares: the dedicated ``ModelServer`` and the ``GenericPool`` differ only in how a call
finds its model.

Both answer the same three entry points: HTTP (``__call__``: V2 and plain JSON), gRPC (``ModelInfer``,
``ModelReady``, ``ModelMetadata``, called by Serve's gRPC ingress or a replica's own port) and another
server's URL scheme (``protocol_call``, from ``modelpool.deployments.protocol_front``). Each checks the inference
token, asks the subclass for the model (``_http_target``, ``_grpc_target``, ``_protocol_target``), runs
the call through ``modelpool.deployments.model_calls`` and counts it against the request budget. The server
settings arrive live through ``reconfigure``; ``check_health`` recycles a replica whose budget is spent
or whose model thread is stuck past its response_timeout.

Serve looks ``reconfigure``, ``check_health`` and the gRPC methods up on the replica object, so inherited
ones serve as well as the class's own. Subclasses stay undecorated: management wraps them with
``serve.deployment`` options.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from modelpool.cluster.defaults import DEFAULT_MAX_QUEUED_REQUESTS, DEFAULT_THREADS
from modelpool.deployments import dataplane, deadlines, grpc_entry, tracing
from modelpool.deployments.admission import Admission, Refusal
from modelpool.deployments.announced_port import AnnouncedPort
from modelpool.deployments.app_names import REPLICA_HEADER
from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.archive_fetch import local_archive, open_store
from modelpool.deployments.errors import RequestError
from modelpool.deployments.codecs import PROTOCOLS
from modelpool.deployments.graph_runtime import NodeAnswer
from modelpool.deployments.http_io import (body_reader, check_inference_token, codec_headers, error_response,
                                          read_protocol_request, request_headers)
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.log_flush import start_log_flusher
from modelpool.deployments.model_calls import (ModelCall, ProtocolAnswer, answer_model_call, answer_protocol_call,
                                     check_not_overdue, failure_response, overdue_error, protocol_answer,
                                     protocol_error)
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.replica_port import GrpcMethod
from modelpool.deployments.rest_entry import RestApp
from modelpool.deployments.serve_binds import pin_grpc_binds
from modelpool.deployments.serving_options import RequestBudget, ServingOptions
from modelpool.deployments.tensors import InferenceRequest

GRAPH_ROUTE = "graph"  # the ``route`` label of calls from graph nodes in modelpool's request metrics


#: What ``_http_target`` finds for a request: the model, the call and the versions its metadata lists.
HttpTarget = tuple[LoadedModel, ModelCall, list[str]]


class LoadFailed(Exception):
    """A model's archive failed to load in this replica (the generic pool loads on first use): the call is
    answered 500 with the reason, and the replica keeps serving its other models."""

    def __init__(self, name: str, version: Optional[str], cause: BaseException) -> None:
        super().__init__(f"model '{name}' failed to load: {type(cause).__name__}: {cause}")
        self.name = name
        self.version = version  # as the call named it (None: the default)
        self.cause = cause


class ReplicaBase:
    """The entry points, settings and health check of a replica that answers model calls."""

    def __init__(self, cache_dir: str, object_store: Optional[dict], max_body_bytes: int,
                 headers: Mapping[str, str] = ()) -> None:
        pin_grpc_binds()  # before Serve binds this replica's gRPC servers
        self.replica_id = replica_id()
        self.cache_dir = Path(cache_dir)
        self.store = open_store(object_store)
        self.max_body_bytes = max_body_bytes
        self._headers = {REPLICA_HEADER: self.replica_id, **dict(headers)}
        self.options = ServingOptions()
        self.budget = RequestBudget()
        # the port's load shedding (Serve's router does it on Serve's path): limits from user_config
        self.admission = Admission(DEFAULT_THREADS, DEFAULT_MAX_QUEUED_REQUESTS, on_refuse=self._shed)
        tracing.configure()  # --tracing: this replica's spans go where the cluster's do
        start_log_flusher()

    # --- what subclasses say: where a call's model is ----------------------------------------

    async def _http_target(self, request: Request) -> Union[Response, HttpTarget]:
        """The model a request below the app's route calls, or a Response when it is answered elsewhere."""
        raise NotImplementedError

    async def _grpc_target(self, name: str, version: str) -> tuple[LoadedModel, list[str]]:
        """The model a gRPC call names (``version`` "" for the default) and its versions."""
        raise NotImplementedError

    async def _protocol_target(self, name: str, version: Optional[str]) -> tuple[LoadedModel, list[str]]:
        """The model a protocol front's call names and its versions."""
        raise NotImplementedError

    def _apply(self, user_config: dict) -> None:
        """Take what is the subclass's own from ``user_config`` (versions, catalog, batching)."""

    def _loaded_models(self) -> Iterable[LoadedModel]:
        """The models whose handler calls the health check watches."""
        return ()

    def _refusal_message(self, max_ongoing: int, max_queued: int) -> str:
        """What a call refused by the port's load shedding reads (``admission``)."""
        return f"this replica is at its limit: {max_ongoing} requests running, {max_queued} waiting; retry later"

    def _shed(self, route: str) -> None:
        """One call refused by the port's load shedding (``route``: "rest" or "grpc"), for the metrics."""

    # --- Serve's hooks ---------------------------------------------------------------------

    def reconfigure(self, user_config: dict) -> None:
        """Applied in place, without a restart: server settings and the body limit, then the subclass's part."""
        self.options, self.max_body_bytes = ServingOptions.live(user_config, self.max_body_bytes)
        self.budget.configure(self.options)
        self._apply(user_config)
        max_ongoing = int(user_config.get("max_ongoing_requests", self.admission.max_ongoing))
        max_queued = int(user_config.get("max_queued_requests", self.admission.max_queued))
        self.admission.configure(max_ongoing, max_queued, Refusal.of(
            self._refusal_message(max_ongoing, max_queued), self._headers))

    def check_health(self) -> None:
        """Serve calls this periodically; failing it recycles the replica: once the request budget (--max-requests)
        is spent, or while a model's handler call runs past its response_timeout (it holds that model's thread)."""
        self.budget.check()
        for model in list(self._loaded_models()):
            check_not_overdue(model)

    # --- HTTP: V2 and plain JSON -------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        try:
            check_inference_token(request, self.options)
            target = await self._http_target(request)
        except RequestError as exc:
            return error_response(exc, self._headers, self.options.debug)
        except LoadFailed as failed:
            return failure_response(failed.name, failed.version or "default", failed.cause, self._headers,
                                    self.options.debug)
        if isinstance(target, Response):
            return target
        model, call, versions = target
        read = body_reader(request, self.max_body_bytes, self.options.body_timeout_s)
        try:
            return await answer_model_call(model, call, read, versions, self._headers, request_headers(request))
        finally:
            self.budget.count()

    # --- another server's URL scheme, passed on by modelpool.deployments.protocol_front ----------------------

    async def protocol_call(self, protocol: str, name: str, version: Optional[str], action: str, body: bytes,
                            request_headers: dict[str, str]) -> ProtocolAnswer:
        """A TorchServe or KServe V1 call, answered by its codec on the model's batcher (so it batches with V2
        requests); (status, body, headers) in the protocol's shape."""
        try:
            model, versions = await self._protocol_target(name, version)
            return await answer_protocol_call(model, protocol, action, body, versions, self._headers, request_headers)
        except RequestError as exc:
            return protocol_error(protocol, exc, self._headers, self.options.debug)
        except LoadFailed as failed:
            answer = failure_response(name, version or "default", failed.cause, self._headers, self.options.debug)
            return protocol_answer(protocol, 500, json.loads(answer.body), self._headers)
        finally:
            self.budget.count()

    async def protocol_request(self, protocol: str, request: Request) -> Response:
        """A TorchServe or KServe V1 HTTP request that the front sent straight to this replica's port (below the
        protocol's route prefix): read as ``ProtocolFront`` reads it, answered by ``protocol_call``."""
        codec = PROTOCOLS[protocol]
        try:
            call, body = await read_protocol_request(request, codec, self.options, self.max_body_bytes)
            if call.name is None:  # the front sends only calls that name a model; a list is the protocol front's
                raise RequestError(f"no model named in '{request.url.path}'", status=404, field="model_name")
        except RequestError as exc:
            status, payload, headers = protocol_error(protocol, exc, self._headers, self.options.debug)
            return Response(payload, status_code=status, headers=headers)
        status, payload, headers = await self.protocol_call(protocol, call.name, call.version, call.action, body,
                                                            codec_headers(request_headers(request)))
        return Response(payload, status_code=status, headers=headers)

    # --- V2 over gRPC (Serve's gRPC ingress and the replica's own port call these by the call's name) ---

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: Any = None) -> pb.ModelInferResponse:
        found = await self._grpc_model(request.model_name, request.model_version, grpc_context)
        if found is None:
            return pb.ModelInferResponse()
        try:
            return await grpc_entry.model_infer(found[0], request, grpc_context)
        finally:
            self.budget.count()

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context: Any = None) -> pb.ModelReadyResponse:
        return grpc_entry.model_ready(await self._grpc_model(request.name, request.version, grpc_context) is not None)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            grpc_context: Any = None) -> pb.ModelMetadataResponse:
        found = await self._grpc_model(request.name, request.version, grpc_context)
        return pb.ModelMetadataResponse() if found is None else grpc_entry.model_metadata(*found)

    async def _grpc_model(self, name: str, version: str, grpc_context: Any) -> Optional[tuple[LoadedModel, list[str]]]:
        """The token checked and the model found as over REST; None once the call's status says why not."""
        try:
            grpc_entry.check_token(grpc_context, self.options)
            return await self._grpc_target(name, version)
        except RequestError as exc:
            grpc_entry.fail(grpc_context, exc, self.options.debug)
        except LoadFailed as failed:
            grpc_entry.fail(grpc_context, RequestError(str(failed), status=500), self.options.debug)
        return None

    # --- a node of an inference graph (modelpool.deployments.graph_runtime), through a DeploymentHandle ---------

    async def graph_node(self, name: str, version: Optional[str], message: dict[str, np.ndarray],
                         outputs: Optional[tuple[str, ...]] = None) -> NodeAnswer:
        """Named arrays in, named arrays out: the model's batcher, timeout, metrics and request budget as for any
        call; a refusal or failure comes back as the answer's status and message (never a raised exception, which
        Ray would wrap)."""
        started = time.perf_counter()
        status, model = 200, None
        try:
            model, _ = await self._protocol_target(name, version)
            request = dataplane.message_request(message, outputs)

            async def decode() -> InferenceRequest:
                return request

            try:
                result = await deadlines.within(model.response_timeout_s, model.infer(decode))
            except asyncio.TimeoutError:
                raise overdue_error(model) from None
            return NodeAnswer(result.outputs)
        except RequestError as exc:
            status = exc.status
            return NodeAnswer({}, status=status, error=exc.message)
        except LoadFailed as failed:
            status = 500
            return NodeAnswer({}, status=status, error=str(failed))
        except Exception as exc:  # noqa: BLE001 - the handler failed: the graph names the node, this replica serves on
            status = 500
            return NodeAnswer({}, status=status, error=f"model '{name}' version '{version}' failed: "
                                                       f"{type(exc).__name__}: {exc}")
        finally:
            if model is not None:
                model.metrics.request(GRAPH_ROUTE, status, (time.perf_counter() - started) * 1000)
            self.budget.count()

    def _announced_port(self, root_path: str) -> AnnouncedPort:
        """The replica's own port (gRPC and REST, the front sends calls straight to it), answered by the same entry
        points as Serve's path; ``root_path`` is the V2 route the REST calls are read below."""
        return AnnouncedPort({
            "ModelInfer": GrpcMethod(pb.ModelInferRequest, self.ModelInfer),
            "ModelReady": GrpcMethod(pb.ModelReadyRequest, self.ModelReady),
            "ModelMetadata": GrpcMethod(pb.ModelMetadataRequest, self.ModelMetadata),
        }, self._headers, rest=RestApp(self.__call__, root_path, protocols={
            codec.ROUTE_PREFIX: functools.partial(self.protocol_request, protocol)
            for protocol, codec in PROTOCOLS.items()}, admission=self.admission), admission=self.admission)

    # --- loading -----------------------------------------------------------------------------

    def _load(self, source: str, name: str, version: str, handler: Optional[str] = None) -> LoadedModel:
        """Fetch and unpack the archive into the cache (``handler``: register's handler=), then load it."""
        archive = unpack_archive(local_archive(source, self.cache_dir, self.store), self.cache_dir, handler=handler)
        return LoadedModel(archive, name, version, replica=self.replica_id)


def replica_id() -> str:
    """Serve's id of this replica (it names the replica in answers' headers and in metrics)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return f"local-{os.getpid()}"
