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
from typing import Awaitable, Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from modelpool.cluster.settings import DEFAULT_MAX_BODY_BYTES
from modelpool.deployments import grpc_entry
from modelpool.deployments.admission import refusal_message
from modelpool.deployments.app_names import GENERIC_POOL_APP, GENERIC_POOL_DEPLOYMENT, GENERIC_POOL_ROUTE
from modelpool.deployments.errors import RequestError
from modelpool.deployments.http_io import codec_headers, read_body, request_headers, sub_path
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.model_calls import ModelCall, parse_model_call
from modelpool.deployments.replica_base import HttpTarget, ReplicaBase
from modelpool.deployments.announced_port import IN_FLIGHT_METRIC

logger = logging.getLogger("ray.serve")


class ModelServer(ReplicaBase):
    """Loads one model version and serves its V2 and plain JSON routes.

    Not decorated here: ``management`` wraps it with ``serve.deployment`` options computed from the
    model's config, so this class stays importable and testable without Serve.
    """

    def __init__(self, source: str, cache_dir: str, name: str, version: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 object_store: Optional[dict] = None, handler: Optional[str] = None) -> None:
        super().__init__(cache_dir, object_store, max_body_bytes)
        self.model = self._load(source, name, version, handler)  # handler: register's handler=
        self.name = name
        self.version = version
        self.versions = [version]
        self.pool_versions: set[str] = set()
        self.retired = False
        self.port = self._announced_port(f"{GENERIC_POOL_ROUTE}/{name}")

    def _apply(self, user_config: dict) -> None:
        """Batch size, delay and the version lists, applied without a restart; the replica's gRPC port opens."""
        self.model.options = self.options
        self.model.configure(*self.options.batch_limits(
            int(user_config.get("max_batch_size", self.model.batcher.max_batch_size)),
            float(user_config.get("max_batch_delay_ms", self.model.batcher.max_delay_s * 1000)) / 1000,
        ), user_config.get("response_timeout_s"))
        self.versions = [str(v) for v in user_config.get("versions", self.versions)]
        self.pool_versions = {str(v) for v in user_config.get("pool_versions", ())}
        self.retired = bool(user_config.get("retired"))  # unregistered: draining, but no longer answering for it
        if self.options.replica_port:
            self.port.open()
        logger.debug("model %s version %s applied user_config %s", self.name, self.version, user_config)

    def _loaded_models(self) -> tuple[LoadedModel, ...]:
        return (self.model,)

    def _refusal_message(self, max_ongoing: int, max_queued: int) -> str:
        return refusal_message(self.name, self.version, max_ongoing, max_queued)

    def _shed(self, route: str) -> None:
        self.model.metrics.shed(route)

    async def _http_target(self, request: Request) -> Response | HttpTarget:
        call = parse_model_call(sub_path(request), request.method)
        if self.retired:  # the version a request names: in its path, or in this app's route (not the default's)
            named = call.version or (self.version if request.scope.get("root_path", "").endswith(
                f"/versions/{self.version}") else None)
            raise self._unregistered(named)
        if call.version is not None and call.version != self.version:
            if call.version in self.pool_versions:
                return await self._forward_to_pool(call, request)
            raise RequestError(f"model '{self.name}' has no version '{call.version}'; "
                               f"served versions: {', '.join(self.versions)}", status=404, field="version")
        return self.model, call, self.versions

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

    async def _protocol_target(self, name: str, version: Optional[str]) -> tuple[LoadedModel, list[str]]:
        """The protocol front routes by a table management pushes; a call that arrives after its version moved is early."""
        if name != self.name or (version is not None and version != self.version):
            raise RequestError(f"model '{name}' version '{version or 'default'}' is served elsewhere now and the "
                               "routes are being updated; retry", status=503, field="version")
        return self.model, self.versions

    async def _grpc_target(self, name: str, version: str) -> tuple[LoadedModel, list[str]]:
        """A dedicated app answers only for its own version (the gRPC front routes every other one elsewhere)."""
        grpc_entry.check_version(version, self.name, self.version, self.versions)
        return self.model, self.versions

    def record_autoscaling_stats(self) -> dict[str, float]:
        """gRPC calls in flight on the replica's own port, which Serve's ongoing count does not see
        (``modelpool.deployments.autoscaling`` adds the two)."""
        return {IN_FLIGHT_METRIC: float(self.port.in_flight)}

    def __del__(self) -> Optional[Awaitable[None]]:
        """Serve's shutdown hook, after it drained its own requests; it awaits what this returns:
        withdrawing the gRPC port from the front, answering the calls in flight on it, closing it.
        (Not ``async def``: the garbage collector calls ``__del__`` too and would drop a coroutine.)"""
        port = getattr(self, "port", None)
        return port.close() if port is not None and port.opened else None

    async def _forward_to_pool(self, call: ModelCall, request: Request) -> Response:
        """One more hop, only for versions of this model that the generic pool serves."""
        body = (await read_body(request, self.max_body_bytes, self.options.body_timeout_s)
                if request.method == "POST" else b"")  # a 413/408 here is answered by __call__
        handle = serve.get_deployment_handle(GENERIC_POOL_DEPLOYMENT, app_name=GENERIC_POOL_APP)
        status, payload, headers = await handle.forward.remote(self.name, call.version, call.action, body,
                                                               codec_headers(request_headers(request)))
        return Response(payload, status_code=status, headers=headers)
