"""The soak run's workload: paced inference clients, and the management calls (scale, batch jobs).

Each inference client is a thread with its own keep-alive ``requests.Session`` (and, when the cluster's gRPC
port is known, its own tritonclient gRPC channel), sending one request at a time at a steady pace (``rate`` per
second, each kind drawn by weight): V2 JSON on the iris default version, iris v1 and iris_report, V2 binary on
iris v2, plain JSON on diabetes, gRPC on iris v1. An answer counts as ok only with HTTP 200 (gRPC OK) and one
prediction per row sent. A 429 (gRPC RESOURCE_EXHAUSTED) is *refused*: the client waits its ``Retry-After`` plus up
to half again at random, as modelpool's clients do. Nothing retries a failure: each one is recorded.

Management calls carry the token and are marked ``management`` (the management kill excuses them in its grace
window). Scale calls are synchronous; a batch job is submitted with an ``Idempotency-Key`` (resent with the same key
while management is unreachable), polled until it ends, and its result page read back.
"""
from __future__ import annotations

import json
import random
import struct
import threading
import time
import uuid
from typing import Any, Callable, Optional

import requests

from loadtests.soak_report import FAILED, OK, REFUSED, Job, Request

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 4.2, 1.5], [4.9, 3.0, 1.4, 0.2], [6.7, 3.1, 5.6, 2.4]]
DIABETES = [[0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199, -0.0176],
            [-0.0019, -0.0446, -0.0515, -0.0263, -0.0084, -0.0192, 0.0744, -0.0395, -0.0683, -0.0922]]
TIMEOUT = (5, 30)
FINAL_STATES = ("Complete", "Failed", "Cancelled")


class Recorder:
    """Where every request lands, timed from the start of the run (list.append is atomic: no lock needed)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests: list[Request] = []

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, kind: str, start: float, outcome: str, error: str = "", management: bool = False) -> None:
        self.requests.append(Request(kind, start, self.now(), outcome, error, management))


def _v2(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [v for row in rows for v in row]}]}


def v2_problem(body: Any, rows: int, outputs: tuple[str, ...] = ("predict",)) -> str:
    found = {o.get("name"): o for o in body.get("outputs", [])}
    for name in outputs:
        if len((found.get(name) or {}).get("data", [])) != rows:
            return f"output {name!r}: {len((found.get(name) or {}).get('data', []))} values for {rows} rows"
    return ""


def binary_body(rows: list[list[float]]) -> tuple[bytes, int]:
    """(body, JSON header length) of a V2 binary request, outputs asked in binary too."""
    data = struct.pack(f"<{len(rows) * 4}d", *(v for row in rows for v in row))
    header = json.dumps({"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + data, len(header)


def binary_problem(response: requests.Response, rows: int) -> str:
    length = int(response.headers.get("Inference-Header-Content-Length", "-1"))
    if length < 0:
        return "no Inference-Header-Content-Length in the answer"
    outputs = {o["name"]: o for o in json.loads(response.content[:length]).get("outputs", [])}
    size = ((outputs.get("predict") or {}).get("parameters") or {}).get("binary_data_size")
    if outputs.get("predict", {}).get("shape", [None])[0] != rows or not size:
        return f"binary answer {outputs.get('predict')} for {rows} rows"
    return "" if len(response.content) >= length + size else f"{len(response.content) - length} data bytes of {size}"


class InferenceClient(threading.Thread):
    """One client: a keep-alive session sending paced requests until ``stop`` is set."""

    def __init__(self, index: int, url: str, grpc_target: str, rate: float, recorder: Recorder,
                 stop: threading.Event) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.url, self.grpc_target, self.interval = url, grpc_target, 1.0 / rate
        self.recorder, self.stop_event = recorder, stop
        self.random = random.Random(index)
        self.session = requests.Session()
        self.grpc: Any = None
        self.kinds: list[tuple[str, int, Callable[[], tuple[str, str, float]]]] = [
            ("v2-json iris", 3, lambda: self._json("/v2/models/iris/infer", IRIS)),
            ("v2-json iris v1", 2, lambda: self._json("/v2/models/iris/versions/1/infer", IRIS)),
            ("v2-json iris_report", 1, lambda: self._json("/v2/models/iris_report/infer", IRIS,
                                                          ("predict", "confidence"))),
            ("v2-binary iris v2", 2, self._binary),
            ("plain diabetes", 1, self._plain)]
        if grpc_target:
            self.kinds.append(("grpc iris v1", 2, self._grpc))

    def run(self) -> None:
        names, weights = [k[0] for k in self.kinds], [k[1] for k in self.kinds]
        calls = {k[0]: k[2] for k in self.kinds}
        due = time.monotonic() + self.random.uniform(0, self.interval)  # clients spread over the first interval
        try:
            while not self.stop_event.is_set():
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    break
                kind = self.random.choices(names, weights)[0]
                start = self.recorder.now()
                try:
                    outcome, error, wait_s = calls[kind]()
                except requests.RequestException as exc:
                    outcome, error, wait_s = FAILED, f"connection: {type(exc).__name__}: {str(exc)[:120]}", 0.0
                except Exception as exc:  # noqa: BLE001 - anything else is a failed request, recorded
                    outcome, error, wait_s = FAILED, f"{type(exc).__name__}: {str(exc)[:160]}", 0.0
                self.recorder.add(kind, start, outcome, error)
                # the next request at the pace, never a burst to catch up; after a 429, Retry-After and jitter first
                due = max(due + self.interval, time.monotonic() + wait_s * self.random.uniform(1.0, 1.5))
        finally:
            self.session.close()
            if self.grpc is not None:
                self.grpc.close()

    def _rows(self, data: list[list[float]]) -> list[list[float]]:
        return self.random.sample(data, self.random.randint(1, 2))

    def _answer(self, response: requests.Response, problem: Callable[[], str]) -> tuple[str, str, float]:
        if response.status_code == 429:
            return REFUSED, "429", float(response.headers.get("Retry-After", "1") or 1)
        if response.status_code != 200:
            return FAILED, f"HTTP {response.status_code}: {response.text[:120]}", 0.0
        error = problem()
        return (FAILED, error, 0.0) if error else (OK, "", 0.0)

    def _json(self, path: str, data: list[list[float]], outputs: tuple[str, ...] = ("predict",)):
        rows = self._rows(data)
        response = self.session.post(self.url + path, json=_v2(rows), timeout=TIMEOUT)
        return self._answer(response, lambda: v2_problem(response.json(), len(rows), outputs))

    def _binary(self):
        rows = self._rows(IRIS)
        body, length = binary_body(rows)
        response = self.session.post(self.url + "/v2/models/iris/versions/2/infer", data=body, timeout=TIMEOUT,
                                     headers={"Inference-Header-Content-Length": str(length),
                                              "Content-Type": "application/octet-stream"})
        return self._answer(response, lambda: binary_problem(response, len(rows)))

    def _plain(self):
        rows = self._rows(DIABETES)
        response = self.session.post(self.url + "/v2/models/diabetes/predict", json={"instances": rows},
                                     timeout=TIMEOUT)
        return self._answer(response, lambda: "" if len(response.json().get("predictions", [])) == len(rows)
                            else f"{len(response.json().get('predictions', []))} predictions for {len(rows)} rows")

    def _grpc(self):
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if self.grpc is None:
            self.grpc = grpcclient.InferenceServerClient(self.grpc_target)
        rows = np.array(self._rows(IRIS))
        tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        try:
            answer = self.grpc.infer("iris", [tensor], model_version="1", client_timeout=TIMEOUT[1])
        except InferenceServerException as exc:
            if "RESOURCE_EXHAUSTED" in str(exc.status()):
                return REFUSED, "RESOURCE_EXHAUSTED", 1.0
            return FAILED, f"gRPC {exc.status()}: {str(exc.message())[:120]}", 0.0
        predicted = answer.as_numpy("predict")
        return (OK, "", 0.0) if predicted is not None and len(predicted) == len(rows) else \
            (FAILED, f"gRPC answer {predicted!r} for {len(rows)} rows", 0.0)


class Management:
    """The management calls of the run, each recorded (``record=False`` for set-up and clean-up)."""

    def __init__(self, url: str, token: str, recorder: Recorder) -> None:
        self.url, self.token, self.recorder = url, token, recorder
        self._local = threading.local()  # a session per thread: a synchronous scale must not hold up a batch's polls
        self._sessions: list[requests.Session] = []
        self.idempotency_keys: list[str] = []

    @property
    def session(self) -> requests.Session:
        if getattr(self._local, "session", None) is None:
            self._local.session = requests.Session()
            self._local.session.headers["Authorization"] = f"Bearer {self.token}"
            self._sessions.append(self._local.session)
        return self._local.session

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def call(self, kind: str, method: str, path: str, ok: tuple[int, ...] = (200,), record: bool = True,
             **kwargs: Any) -> Optional[requests.Response]:
        start = self.recorder.now()
        try:
            response = self.session.request(method, self.url + path, timeout=(5, 120), **kwargs)
            error = "" if response.status_code in ok else f"HTTP {response.status_code}: {response.text[:120]}"
        except requests.RequestException as exc:
            response, error = None, f"connection: {type(exc).__name__}: {str(exc)[:120]}"
        if record:
            self.recorder.add(kind, start, FAILED if error else OK, error, management=True)
        return None if error else response

    def workers(self, name: str, version: str) -> tuple[int, int]:
        described = self.call("describe", "GET", f"/models/{name}/{version}", record=False)
        if described is None:
            raise RuntimeError(f"cannot describe {name} v{version}: is the cluster serving the example models?")
        first = described.json()[0]
        return int(first["minWorkers"]), int(first["maxWorkers"])

    def scale(self, kind: str, name: str, version: str, low: int, high: int, record: bool = True) -> bool:
        return self.call(kind, "PUT", f"/models/{name}/{version}", record=record, params={
            "min_worker": low, "max_worker": high, "synchronous": "true", "timeout": 90}) is not None

    def answering(self, timeout_s: float, record: bool = False) -> Optional[float]:
        """Seconds until management answers ``GET /models`` with 200; None past ``timeout_s``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.call("list models", "GET", "/models", record=record) is not None:
                return time.monotonic() - started
            time.sleep(0.5)
        return None

    def batch(self, service: str, version: str, rows: list[list[float]], parallel: int = 2,
              timeout_s: float = 120.0, poll_s: float = 0.5) -> Job:
        """Submit, poll until the job ends, read its results back: the job as it ended."""
        key = f"soak-{uuid.uuid4().hex}"
        self.idempotency_keys.append(key)
        submitted, deadline = self.recorder.now(), time.monotonic() + timeout_s
        body = {"service": service, "version": version, "records": rows, "parallel_count": parallel}
        execution_id = ""
        while not execution_id and time.monotonic() < deadline:
            answer = self.call("batch submit", "POST", "/batches", ok=(202,), json=body,
                               headers={"Idempotency-Key": key})
            if answer is None:
                time.sleep(1.0)  # management unreachable: the same key again, never a second job
                continue
            execution_id = answer.json()["executionId"]
        state = "Pending" if execution_id else "Lost: never accepted"
        while execution_id and time.monotonic() < deadline:
            answer = self.call("batch poll", "GET", f"/batches/{execution_id}")
            state = answer.json().get("state", "?") if answer is not None else state
            if state in FINAL_STATES:
                break
            time.sleep(poll_s)
        else:
            state = f"Lost: not final after {timeout_s:g} s" if execution_id else state
        if state == "Complete":
            page = self.call("batch results", "GET", f"/batches/{execution_id}",
                             params={"show_partial_results": "true", "limit": len(rows)})
            results = page.json().get("results", []) if page is not None else []
            if len(results) != len(rows) or any(r.get("status") != "Success" for r in results):
                state = f"Complete but {len(results)} rows read back, not all Success"
        return Job(execution_id or key, submitted, self.recorder.now(), state, len(rows))
