"""A synchronous call answers once the ingress serves what it started: the caller's very next request is answered by
the replicas it asked for, never by HAProxy's 503 from before its reload (management's rule: read your writes).

The management app runs in process over real HTTP (management_app.py); its ``Proxy`` plays the ingress, and
``route_lag`` plays an HAProxy that has not yet reloaded with a new app's servers.
"""
from __future__ import annotations

import pytest
import requests

from tests.unit.management_app import management_fixture, model_store  # noqa: F401 (fixtures)


@pytest.mark.parametrize("call", ["register", "scale"])
def test_a_synchronous_call_answers_once_the_ingress_routes_to_the_replicas_it_started(management, call):
    """Serve reports a new app's replicas RUNNING before its HAProxy has reloaded with them; the 200 waits for the
    ingress, so the next request is served. (Once on CI, two versions registered at once and the next request was
    not answered by the new default: tests/integration/test_management.py.)"""
    ingress = management.ingress
    with requests.Session() as admin:
        admin.headers["Authorization"] = f"Bearer {management.token}"
        if call == "scale":
            assert admin.post(f"{management.url}/models", params={"url": "iris-1.zip"}).status_code == 200
        ingress.route_lag = 3  # HAProxy not reloaded yet: three more requests to the model's route find no server
        answer = (admin.post(f"{management.url}/models", params={"url": "iris-1.zip", "initial_workers": 1,
                                                                  "synchronous": "true"}) if call == "register"
                  else admin.put(f"{management.url}/models/iris", params={"min_worker": 1, "synchronous": "true"}))
        assert answer.status_code == 200, answer.text
        inference = admin.post(f"{management.url}/v2/models/iris/infer", json={"inputs": [
            {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 3.3, 6.0, 2.5]}]})
    assert inference.status_code == 200, inference.text
    assert inference.json()["model_version"] == "1"
    assert [s.path for s in ingress.probes] == ["/v2/models/iris/-"] * 4, (
        "probed until the model's route reached its replica")
