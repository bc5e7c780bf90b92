"""A model's response_timeout (TorchServe's register parameter) is enforced by the replica itself.

Serve's own request timeout can be switched off by any client (``x-request-timeout-seconds: 0``),
so the replica answers 504 once a call passes the model's response_timeout, and its health check
fails while a handler call is still running past it, so that Serve replaces a stuck replica.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from modelpool.deployments import model_calls
from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.examples import archive_command
from modelpool.deployments.loaded_model import DEFAULT_RESPONSE_TIMEOUT_S, LoadedModel
from modelpool.management.placement import plan
from modelpool.management.serve_configs import model_app_config
from tests.unit.test_server_settings import record

SLOW_HANDLER = """
import time
import numpy as np

def predict(data):
    time.sleep(float(np.asarray(data)[0][0]))   # the first reading says how long to think
    return np.asarray(data).sum(axis=1)
"""


@pytest.fixture()
def slow_model(tmp_path) -> LoadedModel:
    source = tmp_path / "slow.py"
    source.write_text(SLOW_HANDLER)
    archive_command(name="slow", version="1", handler="slow:predict", files=[source], out=tmp_path / "slow-1.zip")
    model = LoadedModel(unpack_archive(tmp_path / "slow-1.zip", tmp_path / "cache"), "slow", "1")
    yield model
    model.close()


def predict(model: LoadedModel, seconds: float):
    async def read() -> bytes:
        return json.dumps({"instances": [[seconds, 1.0]]}).encode()

    return asyncio.run(model_calls.answer_model_call(model, model_calls.ModelCall(None, "predict"), read, ["1"], {}, {}))


def test_a_call_past_the_response_timeout_is_a_504_naming_it_and_the_replica_turns_unhealthy(slow_model):
    assert slow_model.response_timeout_s == DEFAULT_RESPONSE_TIMEOUT_S == 120
    slow_model.configure(64, 0.005, response_timeout_s=0.5)
    began = time.monotonic()
    answer = predict(slow_model, 2.0)
    assert time.monotonic() - began < 1.5, "the caller waits for the response_timeout, not for the handler"
    assert answer.status_code == 504
    assert json.loads(answer.body) == {
        "error": "model 'slow' version '1' did not answer within its response_timeout of 0.5 s; send fewer rows per "
                 "request, or register the model with a larger response_timeout",
        "field": "response_timeout"}
    time.sleep(0.2)
    with pytest.raises(RuntimeError, match=r"a handler call has run \d+ s, past its response_timeout of 0.5 s"):
        model_calls.check_not_overdue(slow_model)   # the stuck call still holds the model thread

    time.sleep(1.5)  # the call ends on its own
    model_calls.check_not_overdue(slow_model)
    quick = predict(slow_model, 0.0)
    assert quick.status_code == 200 and json.loads(quick.body) == {"predictions": [1.0]}


def test_calls_within_the_response_timeout_are_untouched(slow_model):
    slow_model.configure(64, 0.005, response_timeout_s=5)
    answer = predict(slow_model, 0.3)
    assert answer.status_code == 200 and json.loads(answer.body) == {"predictions": [1.3]}
    model_calls.check_not_overdue(slow_model)


def test_the_registered_response_timeout_reaches_dedicated_replicas_and_the_generic_pool():
    from modelpool.cluster.settings import load_settings

    settings = load_settings({}, {})
    dedicated = plan([record().model_copy(update={"response_timeout_s": 7.5})], {}, {}, settings).dedicated[0]
    assert model_app_config(dedicated, "/cache", "code").deployment_options["user_config"]["response_timeout_s"] == 7.5
    pooled = record().model_copy(update={"response_timeout_s": 9.0, "initial_workers": 0, "min_workers": 0,
                                         "max_workers": 0})
    catalog = plan([pooled], {}, {}, settings).catalog
    assert catalog["iris"]["versions"]["1"]["response_timeout_s"] == 9.0
