"""A real OTLP/HTTP traces receiver for the tests: what the OpenTelemetry SDK's exporter sends, decoded.

It speaks the collector's side of OTLP/HTTP with protobuf bodies (``POST /v1/traces``, an
``ExportTraceServiceRequest`` in, an ``ExportTraceServiceResponse`` out, gzip when the exporter
compresses), decoded with opentelemetry-proto's own messages: the same bytes a Collector, Jaeger or
Tempo would get. No Collector binary ships on PyPI or Debian, so this is the receiver the tests can start.
"""
from __future__ import annotations

import collections
import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

KEPT_SPANS = 50_000  # the newest; a whole integration run traces every request


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids in hex, as W3C trace context writes them)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    status_code: int  # 0 unset, 1 ok, 2 error
    service: str
    start_ns: int
    end_ns: int
    events: tuple[str, ...] = field(default=())


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one export request."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                    name=span.name, kind=span.kind, attributes={a.key: _value(a.value) for a in span.attributes},
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    status_code=span.status.code, service=str(resource.get("service.name", "")),
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    events=tuple(event.name for event in span.events)))
    return spans


class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` listening on 127.0.0.1 at ``receiver.endpoint`` until the block ends."""

    def __init__(self, port: int = 0) -> None:
        self.spans: collections.deque[ReceivedSpan] = collections.deque(maxlen=KEPT_SPANS)
        self.requests = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("content-type", ""):
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                try:
                    spans = decode(body)
                except Exception:  # noqa: BLE001 - an unreadable body is the sender's fault: 400, as a Collector
                    self.send_error(400)
                    return
                with receiver._changed:
                    receiver.spans.extend(spans)
                    receiver.requests += 1
                    receiver._changed.notify_all()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._changed:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, found: Callable[[list[ReceivedSpan]], Optional[Any]], timeout_s: float = 30.0) -> Any:
        """The first truthy ``found(spans)`` as spans arrive; AssertionError with what did arrive after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                result = found(list(self.spans))
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({s.name for s in self.spans})[:40]
                    raise AssertionError(f"not received within {timeout_s:.0f}s; {len(self.spans)} spans so far: {names}")
                self._changed.wait(min(remaining, 0.5))
