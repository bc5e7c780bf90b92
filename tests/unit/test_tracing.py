"""Tracing on a real replica port: the spans a request leaves (ingress -> replica -> batch -> handler), how they
nest and link, what an incoming ``traceparent`` decides, the trace id in the access line, and the OTLP export that
carries them to a real receiver.

The replica is the real ``ModelServer`` with the example iris archive on its own port in this process (as in
test_rest_entry); spans go to the SDK's in-memory exporter, except in the export test, where they travel over
OTLP/HTTP to the receiver the integration tests use too.
"""
from __future__ import annotations

import concurrent.futures
import os

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from modelpool.cluster import tracing as export
from modelpool.deployments import tracing
from modelpool.deployments.access_log import access_message
from tests.otlp_receiver import OtlpReceiver
from tests.unit.test_rest_entry import BODY, RunningPort, replica  # noqa: F401 - the module's fixture

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture()
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable_for_tests(provider.get_tracer("test"), 1.0)
    yield exporter
    tracing.disable()


@pytest.fixture()
def port(replica):  # noqa: F811 - pytest's fixture by name
    running = RunningPort(replica)
    yield running
    running.stop()


def infer(url: str, headers: dict | None = None) -> httpx.Response:
    answer = httpx.post(f"{url}/v2/models/iris/infer", json=BODY, headers=headers or {}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer


def by_name(finished) -> dict:
    return {span.name.split(" ")[0]: span for span in finished}


def test_a_request_leaves_ingress_replica_batch_and_handler_spans_nested(port, spans):
    infer(port.url)
    finished = spans.get_finished_spans()
    names = sorted(span.name for span in finished)
    assert names == ["POST /v2/models/iris/infer", "batch iris:1", "handler iris:1", "model iris:1 infer"], names
    spans_by = by_name(finished)
    ingress, model, batch, handler = spans_by["POST"], spans_by["model"], spans_by["batch"], spans_by["handler"]
    assert len({s.context.trace_id for s in finished}) == 1, "one trace"
    assert ingress.parent is None
    assert model.parent.span_id == ingress.context.span_id
    assert batch.parent.span_id == model.context.span_id, "the batch is a child of the first request it serves"
    assert [link.context.span_id for link in batch.links] == [model.context.span_id]
    assert batch.attributes["modelpool.batch.size"] == 1 and batch.attributes["modelpool.batch.rows"] == 2
    assert handler.parent.span_id == batch.context.span_id
    assert ingress.attributes["http.response.status_code"] == 200
    assert model.attributes["modelpool.model"] == "iris" and model.attributes["modelpool.version"] == "1"


def test_a_batch_links_every_request_it_served_and_carries_its_size(port, spans, replica):  # noqa: F811
    replica.reconfigure({"max_batch_size": 16, "max_batch_delay_ms": 50})
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: infer(port.url), range(8)))
    finally:
        replica.reconfigure({})
    finished = spans.get_finished_spans()
    model_spans = {s.context.span_id: s for s in finished if s.name.startswith("model ")}
    batches = [s for s in finished if s.name.startswith("batch ")]
    assert len(model_spans) == 8
    assert any(b.attributes["modelpool.batch.size"] > 1 for b in batches), "8 requests at once share a batch"
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(model_spans), "every request is linked from the batch that served it, once"
    for batch in batches:
        assert batch.attributes["modelpool.batch.size"] == len(batch.links)
        handlers = [s for s in finished if s.name.startswith("handler ") and s.parent.span_id == batch.context.span_id]
        assert len(handlers) == 1


def test_an_incoming_traceparent_is_continued(port, spans):
    infer(port.url, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    finished = spans.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    ingress = next(s for s in finished if s.name.startswith("POST "))
    assert format(ingress.parent.span_id, "016x") == PARENT_ID and ingress.parent.is_remote


def test_an_unsampled_traceparent_is_honoured_and_its_trace_id_still_logged(port, spans):
    port.rest.access_log.flush()
    recorded = []
    record = port.rest.access_log.record
    port.rest.access_log.record = lambda *args: recorded.append(args) or record(*args)  # see what the line gets
    try:
        infer(port.url, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    finally:
        port.rest.access_log.record = record
    assert spans.get_finished_spans() == (), "the caller decided not to sample this trace"
    assert recorded and recorded[-1][-1] == TRACE_ID


def test_without_a_traceparent_the_ratio_decides(port, spans):
    tracing.enable_for_tests(tracing._tracer, 0.0)
    for _ in range(5):
        infer(port.url)
    assert spans.get_finished_spans() == ()
    tracing.enable_for_tests(tracing._tracer, 0.5)
    for _ in range(40):
        infer(port.url)
    traced = [s for s in spans.get_finished_spans() if s.name.startswith("POST ")]
    assert 5 <= len(traced) <= 35, f"about half of 40 requests traced at 0.5, got {len(traced)}"


def test_tracing_off_leaves_no_span_and_no_trace_id(port):
    assert not tracing.active()
    assert tracing.start_ingress("x", [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())], {}) is None
    with tracing.span("inner") as inner:
        assert inner is None
    assert infer(port.url).status_code == 200


def test_the_access_line_carries_the_trace_id_only_when_traced():
    assert access_message("POST", "/v2/models/iris/infer", 200, 1.234) == "POST /v2/models/iris/infer 200 1.2ms"
    assert access_message("POST", "/p", 500, 3.0, TRACE_ID) == f"POST /p 500 3.0ms trace_id={TRACE_ID}"


def test_a_refused_request_is_traced_with_its_status_but_not_as_a_fault(port, spans):
    bad = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [5.1, 3.5, 1.4]}]}
    answer = httpx.post(f"{port.url}/v2/models/iris/infer", json=bad, timeout=10)
    assert answer.status_code == 422  # the shape does not fit the model's declared input
    finished = by_name(spans.get_finished_spans())
    assert set(finished) == {"POST", "model"}, "refused before the batcher: no batch, no handler"
    assert finished["POST"].attributes["http.response.status_code"] == 422
    assert finished["model"].attributes["http.response.status_code"] == 422
    assert {s.status.status_code.name for s in finished.values()} == {"UNSET"}


def test_spans_reach_an_otlp_receiver_over_http_as_the_collector_gets_them(monkeypatch):
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setattr(export, "_processors", None)
        monkeypatch.setattr(export, "published", lambda: None)  # no Ray here: the variable names the endpoint
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        try:
            tracer = export.tracer_provider().get_tracer("test")
            with tracer.start_as_current_span("outer"):
                with tracer.start_as_current_span("inner", attributes={"modelpool.model": "iris"}):
                    pass
            export.flush()
            received = receiver.wait_for(lambda got: got if len(got) >= 2 else None, timeout_s=10)
        finally:
            for processor in export._processors or ():
                processor.shutdown()
            os.environ.pop("OTEL_SERVICE_NAME", None)
    by = {s.name: s for s in received}
    assert by["inner"].parent_span_id == by["outer"].span_id and by["inner"].trace_id == by["outer"].trace_id
    assert by["inner"].attributes == {"modelpool.model": "iris"}
    assert {s.service for s in received} == {"modelpool"}


def test_the_serve_tracing_config_names_modelpools_exporter_and_ratio():
    from modelpool.cluster.settings import Settings

    assert export.serve_tracing_config(export.export_of(Settings())) is None
    on = Settings(tracing=True, trace_sample_ratio=0.01, otlp_endpoint="http://collector:4318/v1/traces")
    assert export.export_of(on) == export.TraceExport("http://collector:4318/v1/traces", 0.01)
    config = export.serve_tracing_config(export.export_of(on))
    assert config == {"enabled": True, "exporter_import_path": "modelpool.cluster.tracing.span_processors",
                      "sampling_ratio": 0.01}
    from ray.serve.schema import TracingConfig

    TracingConfig(**config)  # Serve accepts it
    assert export.TraceExport.from_json(export.export_of(on).to_json()) == export.export_of(on)
