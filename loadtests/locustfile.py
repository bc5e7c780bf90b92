"""Locust load test: inference on every example model, V2 and plain JSON, default and pinned versions.

Headless, bounded in time, against a cluster on this machine (loopback only):

    locust -f loadtests/locustfile.py --headless -u 64 -r 16 -t 60s --host http://127.0.0.1:8000 \
        --csv results/serving

FastHttpUser (geventhttpclient) keeps one connection per user, like a real client pool. Each request
carries 1 to MODELPOOL_LOCUST_MAX_ROWS rows drawn from the iris or diabetes data set, and an answer
counts as a success only with HTTP 200 and one prediction per row sent (a 200 with the wrong number of
predictions is the kind of bug a status check alone would miss).

Request names are the paths, stable across runs so CSVs can be compared: the iris default version
(V2, the busiest route), iris pinned to version 1, iris_report (a Python handler with two outputs),
diabetes in V2 and diabetes in plain JSON.
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable, Optional

import gevent
import locust.stats
from locust import FastHttpUser, between, events, task
from sklearn.datasets import load_diabetes, load_iris

IRIS = load_iris().data.tolist()
DIABETES = load_diabetes().data.tolist()
MAX_ROWS = int(os.environ.get("MODELPOOL_LOCUST_MAX_ROWS", "1"))

IRIS_DEFAULT = "/v2/models/iris/infer"
IRIS_V1 = "/v2/models/iris/versions/1/infer"
IRIS_REPORT = "/v2/models/iris_report/infer"
DIABETES_V2 = "/v2/models/diabetes/infer"
DIABETES_PLAIN = "/v2/models/diabetes/predict"
REQUEST_NAMES = (IRIS_DEFAULT, IRIS_V1, IRIS_REPORT, DIABETES_V2, DIABETES_PLAIN)


# locust starts its --run-time timer on gevent's cached clock, which a CPU-bound import (sklearn and the
# data sets above: 2-3 s here) leaves stale: refresh it, or every run is shorter than -t by that much.
gevent.get_hub().loop.update_now()


def v2_request(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [value for row in rows for value in row]}]}


def sample(data: list[list[float]]) -> list[list[float]]:
    return random.sample(data, random.randint(1, MAX_ROWS))


def v2_problem(body: Any, rows: int, outputs: tuple[str, ...], version: Optional[str] = None) -> Optional[str]:
    """Why a V2 answer is wrong, or None: each expected output must hold one value per row."""
    by_name = {o.get("name"): o for o in body.get("outputs", [])}
    for name in outputs:
        if name not in by_name:
            return f"output {name!r} missing; got {sorted(by_name)}"
        if len(by_name[name].get("data", [])) != rows:
            return f"wrong number of predictions in {name!r}: {len(by_name[name].get('data', []))} for {rows} rows"
    if version is not None and body.get("model_version") != version:
        return f"answered by version {body.get('model_version')!r}, asked for {version!r}"
    return None


class InferenceUser(FastHttpUser):
    wait_time = between(0, 0.01)

    def _post(self, path: str, payload: dict, check: Callable[[Any], Optional[str]]) -> None:
        """POST and mark the answer failed unless it is a 200 that ``check(body)`` finds nothing wrong with."""
        with self.client.post(path, json=payload, name=path, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                problem = check(response.json())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not the JSON shape we expect
                problem = f"unreadable answer ({exc!r}): {(response.text or '')[:200]}"
            if problem:
                response.failure(problem)

    @task(4)
    def infer_iris_v2(self) -> None:
        rows = sample(IRIS)
        self._post(IRIS_DEFAULT, v2_request(rows), lambda body: v2_problem(body, len(rows), ("predict",)))

    @task(2)
    def infer_iris_version_1(self) -> None:
        rows = sample(IRIS)
        self._post(IRIS_V1, v2_request(rows), lambda body: v2_problem(body, len(rows), ("predict",), version="1"))

    @task(1)
    def infer_iris_report(self) -> None:
        rows = sample(IRIS)
        self._post(IRIS_REPORT, v2_request(rows), lambda body: v2_problem(body, len(rows), ("predict", "confidence")))

    @task(1)
    def infer_diabetes_v2(self) -> None:
        rows = sample(DIABETES)
        self._post(DIABETES_V2, v2_request(rows), lambda body: v2_problem(body, len(rows), ("predict",)))

    @task(1)
    def predict_diabetes_plain(self) -> None:
        rows = sample(DIABETES)
        self._post(DIABETES_PLAIN, {"instances": rows},
                   lambda body: None if len(body["predictions"]) == len(rows)
                   else f"wrong number of predictions: {len(body['predictions'])} for {len(rows)} rows")


@events.quitting.add_listener
def _let_csv_catch_up(**_: Any) -> None:
    """locust rewrites its CSVs once a second and not at exit (locustio/locust#1806): without one more
    second, the last requests would be missing from them."""
    gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.25)
