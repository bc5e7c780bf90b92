"""Schemathesis hooks for ``loadtests.fuzz_api``: half the read calls name things that exist.

Random path parameters almost never name a registered model or a real batch, so a plain run mostly
tests the 404 path (schemathesis said so for 18 of 26 operations). These hooks give every GET, and
the cancel of a batch, a 50% chance of real names instead: an example model and version, a batch
run before fuzzing started (its execution id, a row index, the row's artifact). Writes (register,
scale, pools, unregister) keep random names: fuzzing them with real ones would start replicas by the
hundred on a 2-core machine, a test of the machine rather than the API.

One failure is dropped: readiness answering its documented 503 while applications the fuzzer
unregistered are being deleted (``filter_failure``).

The real values arrive in MODELPOOL_FUZZ_REAL (JSON: models, versions, execution_id, index, artifact);
schemathesis loads this module through SCHEMATHESIS_HOOKS.
"""
from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

REAL: dict[str, Any] = json.loads(os.environ.get("MODELPOOL_FUZZ_REAL", "{}"))


def real_parameters(method: str, path: str) -> dict[str, Any]:
    """Strategies of real values for the path parameters of one operation (empty: leave it random)."""
    if not REAL or not (method == "GET" or path.endswith("/cancel")):
        return {}
    models, versions = st.sampled_from(REAL["models"]), st.sampled_from(REAL["versions"])
    if path.startswith("/models/"):
        return {"model_name": models, "model_version": versions}
    if path.startswith("/pools/"):
        return {"name": models, "version": versions}
    if path.startswith("/batches/"):
        real = {"execution_id": st.just(REAL["execution_id"]), "index": st.sampled_from([0, REAL["index"]])}
        if path.endswith("/artifacts/{name}"):
            real["name"] = st.just(REAL["artifact"])
        return real
    return {}


@schemathesis.hook
def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy) -> st.SearchStrategy:
    operation = context.operation
    if operation is None:
        return strategy
    real = real_parameters(operation.method.upper(), operation.path)
    if not real:
        return strategy

    def with_real(parameters: Any) -> st.SearchStrategy:
        # schemathesis hands over a plain dict, or its GeneratedValue wrapper (kept, with its provenance)
        plain = getattr(parameters, "value", parameters) or {}
        wanted = st.fixed_dictionaries({key: value for key, value in real.items() if key in plain})
        if hasattr(parameters, "map_value"):
            return wanted.map(lambda chosen: parameters.map_value(lambda value: {**(value or {}), **chosen}))
        return wanted.map(lambda chosen: {**plain, **chosen})

    return st.one_of(strategy, strategy.flatmap(with_real))


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but one: readiness answering its documented 503 while applications change.

    The fuzzer unregisters models (the stateful phase finds their names), and ``/v2/health/ready`` is
    503 until their applications are gone: what a load balancer's readiness probe must see. The
    ``not_a_server_error`` check counts every 5xx, documented or not.
    """
    documented_not_ready = (case.operation.path == "/v2/health/ready" and response.status_code == 503
                            and response.json().get("ready") is False)
    return not documented_not_ready
