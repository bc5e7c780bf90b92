"""The Serve deployment that hosts one model version as its own application.

One replica loads the archive once, then answers the Open Inference Protocol V2 and the plain JSON
form on its own HTTP route (HAProxy sends requests straight to it: one hop).

Live settings arrive through ``user_config`` (``reconfigure``), which Serve applies in place: batch
size and delay change without restarting the replica. A request for another registered version of
the same model that has no application of its own (it is served by the generic pool) reaches this
app by longest-prefix routing; it is forwarded to the generic pool.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from deployments import grpc_entry, http_routes
from deployments.archive import unpack_archive
from deployments.archive_fetch import local_archive, open_store
from deployments.errors import RequestError
from deployments.loaded_model import LoadedModel
from deployments.grpc_port import GrpcMethod
from deployments.protos import open_inference_pb2 as pb
from deployments.log_flush import start_log_flusher
from deployments.replica_grpc import IN_FLIGHT_METRIC, ReplicaGrpcPort
from deployments.serving_options import RequestBudget, ServingOptions

logger = logging.getLogger("ray.serve")


class ModelServer:
    """Loads one model version and serves its V2 and plain JSON routes.

    Not decorated here: ``management`` wraps it with ``serve.deployment`` options computed from the
    model's config, so this class stays importable and testable without Serve.
    """

    def __init__(self, source: str, cache_dir: str, name: str, version: str, max_body_bytes: int = 16 << 20,
                 object_store: Optional[dict] = None, handler: Optional[str] = None) -> None:
        self.replica_id = _replica_id()
        archive_path = local_archive(source, Path(cache_dir), open_store(object_store))
        archive = unpack_archive(archive_path, Path(cache_dir), handler=handler)  # handler: register's handler=
        self.model = LoadedModel(archive, name, version, replica=self.replica_id)
        self.name = name
        self.version = version
        self.max_body_bytes = max_body_bytes
        self.versions = [version]
        self.pool_versions: set[str] = set()
        self.retired = False
        self.started_at = time.time()
        self._headers = {"x-modelpool-replica": self.replica_id}
        self.options = ServingOptions()
        self.budget = RequestBudget()
        self.grpc_port = ReplicaGrpcPort({
            "ModelInfer": GrpcMethod(pb.ModelInferRequest, self.ModelInfer),
            "ModelReady": GrpcMethod(pb.ModelReadyRequest, self.ModelReady),
            "ModelMetadata": GrpcMethod(pb.ModelMetadataRequest, self.ModelMetadata),
        }, self._headers)
        start_log_flusher()

    def reconfigure(self, user_config: dict) -> None:
        """Apply batch size, delay, server settings and the version lists without a restart."""
        self.options = ServingOptions.from_config(user_config.get("serving", {}))
        self.model.options = self.options
        self.budget.configure(self.options)
        self.model.configure(*self.options.batch_limits(
            int(user_config.get("max_batch_size", self.model.batcher.max_batch_size)),
            float(user_config.get("max_batch_delay_ms", self.model.batcher.max_delay_s * 1000)) / 1000,
        ), user_config.get("response_timeout_s"))
        self.versions = [str(v) for v in user_config.get("versions", self.versions)]
        self.pool_versions = {str(v) for v in user_config.get("pool_versions", ())}
        self.retired = bool(user_config.get("retired"))  # unregistered: draining, but no longer answering for it
        self.max_body_bytes = int(user_config.get("max_body_bytes", self.max_body_bytes))
        if self.options.replica_grpc_port:
            self.grpc_port.open()
        logger.debug("model %s version %s applied user_config %s", self.name, self.version, user_config)

    async def __call__(self, request: Request) -> Response:
        try:
            http_routes.check_inference_token(request, self.options)
            call = http_routes.parse_model_call(http_routes.sub_path(request), request.method)
            if self.retired:  # the version a request names: in its path, or in this app's route (not the default's)
                named = call.version or (self.version if request.scope.get("root_path", "").endswith(
                    f"/versions/{self.version}") else None)
                raise self._unregistered(named)
            if call.version is not None and call.version != self.version:
                if call.version in self.pool_versions:
                    return await self._forward_to_pool(call, request)
                raise RequestError(f"model '{self.name}' has no version '{call.version}'; "
                                   f"served versions: {', '.join(self.versions)}", status=404, field="version")
        except RequestError as exc:
            return http_routes.error_response(exc, self._headers, self.options.debug)
        read = http_routes.body_reader(request, self.max_body_bytes, self.options.body_timeout_s)
        try:
            return await http_routes.answer_model_call(self.model, call, read, self.versions, self._headers,
                                                       request.headers)
        finally:
            self.budget.count()

    def _unregistered(self, version: Optional[str]) -> RequestError:
        """This version was unregistered and drains: a request that still reaches it (a client connection kept
        open across HAProxy's reload) gets what the registry says now, not an answer from a removed model."""
        others = [v for v in self.versions if v != self.version]
        if version in (None, self.version) and not others:
            return RequestError(f"model '{self.name}' is not registered", status=404, field="model_name")
        if version == self.version:
            return RequestError(f"model '{self.name}' has no version '{version}'; versions: {', '.join(others)}",
                                status=404, field="version")
        return RequestError(f"the route of model '{self.name}' moved to version(s) {', '.join(others)} while this "
                            "connection was open; retry", status=503, field="version")

    async def protocol_call(self, protocol: str, name: str, version: Optional[str], action: str, body: bytes,
                            request_headers: dict[str, str]) -> http_routes.ProtocolAnswer:
        """Entry point for ``deployments.protocol_front``: a TorchServe or KServe V1 call, answered by its codec on
        this replica's batcher (so it batches with V2 requests); (status, body, headers) in the protocol's shape."""
        try:
            if name != self.name or (version is not None and version != self.version):
                raise RequestError(f"model '{name}' version '{version or 'default'}' is served elsewhere now and the "
                                   "routes are being updated; retry", status=503, field="version")
            return await http_routes.answer_protocol_call(self.model, protocol, action, body, self.versions,
                                                          self._headers, request_headers)
        except RequestError as exc:
            return http_routes.protocol_error(protocol, exc, self._headers, self.options.debug)
        finally:
            self.budget.count()

    # --- V2 over gRPC (Serve's gRPC ingress calls these by the call's name) ---------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: Any = None) -> pb.ModelInferResponse:
        if not self._grpc_allowed(request.model_version, grpc_context):
            return pb.ModelInferResponse()
        try:
            return await grpc_entry.model_infer(self.model, request, grpc_context)
        finally:
            self.budget.count()

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context: Any = None) -> pb.ModelReadyResponse:
        return grpc_entry.model_ready(self._grpc_allowed(request.version, grpc_context))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            grpc_context: Any = None) -> pb.ModelMetadataResponse:
        if not self._grpc_allowed(request.version, grpc_context):
            return pb.ModelMetadataResponse()
        return grpc_entry.model_metadata(self.model, self.versions)

    def _grpc_allowed(self, version: str, grpc_context: Any) -> bool:
        """The token and the version, checked as over REST; False once the call's status says why not."""
        try:
            grpc_entry.check_token(grpc_context, self.options)
            grpc_entry.check_version(version, self.name, self.version, self.versions)
        except RequestError as exc:
            grpc_entry.fail(grpc_context, exc, self.options.debug)
            return False
        return True

    def record_autoscaling_stats(self) -> dict[str, float]:
        """gRPC calls in flight on the replica's own port, which Serve's ongoing count does not see
        (``deployments.autoscaling`` adds the two)."""
        return {IN_FLIGHT_METRIC: float(self.grpc_port.in_flight)}

    def __del__(self) -> Optional[Awaitable[None]]:
        """Serve's shutdown hook, after it drained its own requests; it awaits what this returns:
        withdrawing the gRPC port from the front, answering the calls in flight on it, closing it.
        (Not ``async def``: the garbage collector calls ``__del__`` too and would drop a coroutine.)"""
        port = getattr(self, "grpc_port", None)
        return port.close() if port is not None and port.opened else None

    def check_health(self) -> None:
        """Serve calls this periodically; failing it recycles the replica: once the request budget is
        spent, or while a handler call is past the model's response_timeout (it holds the model thread)."""
        self.budget.check()
        http_routes.check_not_overdue(self.model)

    async def _forward_to_pool(self, call: http_routes.ModelCall, request: Request) -> Response:
        """One more hop, only for versions of this model that the generic pool serves."""
        body = (await http_routes.read_body(request, self.max_body_bytes, self.options.body_timeout_s)
                if request.method == "POST" else b"")  # a 413/408 here is answered by __call__
        handle = serve.get_deployment_handle(http_routes.GENERIC_POOL_DEPLOYMENT, app_name=http_routes.GENERIC_POOL_APP)
        status, payload, headers = await handle.forward.remote(self.name, call.version, call.action, body,
                                                               http_routes.codec_headers(request.headers))
        return Response(payload, status_code=status, headers=headers)


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return f"local-{os.getpid()}"
