"""The fuzzer's hooks: reads get real names half the time, writes never do."""
from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest
from hypothesis import find
from hypothesis import strategies as st

REAL = {"models": ["iris"], "versions": ["1"], "execution_id": "abc123", "index": 1, "artifact": "report.json"}


@pytest.fixture()
def hooks(monkeypatch):
    monkeypatch.setenv("MODELPOOL_FUZZ_REAL", json.dumps(REAL))
    import loadtests.fuzz_hooks

    yield importlib.reload(loadtests.fuzz_hooks)
    monkeypatch.delenv("MODELPOOL_FUZZ_REAL")
    importlib.reload(loadtests.fuzz_hooks)


def operation(method: str, path: str) -> SimpleNamespace:
    return SimpleNamespace(operation=SimpleNamespace(method=method, path=path))


def test_reads_draw_real_names_as_well_as_random_ones(hooks):
    random_names = st.fixed_dictionaries({"model_name": st.text(min_size=1), "model_version": st.text(min_size=1)})
    seeded = hooks.before_generate_path_parameters(operation("get", "/models/{model_name}/{model_version}"), random_names)
    assert find(seeded, lambda p: p == {"model_name": "iris", "model_version": "1"})
    assert find(seeded, lambda p: p["model_name"] != "iris")


def test_batch_reads_name_the_real_batch_row_and_artifact(hooks):
    random_ids = st.fixed_dictionaries({"execution_id": st.text(), "index": st.integers(), "name": st.text()})
    seeded = hooks.before_generate_path_parameters(
        operation("GET", "/batches/{execution_id}/results/{index}/artifacts/{name}"), random_ids)
    assert find(seeded, lambda p: p == {"execution_id": "abc123", "index": 1, "name": "report.json"})


@pytest.mark.parametrize("method, path", [("PUT", "/models/{model_name}"), ("DELETE", "/models/{model_name}"),
                                          ("PUT", "/pools/{name}/{version}"), ("DELETE", "/batches/{execution_id}")])
def test_writes_keep_random_names(hooks, method, path):
    strategy = st.fixed_dictionaries({"model_name": st.text()})
    assert hooks.before_generate_path_parameters(operation(method, path), strategy) is strategy


def test_schemathesis_wrapped_parameters_keep_their_wrapper(hooks):
    from schemathesis.generation.value import GeneratedValue

    wrapped = st.builds(lambda name: GeneratedValue({"model_name": name}, None), st.text())
    seeded = hooks.before_generate_path_parameters(operation("GET", "/models/{model_name}"), wrapped)
    real = find(seeded, lambda p: p.value == {"model_name": "iris"})
    assert isinstance(real, GeneratedValue)


def test_only_readiness_saying_not_ready_is_forgiven(hooks):
    def failure_for(path: str, status: int, body: dict) -> bool:
        case = SimpleNamespace(operation=SimpleNamespace(path=path))
        response = SimpleNamespace(status_code=status, json=lambda: body)
        return hooks.filter_failure(None, object(), case, response)

    assert failure_for("/v2/health/ready", 503, {"ready": False, "notReady": {"model:iris:1": "DELETING"}}) is False
    assert failure_for("/v2/health/ready", 500, {"error": "boom"}) is True
    assert failure_for("/models/{model_name}", 503, {"ready": False}) is True
