"""The graph executor on real role handlers and a stand-in for the model replicas (the handle call is the
only part that needs Ray; the integration tests run it on the real cluster)."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from modelpool.deployments.errors import RequestError
from modelpool.deployments.graph_plan import PlanNode
from modelpool.deployments.graph_runtime import GraphExecutor, NodeAnswer
from modelpool.deployments.metrics import GraphMetrics
from modelpool.deployments.roles import RoleHandler


class Doubler:
    def transform_input(self, X, features_names):
        return X * 2


class AddOne:
    def transform_output(self, X):
        return X + 1


class Mean:
    def aggregate(self, Xs, features_names_list):
        return np.mean(Xs, axis=0)


class Flag:
    def score(self, X, names):
        return (np.abs(X).sum(axis=1) > 10).astype(float)


class PickSecond:
    def route(self, X, names):
        return 1


class PickMissing:
    def route(self, X):
        return 7


def role(target, kind) -> RoleHandler:
    return RoleHandler(target, kind, type(target).__name__)


class Models:
    """What model replicas would answer: ``sum`` of each row times the model's factor."""

    def __init__(self, factors, fail=(), sleep=None):
        self.factors, self.fail, self.sleep = factors, set(fail), sleep or {}
        self.calls: list[str] = []

    async def __call__(self, node: PlanNode, message) -> NodeAnswer:
        self.calls.append(node.model)
        if node.model in self.sleep:
            await asyncio.sleep(self.sleep[node.model])
        if node.model in self.fail:
            return NodeAnswer({}, status=422, error=f"model '{node.model}' rejected the input")
        (array,) = message.values()
        return NodeAnswer({"predict": np.asarray(array, dtype=float).sum(axis=1) * self.factors[node.model]})


def model(name, model_name, *children, outputs=None) -> PlanNode:
    return PlanNode(name=name, kind="model", model=model_name, version="1", app=f"model:{model_name}:1",
                    deployment=f"{model_name}_v1", outputs=outputs, children=tuple(children))


def rolenode(name, kind, *children) -> PlanNode:
    return PlanNode(name=name, kind="role", role=kind, model=name, version="1", children=tuple(children))


ROWS = {"x": np.array([[1.0, 2.0], [3.0, 4.0]])}


def run(executor, message=ROWS, headers=None):
    return asyncio.run(executor.run(message, headers or {}))


def test_a_transformer_wraps_its_model_input_then_output():
    tree = rolenode("prep", "TRANSFORMER", model("m", "iris"))
    roles = {"prep": role(Doubler(), "TRANSFORMER")}
    executor = GraphExecutor("g", tree, roles, Models({"iris": 1}))
    outputs, parameters = run(executor)
    assert outputs["predict"].tolist() == [6.0, 14.0]
    assert parameters["graph_path"] == "prep,m"
    chain = rolenode("in", "TRANSFORMER", model("m", "iris", rolenode("out", "TRANSFORMER")))
    executor = GraphExecutor("g", chain, {"in": role(Doubler(), "TRANSFORMER"), "out": role(AddOne(), "TRANSFORMER")},
                             Models({"iris": 1}))
    outputs, parameters = run(executor)
    assert outputs["predict"].tolist() == [7.0, 15.0], "doubled, summed, plus one"
    assert parameters["graph_path"] == "in,m,out"


def test_a_combiner_gets_every_child_at_once_and_merges_in_child_order():
    models = Models({"a": 1, "b": 3}, sleep={"a": 0.05})
    tree = rolenode("avg", "COMBINER", model("ma", "a"), model("mb", "b"))
    outputs, parameters = run(GraphExecutor("g", tree, {"avg": role(Mean(), "COMBINER")}, models))
    assert outputs["predict"].tolist() == [6.0, 14.0], "mean of 1x and 3x the row sums"
    assert parameters["graph_path"] == "avg,ma,mb", "child order, though b answered first"


def test_an_outlier_detector_tags_the_answer_and_never_changes_it():
    tree = rolenode("od", "OUTLIER_DETECTOR", model("m", "iris"))
    executor = GraphExecutor("g", tree, {"od": role(Flag(), "OUTLIER_DETECTOR")}, Models({"iris": 1}))
    outputs, parameters = run(executor, {"x": np.array([[1.0, 2.0], [30.0, 4.0]])})
    assert outputs["predict"].tolist() == [3.0, 34.0]
    assert json.loads(parameters["outlier_scores"]) == {"od": [0.0, 1.0]}


def test_a_router_picks_a_child_by_index_and_one_that_names_no_child_is_a_500_naming_it():
    tree = rolenode("r", "ROUTER", model("v1", "a"), model("v2", "b"))
    models = Models({"a": 1, "b": 3})
    outputs, parameters = run(GraphExecutor("g", tree, {"r": role(PickSecond(), "ROUTER")}, models))
    assert outputs["predict"].tolist() == [9.0, 21.0] and models.calls == ["b"]
    assert json.loads(parameters["routing"]) == {"r": 1}
    with pytest.raises(RequestError) as refused:
        run(GraphExecutor("g", tree, {"r": role(PickMissing(), "ROUTER")}, models))
    assert refused.value.status == 500 and refused.value.field == "node:r"
    assert "route returned 7" in refused.value.message and "0: v1, 1: v2" in refused.value.message


def test_a_failing_child_passes_its_status_through_with_the_node_named():
    tree = rolenode("prep", "TRANSFORMER", model("m", "iris"))
    executor = GraphExecutor("g", tree, {"prep": role(Doubler(), "TRANSFORMER")}, Models({"iris": 1}, fail={"iris"}))
    with pytest.raises(RequestError) as refused:
        run(executor)
    assert refused.value.status == 422 and refused.value.field == "node:m"
    assert "graph 'g' node 'm'" in refused.value.message and "rejected the input" in refused.value.message


def test_a_split_holds_its_weights_and_a_routing_key_sticks():
    split = PlanNode(name="canary", kind="split", weights=(90.0, 10.0), routing_header="x-user",
                     children=(model("v1", "a"), model("v2", "b")))
    models = Models({"a": 1, "b": 3})
    executor = GraphExecutor("g", split, {}, models)

    async def many():
        return [await executor.run(ROWS, {}) for _ in range(2000)]

    answers = asyncio.run(many())
    share = sum(1 for _, p in answers if json.loads(p["routing"])["canary"] == 1) / 2000
    assert 0.07 <= share <= 0.13
    keyed = {json.loads(run(executor, headers={"x-user": "alice"})[1]["routing"])["canary"] for _ in range(50)}
    assert len(keyed) == 1


def test_a_shadow_gets_every_request_but_never_the_answer_nor_its_time():
    shadow = PlanNode(name="mirror", kind="shadow", children=(model("live", "a"), model("copy", "b")))
    models = Models({"a": 1, "b": 3}, fail={"b"}, sleep={"b": 0.2})
    metrics = GraphMetrics("g")
    executor = GraphExecutor("g", shadow, {}, models, metrics)

    async def calls():
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = [await executor.run(ROWS, {}) for _ in range(5)]
        took = loop.time() - started
        await asyncio.gather(*executor.shadows)
        return answers, took

    answers, took = asyncio.run(calls())
    assert all(outputs["predict"].tolist() == [3.0, 7.0] for outputs, _ in answers), "the primary's answer"
    assert all(parameters["graph_path"] == "mirror,live" for _, parameters in answers)
    assert took < 0.2, "five answers did not wait for a 0.2 s shadow"
    assert models.calls.count("b") == 5
    assert metrics.counts[("copy", "shadow", 422)] == 5 and metrics.counts[("live", "primary", 200)] == 5


def test_a_role_hook_that_raises_is_a_500_naming_the_node():
    class Broken:
        def transform_input(self, X):
            raise ValueError("no negative lengths")

    tree = rolenode("prep", "TRANSFORMER", model("m", "iris"))
    with pytest.raises(RequestError) as refused:
        run(GraphExecutor("g", tree, {"prep": role(Broken(), "TRANSFORMER")}, Models({"iris": 1})))
    assert refused.value.status == 500 and refused.value.field == "node:prep"
    assert "ValueError: no negative lengths" in refused.value.message


def test_the_plan_travels_as_plain_json_and_back():
    tree = rolenode("in", "TRANSFORMER", PlanNode(name="s", kind="split", weights=(1.0, 2.0),
                                                  children=(model("a", "a", outputs=("predict_proba",)), model("b", "b"))))
    assert PlanNode.from_dict(json.loads(json.dumps(tree.to_dict()))) == tree


def test_feedback_reaches_the_routers_an_answer_names_and_refuses_others():
    class Learner:
        def __init__(self):
            self.rewards = []

        def route(self, X, names):
            return 0

        def send_feedback(self, features, feature_names, reward, truth, routing=None):
            self.rewards.append((features.tolist(), feature_names, reward, routing))

    learner = Learner()
    tree = rolenode("r", "ROUTER", model("v1", "a"), model("v2", "b"))
    executor = GraphExecutor("g", tree, {"r": role(learner, "ROUTER")}, Models({"a": 1, "b": 3}))
    told = asyncio.run(executor.feedback({"r": 1}, 0.5, {"x": np.array([[1.0, 2.0]])}, None))
    assert told == ["r"] and learner.rewards == [([[1.0, 2.0]], ["x"], 0.5, 1)]
    for routing, field in (({"nobody": 0}, "routing"), ({"r": 2}, "routing.r"), ({"r": True}, "routing.r")):
        with pytest.raises(RequestError) as refused:
            asyncio.run(executor.feedback(routing, 1.0, None, None))
        assert refused.value.field == field


def test_with_tracing_every_node_is_a_span_nested_as_the_graph_and_a_failing_node_is_marked():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from modelpool.deployments import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable_for_tests(provider.get_tracer("test"), 1.0)
    try:
        tree = rolenode("prep", "TRANSFORMER", model("m", "iris"))

        async def traced(executor):
            ingress = tracing.start_ingress("POST /v2/models/g/infer", [], {})
            try:
                return await executor.run(ROWS, {})
            finally:
                ingress.end(200)

        asyncio.run(traced(GraphExecutor("g", tree, {"prep": role(Doubler(), "TRANSFORMER")}, Models({"iris": 1}))))
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert set(spans) == {"POST /v2/models/g/infer", "graph g node prep", "graph g node m"}
        assert spans["graph g node prep"].parent.span_id == spans["POST /v2/models/g/infer"].context.span_id
        assert spans["graph g node m"].parent.span_id == spans["graph g node prep"].context.span_id
        assert spans["graph g node m"].attributes["modelpool.graph.kind"] == "model"
        exporter.clear()
        broken = GraphExecutor("g", tree, {"prep": role(Doubler(), "TRANSFORMER")}, Models({"iris": 1}, fail={"iris"}))
        with pytest.raises(RequestError):
            asyncio.run(traced(broken))
        failed = {s.name: s for s in exporter.get_finished_spans()}["graph g node m"]
        assert failed.attributes["http.response.status_code"] == 422
        assert failed.status.status_code.name == "UNSET", "a refusal passed through is not the graph's fault"
    finally:
        tracing.disable()
