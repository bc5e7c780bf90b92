"""Where a cluster's OpenTelemetry spans go: the OTLP exporter every modelpool process shares.

``modelpool start --tracing`` hands Serve a ``TracingConfig`` whose exporter is :func:`span_processors`,
so Serve's own tracing hooks (its replicas' spans around handle calls, context carried through
DeploymentHandles) and modelpool's spans (``modelpool.deployments.tracing``: ingress, replica, batch,
handler, graph nodes, batch-job partitions) leave each process through one batch processor and one
OTLP/HTTP exporter.

Serve calls the exporter function with no arguments inside each replica, so the endpoint cannot travel
as an argument. It travels in Ray's internal key-value store (the GCS), written once at start: every
process of the cluster reads the same place, on this machine or any other joined later, which an
environment variable would not reach on a cluster started by someone else (``--address``).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional

KV_NAMESPACE = "modelpool"
KV_KEY = b"tracing"
SERVICE_NAME = "modelpool"
#: spans leave a process at least this often: a trace is in the collector a second or two after its request
EXPORT_DELAY_MS = 1000
#: spans waiting to be exported per process; beyond it the processor drops new ones (never blocks a request)
MAX_QUEUED_SPANS = 8192
EXPORTER_IMPORT_PATH = "modelpool.cluster.tracing.span_processors"


@dataclass(frozen=True)
class TraceExport:
    """What every process needs to trace: where spans go and the share of new traces to keep."""

    endpoint: str
    sample_ratio: float

    def to_json(self) -> bytes:
        return json.dumps({"endpoint": self.endpoint, "sampleRatio": self.sample_ratio}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "TraceExport":
        value = json.loads(raw)
        return cls(str(value["endpoint"]), float(value["sampleRatio"]))


def export_of(settings: Any) -> Optional[TraceExport]:
    """The cluster's tracing settings, None when ``--tracing`` is off."""
    if not settings.tracing:
        return None
    return TraceExport(settings.otlp_endpoint, settings.trace_sample_ratio)


def serve_tracing_config(export: Optional[TraceExport]) -> Optional[dict]:
    """Serve's ``TracingConfig`` for ``serve.start``: our exporter, the same ratio for Serve's own root spans."""
    if export is None:
        return None
    return {"enabled": True, "exporter_import_path": EXPORTER_IMPORT_PATH, "sampling_ratio": export.sample_ratio}


def publish(export: Optional[TraceExport]) -> None:
    """Write (or clear) the cluster's tracing settings in the GCS; the caller is connected to Ray."""
    from ray.experimental import internal_kv

    if export is None:
        internal_kv._internal_kv_del(KV_KEY, namespace=KV_NAMESPACE)
    else:
        internal_kv._internal_kv_put(KV_KEY, export.to_json(), overwrite=True, namespace=KV_NAMESPACE)


def published() -> Optional[TraceExport]:
    """The cluster's tracing settings as published at start; None when off or outside a Ray worker."""
    try:
        import ray
        from ray.experimental import internal_kv

        if not ray.is_initialized():
            return None
        raw = internal_kv._internal_kv_get(KV_KEY, namespace=KV_NAMESPACE)
    except Exception:  # noqa: BLE001 - no GCS to ask: not tracing
        return None
    return TraceExport.from_json(raw) if raw else None


_processors: Optional[list] = None
_lock = threading.Lock()


def span_processors() -> list:
    """Serve's exporter hook (no arguments, as ``TracingConfig.exporter_import_path`` requires): this process's
    one batch processor over an OTLP/HTTP exporter, made once and shared with modelpool's own tracer.

    Also names the service: Serve builds its ``TracerProvider`` right after calling this, and the SDK reads
    ``OTEL_SERVICE_NAME`` then (a value the operator set wins).
    """
    global _processors
    with _lock:
        if _processors is None:
            export = published()
            endpoint = export.endpoint if export else os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
            os.environ.setdefault("OTEL_SERVICE_NAME", SERVICE_NAME)
            _processors = [_batch_processor(endpoint)] if endpoint else []
        return _processors


def _batch_processor(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5), max_queue_size=MAX_QUEUED_SPANS,
                              schedule_delay_millis=EXPORT_DELAY_MS)


def tracer_provider() -> Any:
    """A provider for modelpool's own spans, feeding the same processors as Serve's.

    Its sampler keeps every root span it is asked for (``ParentBased(ALWAYS_ON)``): the request path has
    already drawn the sample (``modelpool.deployments.tracing``) before it asks, so an unsampled request costs
    no span at all; Serve's provider would draw again and keep ratio squared. A sampled or unsampled parent
    (an incoming ``traceparent``) still decides for its children.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    processors = span_processors()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON),
                              resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                        SERVICE_NAME)}))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def flush(timeout_ms: int = 5000) -> None:
    """Send what is queued now (a batch worker before it reports a partition done; tests)."""
    for processor in list(_processors or ()):
        processor.force_flush(timeout_ms)
