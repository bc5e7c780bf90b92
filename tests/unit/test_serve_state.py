"""What management makes of Serve's instance details: ``modelpool status``'s rows."""
from __future__ import annotations

from enum import Enum

from modelpool.management.serve_state import application_rows


class State(str, Enum):  # the controller's details may carry Serve's enums as well as their values
    RUNNING = "RUNNING"


def test_rows_count_each_deployments_replicas_by_state():
    details = {"applications": {
        "model:iris:1": {"status": "RUNNING", "deployments": {"ModelServer": {"status": "HEALTHY", "replicas": [
            {"state": State.RUNNING}, {"state": "RUNNING"}, {"state": "STARTING"}]}}},
        "model:gone:1": {"status": "DELETING", "deployments": {}},
    }}
    assert application_rows(details) == {
        "model:iris:1": {"status": "RUNNING",
                         "deployments": {"ModelServer": {"status": "HEALTHY", "replicas": {"RUNNING": 2, "STARTING": 1}}}},
        "model:gone:1": {"status": "DELETING", "deployments": {}},
    }
    assert application_rows({}) == {}
