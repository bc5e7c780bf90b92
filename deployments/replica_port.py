"""A model replica's own V2 gRPC port: gRPC over HTTP/2 on uvicorn, beside Serve's request path.

Why: Serve answers gRPC in each replica with grpcio's asyncio server, whose per-call cost is the
largest part of a gRPC call here. On this machine a bare ``grpc.aio`` server answered 4.4k calls/s
at c=64, where uvicorn speaking HTTP/2 (its ``zttp`` protocol) answered 14.9k with the same
trivial handler; through Serve's gRPC path modelpool reached 0.55x its own REST req/s
(BENCHMARKS.md, issue 12). A unary gRPC call is one HTTP/2 POST: a 5-byte-framed protobuf
message in, a framed message and ``grpc-status`` trailers out, which plain ASGI can say
(uvicorn supports the ``http.response.trailers`` extension over HTTP/2).

The gRPC front (``front``) routes a call straight to one of these ports once the replica has
registered it there, and through Serve's gRPC ingress otherwise (the path every call took before).
Calls land in the replica's own ``ModelInfer``/``ModelReady``/``ModelMetadata`` methods with a
:class:`CallContext` standing in for grpc's servicer context, so both paths answer alike.

Serve does not see these calls: the port counts its own calls in flight, which the replica reports
to Serve's autoscaler (``record_autoscaling_stats``) and drains before it stops.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Optional
from urllib.parse import quote

import grpc
import uvicorn
from google.protobuf.message import DecodeError

from modelpool.deployments import tracing
from modelpool.deployments.coalesced_writes import CoalescingProtocol

logger = logging.getLogger("ray.serve")

SERVICE = "inference.GRPCInferenceService"
SERVICE_PREFIX = f"/{SERVICE}/"
GRPC_CONTENT_TYPE = b"application/grpc"
#: the front retires an HTTP/2 connection to a port after this many calls: zttp 0.0.35 drops a
#: connection as a "flood" after 4,096 streams, and a retired connection fails no call
MAX_CALLS_PER_CONNECTION = 2000
KEEP_ALIVE_S = 600  # the front keeps idle connections; closing them under it would fail a call


@dataclass(frozen=True)
class GrpcMethod:
    """One unary call: how to parse its message and the coroutine answering it."""

    request_type: Any
    answer: Callable[[Any, "CallContext"], Awaitable[Any]]


class CallContext:
    """What the gRPC entry points use of ``grpc.ServicerContext``: metadata in, status out."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata
        self._code: grpc.StatusCode = grpc.StatusCode.OK
        self._details = ""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def unframe(body: bytes) -> bytes:
    """The one message of a unary call's body; ValueError naming what is wrong with the framing."""
    if len(body) < 5:
        raise ValueError(f"the request body holds {len(body)} bytes; a gRPC message needs a 5-byte prefix")
    if body[0] != 0:
        raise ValueError("compressed messages are not supported; send the message uncompressed")
    (length,) = struct.unpack(">I", body[1:5])
    if length != len(body) - 5:
        raise ValueError(f"the message prefix says {length} bytes but {len(body) - 5} follow; send exactly one "
                         "message per unary call")
    return body[5:]


def status_trailers(code: grpc.StatusCode, details: str) -> list[tuple[bytes, bytes]]:
    """``grpc-status`` and, when there is one, ``grpc-message`` percent-encoded as the protocol asks."""
    trailers = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        trailers.append((b"grpc-message", quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()))
    return trailers


class InFlight:
    """Calls being answered on the port: Serve's ongoing count does not see them, the autoscaler and the drain must."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> "InFlight":
        self.count += 1
        self.idle.clear()
        return self

    def __exit__(self, *_: object) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


#: the one gRPC call a full replica refuses (readiness and metadata are always answered)
SHED_CALL = "/ModelInfer"


class GrpcApp:
    """The ASGI app of the port: ``POST /inference.GRPCInferenceService/<Call>`` answered as gRPC."""

    def __init__(self, methods: Mapping[str, GrpcMethod], headers: Mapping[str, str] = (),
                 admission: Any = None) -> None:
        self.methods = dict(methods)
        self.headers = [(b"content-type", GRPC_CONTENT_TYPE)] + [(k.encode(), v.encode()) for k, v in dict(headers).items()]
        self.in_flight = InFlight()
        self.admission = admission  # ``admission.Admission``, shared with the port's REST calls: ModelInfer is shed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        traced = tracing.start_ingress(scope["path"].lstrip("/"), scope["headers"], {
            "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": scope["path"].rpartition("/")[2],
        }) if tracing.active() else None
        code, details, reply = grpc.StatusCode.INTERNAL, "the call failed", None
        gate = self.admission if scope["path"].endswith(SHED_CALL) else None
        try:
            with self.in_flight:
                if gate is not None and not await gate.enter():
                    # Serve's gRPC path answers a full queue so too: a client may retry after backing off
                    code, details = grpc.StatusCode.RESOURCE_EXHAUSTED, gate.refused("grpc").message
                else:
                    try:
                        code, details, reply = await self._answer(scope, receive)
                    finally:
                        if gate is not None:
                            gate.leave()
        finally:
            if traced is not None:
                if traced.span.is_recording():
                    traced.span.set_attribute("rpc.grpc.status_code", code.value[0])
                traced.end(200, None if code == grpc.StatusCode.OK else (details or code.name))
        await send({"type": "http.response.start", "status": 200, "trailers": True, "headers": self.headers})
        await send({"type": "http.response.body", "body": frame(reply) if reply is not None else b"",
                    "more_body": False})
        await send({"type": "http.response.trailers", "headers": status_trailers(code, details),
                    "more_trailers": False})

    async def _answer(self, scope: dict, receive: Callable) -> tuple[grpc.StatusCode, str, Optional[bytes]]:
        service, _, name = scope["path"].lstrip("/").rpartition("/")
        method = self.methods.get(name) if service == SERVICE else None
        if method is None:
            return grpc.StatusCode.UNIMPLEMENTED, f"this port answers {', '.join(self.methods)} of {SERVICE}", None
        body = await _read_body(receive)
        try:
            message = method.request_type.FromString(unframe(body))
        except (ValueError, DecodeError) as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {exc}", None
        context = CallContext([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]])
        try:
            reply = await method.answer(message, context)
        except Exception as exc:  # noqa: BLE001 - the entry points answer errors themselves; this is a bug
            logger.exception("gRPC %s failed", name)
            return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", None
        if context.code() != grpc.StatusCode.OK:
            return context.code(), context.details(), None
        return grpc.StatusCode.OK, "", reply.SerializeToString()


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class ReplicaPort:
    """The port's server on the replica's event loop; ``address`` once started.

    gRPC calls (HTTP/2) go to the gRPC app; with ``rest``, every other request (HTTP/1.1 or HTTP/2) goes
    to it (``rest_entry.RestApp``): one socket, whichever protocol a connection speaks.
    ``headers`` go out as every call's initial metadata (the replica's id, as REST answers carry it).
    """

    def __init__(self, methods: Mapping[str, GrpcMethod], headers: Mapping[str, str] = (), rest: Any = None,
                 admission: Any = None) -> None:
        self.app = GrpcApp(methods, headers, admission)
        self.rest = rest
        self.address = ""
        self._server: Optional[uvicorn.Server] = None
        self._task: Optional[asyncio.Task] = None

    @property
    def in_flight(self) -> int:
        return self.app.in_flight.count + (self.rest.in_flight.count if self.rest is not None else 0)

    async def _dispatch(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.rest is not None and not scope.get("path", "").startswith(SERVICE_PREFIX):
            await self.rest(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def start(self, host: str) -> str:
        """Listen on ``host`` at a port the kernel picks; the ``host:port`` the front dials."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: an answer written in two parts must not wait for the peer's delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        # interface: a bound method would be taken for ASGI2; proxy_headers: only the front connects, and
        # nothing here reads the client's address (uvicorn's middleware would cost every request)
        config = uvicorn.Config(self._dispatch, http="zttp", http2=True, lifespan="off", access_log=False,
                                log_config=None, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S,
                                interface="asgi3", proxy_headers=False)
        config.load()
        config.http_protocol_class = CoalescingProtocol  # an answer's parts in one send (coalesced_writes)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign] # not the main thread
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.address

    async def stop(self, drain_s: float) -> None:
        """Answer the calls in flight (up to ``drain_s``), then close the port."""
        idle = [self.app.in_flight.idle.wait()] + ([self.rest.in_flight.idle.wait()] if self.rest is not None else [])
        try:
            await asyncio.wait_for(asyncio.gather(*idle), drain_s)
        except asyncio.TimeoutError:
            logger.warning("replica port %s stopped with %d calls in flight", self.address, self.in_flight)
        if self._server is not None:
            self._server.should_exit = True
            # drained: idle connections (the front keeps some) need no goodbye, and uvicorn would wait for them
            self._server.force_exit = True
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5)
