"""REST calls on a model replica's own port: the replica's HTTP entry point without Serve's request path.

Why: under load a replica spends more on Serve's per-request machinery (request metadata, a
disconnect-watching receive task, tracing context, queue accounting, its ASGI wrappers) than on
modelpool's own answer path (BENCHMARKS.md, issue 15). The replica's port (``replica_port``: uvicorn,
HTTP/1.1 and HTTP/2 on one socket) already answers gRPC; this app answers everything else on it by
calling the same entry point Serve's path calls (:meth:`ReplicaBase.__call__`), so token checks,
body limits, deadlines, errors, metrics and the request budget are the same code.

What Serve's path adds around a request, and its users see, is kept here:

- the ``x-request-id`` answer header: the caller's, or one made up;
- the request id on every log line the call writes (Serve's log context, so the replica's log reads
  the same whichever path a request took) and an access-log line per call in Serve's format (``access_log``);
- the count of calls in flight, which the replica reports to the autoscaler (``record_autoscaling_stats``)
  and drains before it stops;
- the replica's load shedding (``admission``): an inference call (POST) past ``max_ongoing_requests`` waits, and
  past ``max_queued_requests`` more is answered 429 with ``Retry-After`` before its body is read, as Serve's
  router answers on its path;
- with ``--tracing``, the request's server span (``tracing``: an incoming ``traceparent`` honoured) and its
  trace id in the access line.
"""
from __future__ import annotations

import time
import uuid
from typing import Awaitable, Callable, Mapping, Optional

from starlette.requests import Request
from starlette.responses import Response

from modelpool.deployments import tracing
from modelpool.deployments.access_log import ACCESS_LOG, AccessLog
from modelpool.deployments.admission import Admission, Refusal
from modelpool.deployments.replica_port import InFlight

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's ``x-request-id``, else a new one (Serve makes up a uuid4 too)."""
    for key, value in headers:
        if key == _REQUEST_ID_KEY:
            return value.decode("latin-1")
    return str(uuid.uuid4())


def set_log_context(request_id: str, route: str, app_name: str) -> None:
    """Serve's request context for this task: every log line the call writes carries the request id.

    Serve keeps it in a context variable of ``ray.serve.context``; each ASGI call runs in a task of
    its own, so setting it here touches no other request.
    """
    from ray.serve import context

    context._set_request_context(route=route, request_id=request_id, app_name=app_name)


Answer = Callable[[Request], Awaitable[Response]]


class RestApp:
    """The ASGI app of a replica port's REST calls; ``answer`` is the replica's HTTP entry point.

    ``root_path`` is the model's prefix (``/v2/models/{name}``): the entry point reads the call below it,
    as it reads what Serve passes below the app's route prefix. ``protocols`` maps another server's
    route prefix (``/predictions``, ``/v1``) to the entry point answering that protocol, which reads the
    call below its prefix.
    """

    def __init__(self, answer: Answer, root_path: str, app_name: str = "",
                 log_context: Callable[[str, str, str], None] = set_log_context,
                 protocols: Optional[Mapping[str, Answer]] = None, access_log: AccessLog = ACCESS_LOG,
                 admission: Optional[Admission] = None) -> None:
        self.answer = answer
        self.root_path = root_path
        self.app_name = app_name
        self.log_context = log_context
        self.protocols = {prefix + "/": (prefix, answer) for prefix, answer in (protocols or {}).items()}
        self.in_flight = InFlight()
        self.access_log = access_log
        self.admission = admission  # shared with the port's gRPC calls

    def _route(self, path: str) -> tuple[str, Answer]:
        for start, route in self.protocols.items():
            if path.startswith(start):
                return route
        return self.root_path, self.answer

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        root_path, answer = self._route(scope["path"])
        scope["root_path"] = root_path
        self.log_context(request_id, root_path, self.app_name)
        traced = tracing.start_ingress(f"{scope['method']} {scope['path']}", scope["headers"], {
            "http.request.method": scope["method"], "url.path": scope["path"], "modelpool.request_id": request_id,
        }) if tracing.active() else None
        status = 500
        gate = self.admission if scope["method"] == "POST" else None  # reads (ready, metadata) are never shed
        try:
            with self.in_flight:  # a waiting call counts too: the autoscaler must see the queue
                if gate is not None and not await gate.enter():
                    status = 429
                    await _refuse(send, gate.refused("rest"), request_id)
                    return
                try:
                    response = await answer(Request(scope, receive))
                    response.headers.append(REQUEST_ID_HEADER, request_id)
                    status = response.status_code
                    await response(scope, receive, send)
                finally:
                    if gate is not None:
                        gate.leave()
        finally:
            trace_id = ""
            if traced is not None:
                trace_id = traced.trace_id
                traced.end(status)
            self.access_log.record(scope["method"], scope["path"], status, (time.perf_counter() - started) * 1000,
                                   request_id, trace_id)


async def _refuse(send: Callable, refusal: Refusal, request_id: str) -> None:
    """A 429 sent as it was made (``admission.Refusal``), with the call's request id; the body stays unread."""
    await send({"type": "http.response.start", "status": 429,
                "headers": [*refusal.headers, (_REQUEST_ID_KEY, request_id.encode("latin-1"))]})
    await send({"type": "http.response.body", "body": refusal.body, "more_body": False})
