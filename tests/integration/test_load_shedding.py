"""Load shedding on the real cluster: a burst past a model's queue limit gets 429s with Retry-After at once,
the calls it took are all answered, the refusals are counted in the metrics, and a raised limit is seen by the
very next burst. Also: the Python client waits a refusal out as Retry-After asks."""
from __future__ import annotations

import asyncio
import time
from typing import Optional

import httpx
import pytest
import requests

from modelpool.client import Client
from tests.integration.handler_models import register_handler_model
from tests.integration.test_observability import wait_for_metric

#: Each batch takes two seconds: a burst arrives long before the first places free up, and a refusal answered
#: at once comes back well before the first answer, even from a client busy opening 200 connections on 2 cores.
BATCH_SECONDS = 2.0
SLOW_HANDLER = f"""
import time
import numpy as np

def predict(data):
    time.sleep({BATCH_SECONDS})
    return np.asarray(data).sum(axis=1)
"""
ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}]}
QUEUED = 4
BURST = 200


@pytest.fixture(scope="module")
def slowpoke(cluster, tmp_path_factory) -> str:
    with requests.Session() as admin:
        admin.headers.update(cluster.auth)
        registered = register_handler_model(cluster, admin, tmp_path_factory.mktemp("slowpoke"), "slowpoke",
                                            SLOW_HANDLER, initial_workers=1, batch_size=64,
                                            max_queued_requests=QUEUED)
        assert registered.status_code == 200, registered.text
        scaled = admin.put(f"{cluster.url}/models/slowpoke/1", params={"min_worker": 1, "max_worker": 1,
                                                                      "synchronous": "true"})
        assert scaled.status_code == 200, scaled.text  # one replica: the burst meets one queue
        try:
            yield "slowpoke"
        finally:
            admin.delete(f"{cluster.url}/models/slowpoke/1")


async def _burst(url: str, count: int, refused: Optional[asyncio.Event] = None,
                 ) -> list[tuple[int, float, httpx.Headers, dict]]:
    """Each call's status, the moment (time.monotonic) its answer came back, its headers and its body; ``refused``
    is set at the first 429."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=count), timeout=60) as client:
        async def one() -> tuple[int, float, httpx.Headers, dict]:
            answer = await client.post(url, json=ROW)
            if refused is not None and answer.status_code == 429:
                refused.set()
            return answer.status_code, time.monotonic(), answer.headers, answer.json()

        return await asyncio.gather(*(one() for _ in range(count)))


def burst(cluster, count: int = BURST):
    return asyncio.run(_burst(f"{cluster.url}/v2/models/slowpoke/infer", count))


def test_a_burst_past_the_queue_limit_is_refused_at_once_and_everything_taken_is_answered(cluster, slowpoke):
    answers = burst(cluster)
    statuses = [status for status, *_ in answers]
    refused = [a for a in answers if a[0] == 429]
    assert set(statuses) <= {200, 429}, f"only answers and refusals: {sorted(set(statuses))}"
    assert len(refused) >= 20, f"{BURST} at once past 128 running and {QUEUED} waiting: {len(refused)} refused"
    assert statuses.count(200) >= 128 + QUEUED - 64, "the calls taken are answered (a batch may free places early)"
    for status, answered_at, headers, body in refused:
        assert headers["retry-after"] == "1" and body["field"] == "max_queued_requests"
        assert "slowpoke" in body["error"] and "add workers" in body["error"]
        assert f"at its limit: {128 + QUEUED} calls in flight" in body["error"], "counted and refused in the front"
    # Relative, not a wall-clock bound (a busy CI machine slows the client too): had the refusals waited for a place,
    # they would come back after the model's first batch of answers, not before all of them.
    last_refusal = max(answered_at for _, answered_at, *_ in refused)
    accepted = sorted(answered_at for status, answered_at, *_ in answers if status == 200)
    assert last_refusal < accepted[0], f"every refusal before the first answer: {last_refusal - accepted[0]:+.2f} s"
    assert accepted[-1] - accepted[0] >= BATCH_SECONDS, "the accepted calls waited for the model, as they should"
    shed = wait_for_metric(cluster.metrics_url, "ray_modelpool_shed_requests_total", len(refused),
                           model="slowpoke", version="1", protocol="rest")
    assert shed >= len(refused), f"every refusal counts in the metrics: {shed} of {len(refused)}"


def test_a_raised_limit_is_seen_by_the_very_next_burst(cluster, admin, slowpoke):
    raised = admin.put(f"{cluster.url}/models/slowpoke/1", params={"max_queued_requests": -1, "synchronous": "true"})
    assert raised.status_code == 200, raised.text
    described = admin.get(f"{cluster.url}/models/slowpoke/1").json()[0]
    assert described["maxQueuedRequests"] == -1
    try:
        statuses = [status for status, *_ in burst(cluster)]
        assert statuses.count(200) == BURST, f"no limit: every call waits its turn ({sorted(set(statuses))})"
    finally:
        lowered = admin.put(f"{cluster.url}/models/slowpoke/1", params={"max_queued_requests": QUEUED,
                                                                       "synchronous": "true"})
        assert lowered.status_code == 200, lowered.text


def test_the_client_waits_a_refusal_out_and_gets_its_answer(cluster, slowpoke):
    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        full = asyncio.Event()
        flood = asyncio.ensure_future(_burst(f"{cluster.url}/v2/models/slowpoke/infer", BURST, full))
        # the limit is reached (not a guess at when: a busy machine opens the flood's connections slowly), and the
        # calls it holds keep it full for a batch's two seconds
        await asyncio.wait_for(full.wait(), 30)

        def predict() -> list:
            with requests.Session() as session, Client(cluster.url, token=cluster.token, session=session) as client:
                session.headers.update(cluster.auth)
                session.hooks["response"].append(lambda answer, **_: seen.append(answer.status_code))
                return client.get_service("slowpoke", "1").predict([[1.0, 2.0, 3.0, 4.0]])

        answer = await loop.run_in_executor(None, predict)
        await flood
        return answer

    seen: list[int] = []
    assert asyncio.run(scenario()) == [10.0]
    assert 429 in seen and seen[-1] == 200, f"refused first, then served after Retry-After: {seen}"
