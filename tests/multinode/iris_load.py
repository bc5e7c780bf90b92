"""The fault tests' load: V2 inference on iris only, from a few keep-alive users, every answer checked.

A failure is anything but a 200 carrying one prediction: a 5xx from the ingress, a reset connection,
a timeout (5 s; a request stuck behind a dead replica must count), or a wrong body.
"""
from __future__ import annotations

from locust import FastHttpUser, constant, task

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


class IrisUser(FastHttpUser):
    wait_time = constant(0.01)
    network_timeout = 5.0
    connection_timeout = 5.0

    @task
    def infer(self) -> None:
        with self.client.post("/v2/models/iris/infer", json=ROW, name="iris infer", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif len(response.json()["outputs"][0]["data"]) != 1:
                response.failure("wrong number of predictions")
