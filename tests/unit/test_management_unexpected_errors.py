"""An error no route expected still answers in modelpool's JSON shape: a retryable 503 when a part of the cluster
was lost (a Ray actor on a dead node, object storage not answering), a 500 otherwise; never Starlette's bare text
500, which the front reads as a lost replica. Over real HTTP, against the real management application."""
from __future__ import annotations

import pytest
import requests
from ray.exceptions import ActorDiedError

from modelpool.management.api import state
from tests.unit.management_app import RunningManagement, management_fixture, model_store  # noqa: F401 (fixtures)


def failing(error: Exception):
    def read(*_args):
        raise error
    return read


@pytest.mark.parametrize("error", [ActorDiedError(), OSError("AWS Error NETWORK_CONNECTION during GetObject")],
                         ids=["actor-lost", "object-storage"])
def test_a_lost_part_of_the_cluster_is_a_json_503_to_retry(management: RunningManagement, monkeypatch, error):
    monkeypatch.setattr(state.batches, "state", failing(error))
    answer = requests.get(f"{management.url}/batches/{'a' * 32}", headers={"Authorization": f"Bearer {management.token}"},
                          timeout=10)
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"]
    message = answer.json()["error"]
    assert type(error).__name__ in message and "retry" in message
    assert "NETWORK_CONNECTION" not in message, "the error's own text (paths, hosts) only with --debug"


def test_any_other_unexpected_error_is_a_json_500(management: RunningManagement, monkeypatch):
    monkeypatch.setattr(state.batches, "state", failing(KeyError("partitions")))
    answer = requests.get(f"{management.url}/batches/{'a' * 32}", headers={"Authorization": f"Bearer {management.token}"},
                          timeout=10)
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    assert answer.json()["error"].startswith("internal error (KeyError) in the management replica")
    monkeypatch.setattr(state, "debug", True)
    assert "partitions" in requests.get(f"{management.url}/batches/{'a' * 32}", timeout=10,
                                        headers={"Authorization": f"Bearer {management.token}"}).json()["error"]
