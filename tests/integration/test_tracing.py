"""--tracing on a real cluster: the spans a collector receives over OTLP for REST, gRPC, a graph and a batch job.

The package's cluster runs with ``--tracing`` at ratio 1 and exports to a real OTLP/HTTP receiver in this process
(``tests/otlp_receiver.py``, the ``traces`` fixture). Each test sends its own W3C ``traceparent`` and reads that
trace back, so tests running before it (and their spans) do not matter.
"""
from __future__ import annotations

import secrets
import time

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from sklearn.datasets import load_iris

from tests.integration.test_batches import iris_records, wait_state
from tests.integration.test_observability import replica_log_text
from tests.integration.test_serving import v2_body

pytestmark = pytest.mark.integration
ROW = [[5.1, 3.5, 1.4, 0.2]]


def new_traceparent() -> tuple[str, str, str]:
    """(traceparent, trace id, parent span id) of a sampled trace no other test uses."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def spans_named(spans, *prefixes: str):
    """The trace's spans, once one of each name prefix has arrived (else None: keep waiting)."""
    found = {prefix: [s for s in spans if s.name.startswith(prefix)] for prefix in prefixes}
    return spans if all(found.values()) else None


def test_a_rest_request_is_traced_from_its_traceparent_to_the_handler_and_logged_with_its_trace_id(cluster, http):
    traceparent, trace_id, parent_id = new_traceparent()
    answer = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW), headers={"traceparent": traceparent})
    assert answer.status_code == 200, answer.text
    spans = cluster.traces.wait_for(lambda got: spans_named([s for s in got if s.trace_id == trace_id],
                                                             "POST /v2/models/iris/infer", "model iris:", "batch iris:",
                                                             "handler iris:"))
    by_name = {s.name.split(" ")[0]: s for s in spans}
    ingress, model, batch, handler = by_name["POST"], by_name["model"], by_name["batch"], by_name["handler"]
    assert ingress.parent_span_id == parent_id, "the caller's span is the ingress span's parent"
    assert ingress.attributes["http.response.status_code"] == 200 and ingress.kind == 2  # SERVER
    assert model.parent_span_id == ingress.span_id
    assert (trace_id, model.span_id) in batch.links and batch.attributes["modelpool.batch.size"] >= 1
    assert handler.parent_span_id == batch.span_id
    assert model.attributes["modelpool.replica"] == answer.headers["x-modelpool-replica"]
    assert {s.service for s in spans} == {"modelpool"}
    log = replica_log_text(answer.headers["x-modelpool-replica"], wait_for=f"trace_id={trace_id}")
    line = next(line for line in log.splitlines() if f"trace_id={trace_id}" in line)
    assert "POST /v2/models/iris/infer 200" in line and answer.headers["x-request-id"] in line


def test_an_unsampled_traceparent_sends_no_span(cluster, http):
    _, trace_id, parent_id = new_traceparent()
    answer = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW),
                       headers={"traceparent": f"00-{trace_id}-{parent_id}-00"})
    assert answer.status_code == 200
    sampled, sampled_id, _ = new_traceparent()  # a sampled request after it: once its spans are in, the first's would be
    http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW), headers={"traceparent": sampled})
    cluster.traces.wait_for(lambda got: any(s.trace_id == sampled_id and s.name.startswith("handler") for s in got))
    assert cluster.traces.trace(trace_id) == []


def test_a_grpc_call_is_traced_through_tritonclient_metadata(cluster):
    traceparent, trace_id, parent_id = new_traceparent()
    rows = load_iris().data[:2]
    tensor = triton_grpc.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    with triton_grpc.InferenceServerClient(url=cluster.grpc_target) as client:
        result = client.infer("iris", [tensor], headers={"traceparent": traceparent})
    assert result.as_numpy("predict").shape == (2,)
    spans = cluster.traces.wait_for(lambda got: spans_named([s for s in got if s.trace_id == trace_id],
                                                             "inference.GRPCInferenceService/ModelInfer", "model iris:",
                                                             "handler iris:"))
    ingress = next(s for s in spans if s.name.startswith("inference."))
    assert ingress.parent_span_id == parent_id and ingress.attributes["rpc.grpc.status_code"] == 0
    assert next(s for s in spans if s.name.startswith("model ")).parent_span_id == ingress.span_id


def test_a_graph_request_has_a_span_per_node_and_the_model_replicas_spans_in_the_same_trace(cluster, admin, http):
    graph = admin.put(f"{cluster.url}/graphs/traced_chain", json={"graph": {"name": "first", "model": "iris",
                                                                             "version": "1"}})
    assert graph.status_code in (200, 201), graph.text
    try:
        traceparent, trace_id, _ = new_traceparent()
        answer = http.post(f"{cluster.url}/v2/models/traced_chain/infer", json=v2_body(ROW),
                           headers={"traceparent": traceparent})
        assert answer.status_code == 200, answer.text
        spans = cluster.traces.wait_for(lambda got: spans_named([s for s in got if s.trace_id == trace_id],
                                                                 "graph traced_chain node first", "model iris:1",
                                                                 "handler iris:1"))
        node = next(s for s in spans if s.name == "graph traced_chain node first")
        assert node.attributes["modelpool.graph.kind"] == "model"
        model_ingress = next(s for s in spans if s.name.startswith("POST /v2/models/iris/versions/1/infer")
                             or s.name.startswith("model iris:1"))
        below = {s.span_id: s.parent_span_id for s in spans}
        parent, hops = model_ingress.parent_span_id, 0
        while parent and parent != node.span_id and hops < 10:  # the model's spans hang below the node's
            parent, hops = below.get(parent, ""), hops + 1
        assert parent == node.span_id, [(s.name, s.span_id, s.parent_span_id) for s in spans]
    finally:
        admin.delete(f"{cluster.url}/graphs/traced_chain")


def test_a_batch_jobs_partitions_are_spans_of_the_submitting_requests_trace(cluster, admin):
    traceparent, trace_id, parent_id = new_traceparent()
    records = iris_records() * 10  # 1,500 rows: two partitions (a partition holds at least 1,000)
    started = admin.post(f"{cluster.url}/batches", json={"service": "iris", "version": "1", "records": records,
                                                        "parallel_count": 2}, headers={"traceparent": traceparent})
    assert started.status_code == 202, started.text
    execution = started.json()["executionId"]
    assert wait_state(admin, f"{cluster.url}/batches/{execution}")["state"] == "Complete"
    prefix = f"batch job {execution} partition"
    spans = cluster.traces.wait_for(
        lambda got: (lambda mine: mine if len(mine) == 2 else None)([s for s in got if s.name.startswith(prefix)]))
    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.parent_span_id for s in spans} == {parent_id}
    assert sorted(s.attributes["modelpool.batch.partition"] for s in spans) == [0, 1]
    assert sum(s.attributes["modelpool.batch.completed"] for s in spans) == 1500


def test_requests_without_a_traceparent_start_traces_of_their_own_at_ratio_1(cluster, http):
    before = time.time_ns()
    answer = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(ROW))
    assert answer.status_code == 200
    replica = answer.headers["x-modelpool-replica"]
    root = cluster.traces.wait_for(lambda got: next(
        (s for s in got if s.name == "POST /v2/models/iris/infer" and s.start_ns >= before and not s.parent_span_id
         and s.attributes.get("modelpool.request_id") == answer.headers["x-request-id"]), None))
    assert len(root.trace_id) == 32 and root.trace_id != "0" * 32
    log = replica_log_text(replica, wait_for=f"trace_id={root.trace_id}")
    assert f"trace_id={root.trace_id}" in log
    assert np.isfinite(root.end_ns - root.start_ns)
