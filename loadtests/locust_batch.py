"""Locust load test: batch scoring jobs, submitted, polled to the end and their results checked.

    MODELPOOL_TOKEN=... locust -f loadtests/locust_batch.py --headless -u 2 -r 1 -t 60s \
        --stop-timeout 60 --host http://127.0.0.1:8000 --csv results/batch

Each user, in turn, submits a job of MODELPOOL_LOCUST_BATCH_ROWS records drawn from the iris data set
(scored by ``iris_report`` v1, which also writes a ``report.json`` per row) or the diabetes data set
(``diabetes`` v1), with ``parallel_count`` MODELPOOL_LOCUST_BATCH_PARALLEL; polls its state until it
is final (at most MODELPOOL_LOCUST_BATCH_TIMEOUT_S); reads the whole result page (every row must be a
Success) and one random row on its own, which must match the page and be a plausible prediction (and,
for ``iris_report``, list its ``report.json``).

Besides the HTTP requests, every job is one ``BATCH`` event named ``job end-to-end <service>/<version>``:
its response time is submit -> ``Complete`` seen (to within MODELPOOL_LOCUST_BATCH_POLL_S), and it is a
failure when the job did not complete, or any check of its results failed. A job still running when
its user is stopped is cancelled, so nothing keeps scoring after the test.

Token as in locust_management.py: MODELPOOL_TOKEN, else MODELPOOL_MANAGEMENT_TOKEN, else
``$MODELPOOL_HOME/management_token``.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import gevent
import locust.stats
from locust import FastHttpUser, between, events, task
from sklearn.datasets import load_diabetes, load_iris

from modelpool.client import resolve_token

TOKEN = resolve_token(os.environ.get("MODELPOOL_TOKEN"))
if not TOKEN:
    raise SystemExit("no management token: set MODELPOOL_TOKEN, or MODELPOOL_HOME to the home whose "
                     "management_token `modelpool start` wrote (default ~/.modelpool)")
ROWS = int(os.environ.get("MODELPOOL_LOCUST_BATCH_ROWS", "200"))
PARALLEL = int(os.environ.get("MODELPOOL_LOCUST_BATCH_PARALLEL", "2"))
TIMEOUT_S = float(os.environ.get("MODELPOOL_LOCUST_BATCH_TIMEOUT_S", "60"))
POLL_S = float(os.environ.get("MODELPOOL_LOCUST_BATCH_POLL_S", "0.1"))
FINAL_STATES = ("Complete", "Failed", "Cancelled")

SUBMIT = "/batches [submit]"
STATE = "/batches/{id} [state]"
RESULTS = "/batches/{id}?show_partial_results [results page]"
ROW = "/batches/{id}/results/{index} [one row]"
ARTIFACTS = "/batches/{id}/results/{index}/artifacts [list]"
CANCEL = "/batches/{id}/cancel [unfinished job]"


def _iris_problem(outputs: dict) -> Optional[str]:
    if outputs.get("predict") not in (0, 1, 2):
        return f"iris class {outputs.get('predict')!r} is not 0, 1 or 2"
    if not 1 / 3 <= float(outputs.get("confidence", -1)) <= 1:
        return f"confidence {outputs.get('confidence')!r} is outside [1/3, 1] (the best of three classes)"
    return None


def _diabetes_problem(outputs: dict) -> Optional[str]:
    value = outputs.get("predict")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"diabetes prediction {value!r} is not a finite number"
    return None


@dataclass(frozen=True)
class Job:
    service: str
    version: str
    rows: list[list[float]]
    problem: Callable[[dict], Optional[str]]  # what is wrong with one row's outputs, or None
    artifacts: tuple[str, ...] = ()           # files the handler writes for every row

    @property
    def event_name(self) -> str:
        return f"job end-to-end {self.service}/{self.version}"


JOBS = (Job("iris_report", "1", load_iris().data.tolist(), _iris_problem, artifacts=("report.json",)),
        Job("diabetes", "1", load_diabetes().data.tolist(), _diabetes_problem))
REQUEST_NAMES = (SUBMIT, STATE, RESULTS, ROW, ARTIFACTS)
EVENT_NAMES = tuple(job.event_name for job in JOBS)

# locust starts its --run-time timer on gevent's cached clock, which a CPU-bound import (sklearn and the data sets above)
# leaves stale: refresh it, or every run is shorter than -t by the import time.
gevent.get_hub().loop.update_now()


class JobFailed(Exception):
    """A job that did not complete, or whose results are wrong: the end-to-end event's failure."""


class BatchUser(FastHttpUser):
    wait_time = between(0.5, 1.5)
    default_headers = {"Authorization": f"Bearer {TOKEN}"}

    def on_start(self) -> None:
        self.jobs = itertools.cycle(random.sample(JOBS, len(JOBS)))  # every user alternates services
        self.running: Optional[str] = None  # execution id of a job not seen final yet

    def on_stop(self) -> None:
        self._cancel_running()

    @task
    def run_job(self) -> None:
        job = next(self.jobs)
        records = random.choices(job.rows, k=ROWS)
        started = time.perf_counter()
        elapsed_ms, error = 0.0, None
        try:
            execution_id = self._submit(job, records)
            state = self._wait(execution_id)
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.running = None
            self._check_results(job, execution_id, state)
        except JobFailed as exc:
            elapsed_ms, error = elapsed_ms or (time.perf_counter() - started) * 1000, exc
            self._cancel_running()  # a job that timed out must not keep scoring behind the next one
        self.environment.events.request.fire(request_type="BATCH", name=job.event_name, response_time=elapsed_ms,
                                             response_length=ROWS, exception=error, context={})

    # ------------------------------------------------------------------ steps
    def _cancel_running(self) -> None:
        if self.running:
            execution_id, self.running = self.running, None
            try:
                self._call("POST", f"/batches/{execution_id}/cancel", CANCEL, (200,))
            except JobFailed:
                pass  # already recorded as a failed request

    def _submit(self, job: Job, records: list[list[float]]) -> str:
        body = self._call("POST", "/batches", SUBMIT, (202,), json={"service": job.service, "version": job.version,
                                                                    "records": records, "parallel_count": PARALLEL},
                          check=lambda b: None if b.get("executionId") else "no executionId in the answer")
        self.running = body["executionId"]
        return self.running

    def _wait(self, execution_id: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            state = self._call("GET", f"/batches/{execution_id}", STATE, (200,),
                               check=lambda b: None if b.get("state") else "the answer has no state")
            if state["state"] in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise JobFailed(f"job {execution_id} still {state['state']} after {TIMEOUT_S:g} s "
                                f"({state.get('completedItems')} of {state.get('totalItems')} rows scored)")
            gevent.sleep(POLL_S)

    def _check_results(self, job: Job, execution_id: str, state: dict) -> None:
        if state["state"] != "Complete" or state.get("completedItems") != ROWS or state.get("failedItems"):
            raise JobFailed(f"job {execution_id} ended {state['state']} with {state.get('completedItems')} of {ROWS} "
                            f"rows scored, {state.get('failedItems')} failed: {state.get('error')}")
        page = self._call("GET", f"/batches/{execution_id}?show_partial_results=true&limit={ROWS}", RESULTS, (200,),
                          check=lambda b: _page_problem(b["results"]))["results"]
        index = random.randrange(ROWS)
        self._call("GET", f"/batches/{execution_id}/results/{index}", ROW, (200,),
                   check=lambda r: _row_problem(r, index, page[index], job))
        if job.artifacts:
            self._call("GET", f"/batches/{execution_id}/results/{index}/artifacts", ARTIFACTS, (200,),
                       check=lambda names: None if set(job.artifacts) <= set(names)
                       else f"row {index} has artifacts {names}, expected {list(job.artifacts)}")

    def _call(self, method: str, path: str, name: str, statuses: tuple[int, ...],
              check: Optional[Callable[[Any], Optional[str]]] = None, json: Any = None) -> Any:
        """One recorded request; its JSON body when the answer is right, else JobFailed (and a failed request)."""
        with self.client.request(method, path, name=name, json=json, catch_response=True) as response:
            if response.status_code not in statuses:
                problem = f"HTTP {response.status_code}: {(response.text or '')[:200]}"
            else:
                try:
                    body = response.json()
                    problem = check(body) if check else None
                except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                    problem = f"unreadable answer ({exc!r}): {(response.text or '')[:200]}"
            if problem:
                response.failure(problem)
                raise JobFailed(f"{name}: {problem}")
            response.success()
        return body


def _page_problem(rows: list[dict]) -> Optional[str]:
    if len(rows) != ROWS:
        return f"{len(rows)} result rows for {ROWS} records"
    bad = [r for r in rows if r.get("status") != "Success"]
    return f"{len(bad)} rows not Success, first: {bad[0]}" if bad else None


def _row_problem(row: dict, index: int, from_page: dict, job: Job) -> Optional[str]:
    if row.get("index") != index or row.get("status") != "Success":
        return f"row {index} answered as {row}"
    if row.get("outputs") != from_page.get("outputs"):
        return f"row {index} is {row.get('outputs')} alone but {from_page.get('outputs')} in the results page"
    return job.problem(row["outputs"])


@events.quitting.add_listener
def _let_csv_catch_up(**_: Any) -> None:
    """locust rewrites its CSVs once a second and not at exit (locustio/locust#1806): without one more
    second, the last requests (on_stop's cancel, the last job's end-to-end event) would be missing from them."""
    gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.25)
