"""Locust load test: V2 inference on iris and plain JSON predictions on diabetes.

Headless, bounded in time, against a cluster on this machine:

    locust -f loadtests/locustfile.py --headless -u 64 -r 16 -t 60s --host http://127.0.0.1:8000 \
        --csv results/serving

FastHttpUser (geventhttpclient) keeps one connection per user, like a real client pool.
Each V2 request carries 1 to MODELPOOL_LOCUST_MAX_ROWS rows drawn from the iris data set.
"""
from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task
from sklearn.datasets import load_diabetes, load_iris

IRIS = load_iris().data.tolist()
DIABETES = load_diabetes().data.tolist()
MAX_ROWS = int(os.environ.get("MODELPOOL_LOCUST_MAX_ROWS", "1"))


def v2_request(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [value for row in rows for value in row]}]}


class InferenceUser(FastHttpUser):
    wait_time = between(0, 0.01)

    @task(4)
    def infer_iris_v2(self) -> None:
        rows = random.sample(IRIS, random.randint(1, MAX_ROWS))
        with self.client.post("/v2/models/iris/infer", json=v2_request(rows), name="/v2/models/iris/infer",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["outputs"][0]["data"]) != len(rows):
                response.failure("wrong number of predictions")

    @task(1)
    def predict_diabetes_plain(self) -> None:
        rows = random.sample(DIABETES, random.randint(1, MAX_ROWS))
        with self.client.post("/v2/models/diabetes/predict", json={"instances": rows}, name="/v2/models/diabetes/predict",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["predictions"]) != len(rows):
                response.failure("wrong number of predictions")
