"""A graph's model calls on the model replicas' own ports: V2 REST with binary tensors over kept-open HTTP/1.1.

Why not only DeploymentHandles: measured on this machine (BENCHMARKS.md, graphs), a handle call from the graph's
replica to a model replica added 5.5 ms at c=1 and about 5 ms of CPU per request (Serve's router and transport on
both sides, cloudpickled arguments and answers, Serve's per-request bookkeeping in the model replica): a
three-node graph served 0.12-0.19x the bare model's req/s. grpc.aio to the same port halved that, but its
client alone took about 0.6 ms of CPU a call here. The model replicas answer V2 REST on their own ports, which
the front sends clients' calls to; a graph calls them the same way, with binary tensors (no JSON numbers either
way), over connections it keeps open, parsed by httptools (uvicorn's parser). Requests for one node that reach
the graph replica together share one call (``deployments.batcher``, per node and port, so a model with several
replicas gets calls on all of them at once). The model batches the call with its other traffic, counts it in
its metrics and reports it to its autoscaler, as any call on its port.

Where the ports are: the front's table (``Front.ports_table``), read every ``REFRESH_S``. A model version with
no port known here (the generic pool's models, a replica starting, a port just closed) is called through its
DeploymentHandle instead (``graph_node``), as is a call whose port refused the connection: the handle path is
the fallback, never the only way.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import random
from collections import deque
from typing import Mapping, Optional

import httptools

from modelpool.deployments import dataplane, tracing
from modelpool.deployments.batcher import AdaptiveBatcher
from modelpool.deployments.codecs import v2_binary
from modelpool.deployments.errors import RequestError
from modelpool.deployments.graph_plan import PlanNode
from modelpool.deployments.graph_runtime import Message, NodeAnswer

logger = logging.getLogger("ray.serve")

REFRESH_S = 1.0
FIRST_TABLE_WAIT_S = 2.0
MAX_IDLE_PER_PORT = 256
#: Requests for one node that reach the graph replica at once share one call (rows concatenated), as a model's
#: batcher shares one handler call: under load a call per request cost the model replica its whole HTTP path per
#: row. At most this many; at c=1 nobody waits (the batcher never waits on a clock).
COALESCE_MOST = 64  # connections kept open per model port (a graph replica's concurrency bounds the rest)


class PortClosed(Exception):
    """The connection closed before its answer: the port is gone, or closed a kept-open connection meanwhile."""


class _Connection(asyncio.Protocol):
    """One kept-open HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._waiter: Optional[asyncio.Future] = None
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(PortClosed(f"unreadable answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self._fail(PortClosed("the connection closed"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self.parser.get_status_code(), self._headers, b"".join(self._body)))
        if not self.parser.should_keep_alive():
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        self._headers, self._body = {}, []
        self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        try:
            return await self._waiter
        except asyncio.CancelledError:
            self.close()  # the answer is still coming: this connection cannot take another request
            raise

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class NodePorts:
    """The model replicas' ports by application, and kept-open connections to them, on the graph replica's loop."""

    def __init__(self) -> None:
        self.ports: dict[str, list[str]] = {}
        self._idle: dict[str, deque[_Connection]] = {}
        self._batchers: dict[tuple[str, PlanNode], AdaptiveBatcher] = {}  # per model port and node
        self._task: Optional[asyncio.Task] = None
        self._first: Optional[asyncio.Event] = None

    async def call(self, node: PlanNode, message: Message, authorization: Optional[str]) -> Optional[NodeAnswer]:
        """The node's answer from one of its replicas' ports; None when none is known or its port refused the
        connection (the caller then takes the handle path)."""
        if self._task is None:
            self._start()
        if self._first is not None and not self._first.is_set():
            try:
                await asyncio.wait_for(self._first.wait(), FIRST_TABLE_WAIT_S)
            except asyncio.TimeoutError:
                pass
        addresses = self.ports.get(node.app or "")
        if not addresses:
            return None
        address = random.choice(addresses)
        try:
            request = dataplane.model_request(dataplane.message_request(message, node.outputs), [])
        except RequestError as exc:
            return NodeAnswer({}, status=exc.status, error=exc.message)
        if tracing.active():  # the model replica's span is a child of this node's
            request = dataclasses.replace(request, trace=tracing.current_context())
        batcher = self._batchers.get((address, node))
        if batcher is None:
            batcher = self._batchers[(address, node)] = AdaptiveBatcher(
                functools.partial(self._call_batch, node, address), COALESCE_MOST, 0.0)
        return await batcher.submit((request, authorization), (dataplane.batch_key(request), authorization))

    async def _call_batch(self, node: PlanNode, address: str, items: list) -> list[Optional[NodeAnswer]]:
        """One call for the graph requests that reached this node at once (rows concatenated, answers split); when
        it is refused, each request again alone, so one bad request fails alone."""
        requests = [request for request, _ in items]
        merged = dataplane.concatenate(requests)
        # one call for several graph requests: it continues the first traced one's trace
        parent = tracing.traceparent(next((r.trace for r in requests if r.trace is not None), None))
        answer = await self._call_one(node, address, merged, items[0][1], parent)
        if answer is None or len(requests) == 1:
            return [answer] * len(requests)
        if answer.status == 200:
            return [NodeAnswer(outputs) for outputs in dataplane.split_outputs(answer.outputs, requests)]
        return list(await asyncio.gather(*(self._call_one(node, address, request.inputs, authorization,
                                                          tracing.traceparent(request.trace))
                                           for request, authorization in items)))

    async def _call_one(self, node: PlanNode, address: str, message: Message,
                        authorization: Optional[str], traceparent: Optional[str] = None) -> Optional[NodeAnswer]:
        try:
            data = http_request(node, address, message, authorization, traceparent)
        except ValueError as exc:  # a dtype V2 cannot carry: the handle path takes any array
            logger.debug("graph node %s: %s; calling through its handle", node.name, exc)
            return None
        try:
            status, headers, body = await self._exchange(address, data)
        except (OSError, PortClosed) as exc:
            logger.debug("graph node %s: port %s: %s; calling through its handle", node.name, address, exc)
            self._forget(node.app or "", address)
            return None
        if status != 200:
            return NodeAnswer({}, status=status, error=error_message(body))
        try:
            return NodeAnswer(v2_binary.client_response(body, headers.get(b"inference-header-content-length")))
        except (RequestError, ValueError, KeyError, TypeError) as exc:
            return NodeAnswer({}, status=502, error=f"its answer could not be read: {exc}")

    async def _exchange(self, address: str, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request on a kept-open connection; once more on a new one if a kept-open one had closed meanwhile."""
        idle = self._idle.setdefault(address, deque())
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                answer = await connection.request(data)
            except PortClosed:
                continue  # closed by the server between requests (keep-alive timeout): try another
            self._release(address, connection)
            return answer
        host, _, port = address.rpartition(":")
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, host.strip("[]"), int(port))
        answer = await connection.request(data)
        self._release(address, connection)
        return answer

    def _release(self, address: str, connection: _Connection) -> None:
        idle = self._idle.setdefault(address, deque())
        if not connection.closed and len(idle) < MAX_IDLE_PER_PORT:
            idle.append(connection)
        elif not connection.closed:
            connection.close()

    def _forget(self, app: str, address: str) -> None:
        self.ports[app] = [a for a in self.ports.get(app, []) if a != address]
        self._drop_batchers({address})
        for connection in self._idle.pop(address, ()):
            connection.close()

    def _start(self) -> None:
        self._first = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        from ray import serve

        from modelpool.deployments.app_names import FRONT_APP, FRONT_DEPLOYMENT

        front = serve.get_deployment_handle(FRONT_DEPLOYMENT, app_name=FRONT_APP)
        while True:
            try:
                self.set_table(await front.ports_table.remote())
            except Exception as exc:  # noqa: BLE001 - no front (gRPC and the HTTP front off): handles only
                logger.debug("graph: reading the replica ports from the front failed: %s", exc)
            if self._first is not None:
                self._first.set()
            await asyncio.sleep(REFRESH_S)

    def set_table(self, table: Mapping[str, Mapping[str, str]]) -> None:
        """``{app: {replica: host:port}}`` as the front keeps it; connections to ports no longer listed close."""
        self.ports = {app: sorted(replicas.values()) for app, replicas in table.items()}
        known = {address for addresses in self.ports.values() for address in addresses}
        self._drop_batchers({address for address, _ in self._batchers} - known)
        for address in [a for a in self._idle if a not in known]:
            for connection in self._idle.pop(address):
                connection.close()

    def _drop_batchers(self, addresses: set[str]) -> None:
        for key in [key for key in self._batchers if key[0] in addresses]:
            del self._batchers[key]

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


def http_request(node: PlanNode, address: str, message: Message, authorization: Optional[str],
                 traceparent: Optional[str] = None) -> bytes:
    """The bytes of one binary V2 call of ``node``'s version on a replica port."""
    body, json_length = v2_binary.client_request(message, node.outputs)
    head = (f"POST /v2/models/{node.model}/versions/{node.version}/infer HTTP/1.1\r\nHost: {address}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {json_length}\r\n"
            f"Content-Length: {len(body)}\r\n")
    if authorization:
        head += f"Authorization: {authorization}\r\n"
    if traceparent:
        head += f"traceparent: {traceparent}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def error_message(body: bytes) -> str:
    """The ``error`` of modelpool's JSON refusal, else the body as text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    return str(parsed.get("error", parsed)) if isinstance(parsed, dict) else str(parsed)
