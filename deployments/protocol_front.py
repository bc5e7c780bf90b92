"""The fronts for other servers' URL schemes: TorchServe's ``/predictions`` and KServe V1's ``/v1``.

Serve routes HTTP by longest route prefix, one prefix per application, and every model version's
application owns a ``/v2/models/...`` prefix, so ``/predictions/iris`` cannot reach iris's replicas
by itself. Each scheme gets a small application at its prefix (``ProtocolFront``, one per protocol)
that checks the inference token, parses the path with the protocol's codec, reads the body and hands
it, undecoded, through a DeploymentHandle to ``protocol_call`` of whichever replica serves that
version: the model's own application when it has one (a routing table that management pushes through
``user_config``, as it does the gRPC front's), else the generic pool, which serves every other model
and answers 404 for unknown ones. The replica decodes, batches with its V2 requests and encodes, so the
hop carries bytes both ways and the answer's headers (replica, batch size) come back untouched.

The hop is the price: about 2 ms (p50 1.4-2.7 ms over five runs) more than the same plain-JSON codec on
the V2 path, at c=1 on a 2-core machine. The front's own HTTP handling costs what any replica's does; the rest is the
DeploymentHandle call (its serializer makes no measurable difference). V2 keeps its one hop. A call
for a version whose replicas are still starting waits for them, up to the model's response_timeout,
rather than failing. Every answer, refusals included, is in the protocol's own shape
(codec ``error_body``); a call no replica takes in time, or one whose replica went away, is a 503
with ``Retry-After``; readiness gives up after ``READY_TIMEOUT_S``.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException
from starlette.requests import Request
from starlette.responses import Response

from modelpool.cluster.settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_RESPONSE_TIMEOUT_S
from modelpool.deployments import deadlines
from modelpool.deployments.app_names import GENERIC_POOL_APP, GENERIC_POOL_DEPLOYMENT
from modelpool.deployments.codecs import PROTOCOLS
from modelpool.deployments.codecs.base import ProtocolCall
from modelpool.deployments.errors import RequestError
from modelpool.deployments.front_config import route_key
from modelpool.deployments.http_io import JSON, codec_headers, read_protocol_request, request_headers
from modelpool.deployments.log_flush import start_log_flusher
from modelpool.deployments.model_calls import ProtocolAnswer, protocol_answer, protocol_error
from modelpool.deployments.redact import public_message
from modelpool.deployments.serve_binds import pin_grpc_binds
from modelpool.deployments.serving_options import ServingOptions

logger = logging.getLogger("ray.serve")

HOP_SLACK_S = 10.0  # past the model's own response_timeout (which answers 504 itself): the call found no replica
READY_TIMEOUT_S = 5.0  # a readiness probe is answered 503 rather than held while replicas start or a model loads


@dataclass(frozen=True)
class Target:
    """Where a model version's calls go: a Serve application and its deployment, and how long the model may take."""

    app: str
    deployment: str
    timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S


POOL = Target(GENERIC_POOL_APP, GENERIC_POOL_DEPLOYMENT)


def pick_target(routes: Mapping[str, Target], call: ProtocolCall, pool: Target = POOL) -> Target:
    """The model's own app for a dedicated version (``name/`` is the default's key), else the generic pool."""
    return routes.get(route_key(call.name or "", call.version or "")) or pool


class ProtocolFront:
    """One protocol's routes; not decorated here: management wraps it with Serve options (like ModelServer)."""

    def __init__(self, protocol: str, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        pin_grpc_binds()  # before Serve binds this replica's gRPC servers
        self.protocol = protocol
        self.codec = PROTOCOLS[protocol]
        self.max_body_bytes = max_body_bytes
        self.routes: dict[str, Target] = {}
        self.pool = POOL
        self.models: list[str] = []
        self.options = ServingOptions()
        self._handles: dict[tuple[str, str], Any] = {}
        start_log_flusher()

    def reconfigure(self, user_config: dict) -> None:
        """``routes``: {"name/version": {"app", "deployment", "timeout_s"}}; ``models``: every registered name."""
        self.routes = {key: Target(**target) for key, target in user_config.get("routes", {}).items()}
        self.pool = Target(POOL.app, POOL.deployment, float(user_config.get("pool_timeout_s", POOL.timeout_s)))
        self.models = sorted(user_config.get("models", []))
        self.options, self.max_body_bytes = ServingOptions.live(user_config, self.max_body_bytes)
        wanted = {(target.app, target.deployment) for target in [*self.routes.values(), self.pool]}
        for key in [key for key in self._handles if key not in wanted]:
            del self._handles[key]

    async def __call__(self, request: Request) -> Response:
        try:
            call, body = await read_protocol_request(request, self.codec, self.options, self.max_body_bytes)
            if call.action == "models":
                return Response(self.codec.models_body(self.models), media_type=JSON)
            status, payload, headers = await self.forward(call, body, codec_headers(request_headers(request)))
        except RequestError as exc:
            status, payload, headers = protocol_error(self.protocol, exc, {}, self.options.debug)
        return Response(payload, status_code=status, headers=headers)

    async def forward(self, call: ProtocolCall, body: bytes, headers: dict[str, str]) -> ProtocolAnswer:
        """One handle call to the replica that serves the version; 503 when none takes it."""
        target = pick_target(self.routes, call, self.pool)
        response = self._handle(target).protocol_call.remote(self.protocol, call.name, call.version, call.action,
                                                             body, headers)
        timeout_s = READY_TIMEOUT_S if call.action == "ready" else target.timeout_s + HOP_SLACK_S
        try:
            return await deadlines.within(timeout_s, response)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestError(f"model '{call.name}' is not ready: no replica answered within {timeout_s:g} s "
                               "(its replicas may be starting or loading it); retry", status=503,
                               field="model_name") from None
        except BackPressureError as exc:  # Serve's router found the model's queue full (max_queued_requests)
            return protocol_answer(self.protocol, 429, {
                "error": f"model '{call.name}' is at its limit: {exc.args[1]} requests already wait for its replicas "
                         "(max_queued_requests); retry after the Retry-After seconds, or add workers (scale "
                         "max_worker) or raise max_queued_requests", "field": "max_queued_requests"}, {})
        except (RayServeException, RayActorError) as exc:  # the app went away or its replica died under the call
            logger.warning("%s call for %s went to %s and failed: %r", self.protocol, call.name, target.app, exc)
            raise RequestError(f"the replicas of model '{call.name}' are being replaced or its routes updated; retry",
                               status=503, field="model_name") from None
        except Exception as exc:  # noqa: BLE001 - a bug past the codec: say what, keep serving
            logger.error("%s call for %s failed in %s", self.protocol, call.name, target.app, exc_info=exc)
            message = f"model '{call.name}' failed: {type(exc).__name__}: {exc}"
            error = {"error": message if self.options.debug else public_message(message)}
            return protocol_answer(self.protocol, 500, error, {})

    def _handle(self, target: Target) -> Any:
        """A cached handle per app: created without asking the controller, so the first call pays nothing extra."""
        key = (target.app, target.deployment)
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = serve.get_deployment_handle(target.deployment, app_name=target.app,
                                                                      _check_exists=False)
        return handle

