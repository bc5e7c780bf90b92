"""modelpool's spans on the request path: ingress -> replica -> batch -> handler, graph nodes, batch partitions.

Off (the default) every helper returns at its first line: the request path pays one global read.

On, the sample is drawn once, at the ingress, before OpenTelemetry is asked for anything: a request
without a sampled ``traceparent`` that loses the draw costs a ``random()`` and nothing else. Asking the
SDK to start a span that its sampler then drops costs about 11 us here, ~4% of a replica's CPU per
request at c=64, which a 1% sample must not pay. A request that carries a ``traceparent`` is traced as its
caller decided (sampled or not), and its trace id is in the access line either way.

Spans of one request nest through OpenTelemetry's context (a context variable: each ASGI call is a task
of its own). A batch serves several requests, so its span cannot be a child of all of them: it is a
child of the first traced request it serves and links to every traced request in it (W3C trace
context's model for fan-in), carrying the batch size; the handler call is its child.
"""
from __future__ import annotations

import random
from typing import Any, Iterable, Mapping, Optional, Sequence

_tracer: Any = None  # an OpenTelemetry tracer while tracing is on in this process, else None
_ratio = 0.0
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def configure() -> bool:
    """Turn tracing on in this process when the cluster traces (``--tracing``); called once per replica or worker."""
    global _tracer, _ratio
    from modelpool.cluster import tracing as export

    published = export.published()
    if published is None:
        _tracer, _ratio = None, 0.0
        return False
    if _tracer is None:
        _tracer = export.tracer_provider().get_tracer("modelpool")
    _ratio = published.sample_ratio
    return True


def enable_for_tests(tracer: Any, ratio: float) -> None:
    """Unit tests: trace into ``tracer`` (an in-memory SDK provider's) at ``ratio``."""
    global _tracer, _ratio
    _tracer, _ratio = tracer, ratio


def disable() -> None:
    global _tracer, _ratio
    _tracer, _ratio = None, 0.0


def active() -> bool:
    return _tracer is not None


# --- the ingress: where a request enters a replica --------------------------------------------------


class Ingress:
    """A request's server span and its place as the current context until it ends."""

    __slots__ = ("span", "_token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span = span
        self._token = token

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def end(self, status: int, error: Optional[str] = None) -> None:
        """Close the span with the answer's status (HTTP, or gRPC's code with ``error`` for its message)."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if status >= 500 or error:
                span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        context.detach(self._token)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> Optional[str]:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def start_ingress(name: str, headers: Sequence[tuple[bytes, bytes]], attributes: Mapping[str, Any]) -> Optional[Ingress]:
    """The server span of a request on a replica's own port (ASGI headers), or None when it is not traced.

    An incoming W3C ``traceparent`` decides; without one, a draw at the configured ratio does.
    """
    if _tracer is None:
        return None
    traceparent = _header(headers, b"traceparent")
    if traceparent is None:
        if _ratio <= 0.0 or (_ratio < 1.0 and random.random() >= _ratio):
            return None
        parent = None
    else:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {TRACEPARENT: traceparent}
        tracestate = _header(headers, b"tracestate")
        if tracestate is not None:
            carrier[TRACESTATE] = tracestate
        parent = TraceContextTextMapPropagator().extract(carrier)
    from opentelemetry import context, trace

    span = _tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, attributes=dict(attributes))
    return Ingress(span, context.attach(trace.set_span_in_context(span)))


# --- spans inside a traced request ------------------------------------------------------------------


class _NoScope:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


NO_SCOPE = _NoScope()  # what ``span`` gives when nothing is traced; callers on the request path use it directly
_NO_SCOPE = NO_SCOPE


class _SpanScope:
    """A child span that is the current context while its block runs; records an exception that escapes."""

    __slots__ = ("span", "_token")

    def __init__(self, span: Any) -> None:
        self.span = span
        self._token = None

    def __enter__(self) -> Any:
        from opentelemetry import context, trace

        self._token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        if exc is not None and getattr(exc, "status", 500) >= 500:  # a refusal (RequestError 4xx) is no fault
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()
        context.detach(self._token)


def span(name: str, attributes: Optional[Mapping[str, Any]] = None) -> Any:
    """``with tracing.span(...) as s:`` a child of the current span when that one is being recorded; else a
    no-op (``s`` is None): an untraced request never reaches OpenTelemetry."""
    if _tracer is None:
        return _NO_SCOPE
    from opentelemetry import trace

    if not trace.get_current_span().is_recording():
        return _NO_SCOPE
    return _SpanScope(_tracer.start_span(name, attributes=dict(attributes or {})))


def mark_error(current: Any, status: int, message: str = "") -> None:
    """An answer of ``status`` >= 500 marks the span (``current``: what ``span`` gave, None when untraced)."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(Status(StatusCode.ERROR, message))


def current_context() -> Any:
    """The recording span's context to hand across a queue (the batcher), or None."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    current = trace.get_current_span()
    return current.get_span_context() if current.is_recording() else None


def traceparent(span_context: Any) -> Optional[str]:
    """A span's context (``current_context``) as a W3C ``traceparent`` for a call to another process (a graph's
    model node on its replica's port), or None."""
    if span_context is None or not span_context.is_valid:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


# --- a batch: fan-in of traced requests -------------------------------------------------------------


class BatchSpans:
    """The span of one handler call's batch (linked to its requests) and of the handler call inside it."""

    __slots__ = ("batch", "_label")

    def __init__(self, batch: Any, label: str) -> None:
        self.batch = batch
        self._label = label

    def handler(self) -> Any:
        """``with spans.handler():`` the handler call, a child of the batch span."""
        from opentelemetry import trace

        return _SpanScope(_tracer.start_span(f"handler {self._label}",
                                             context=trace.set_span_in_context(self.batch)))

    def end(self, error: Optional[BaseException] = None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self.batch.record_exception(error)
            self.batch.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.batch.end()


def start_batch(label: str, contexts: Iterable[Any], size: int, attributes: Mapping[str, Any]) -> Optional[BatchSpans]:
    """The batch's span when any request in it is traced (``contexts``: what ``current_context`` gave each)."""
    if _tracer is None:
        return None
    traced = [c for c in contexts if c is not None]
    if not traced:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan

    parent = trace.set_span_in_context(NonRecordingSpan(traced[0]))
    batch = _tracer.start_span(f"batch {label}", context=parent, links=[Link(c) for c in traced],
                               attributes={**attributes, "modelpool.batch.size": size,
                                           "modelpool.batch.traced_requests": len(traced)})
    return BatchSpans(batch, label)


# --- outside a request: batch-job partitions ----------------------------------------------------------


def root_span(name: str, parent_traceparent: Optional[str], attributes: Mapping[str, Any]) -> Any:
    """``with tracing.root_span(...)``: work that no request is waiting on (a batch job's partition), a child of
    the job's submitting request when it was traced (``parent_traceparent``), drawn at the ratio otherwise."""
    if _tracer is None:
        return _NO_SCOPE
    parent = None
    if parent_traceparent:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract({TRACEPARENT: parent_traceparent})
    elif _ratio <= 0.0 or (_ratio < 1.0 and random.random() >= _ratio):
        return _NO_SCOPE
    started = _tracer.start_span(name, context=parent, attributes=dict(attributes))
    if not started.is_recording():
        started.end()
        return _NO_SCOPE
    return _SpanScope(started)
