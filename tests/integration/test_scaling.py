"""Live reconfiguration without restarts, and autoscaling up under load and back down."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

import pytest
import requests

from cluster.settings import load_settings

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.9, 3.0, 5.1, 1.8]}]}
DIABETES_ROW = {"inputs": [{"name": "input-0", "shape": [1, 10], "datatype": "FP64", "data": [0.01] * 10}]}


def model_config(cluster, name, version):
    from management.deployer import store_model_configs

    settings = load_settings({}, cluster.env)
    return next(c for c in store_model_configs(settings) if c.name == name and c.version == version), settings


def redeploy(config, settings):
    from management.deployer import deploy_models

    deploy_models([config], settings.cache_path, wait=True)


def hammer(url, body, threads, stop: threading.Event, seen: Counter, replicas: set, max_requests=100_000):
    """Concurrent keep-alive clients until ``stop``; records batch sizes and replica ids seen."""
    lock = threading.Lock()
    sent = Counter()

    def worker():
        with requests.Session() as session:
            while not stop.is_set() and sent["n"] < max_requests:
                response = session.post(url, json=body, timeout=30)
                with lock:
                    sent["n"] += 1
                    sent[response.status_code] += 1
                    seen[int(response.headers.get("x-modelpool-batch-size", "0"))] += 1
                    replicas.add(response.headers.get("x-modelpool-replica"))

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    return pool, sent


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


def test_batch_size_changes_live_without_restarting_replicas(ray_client):
    cluster = ray_client
    url = f"{cluster.url}/v2/models/iris/versions/1/infer"
    config, settings = model_config(cluster, "iris", "1")

    def measure(seconds=3.0):
        stop, seen, replicas = threading.Event(), Counter(), set()
        pool, sent = hammer(url, ROW, 24, stop, seen, replicas)
        time.sleep(seconds)
        stop.set()
        for thread in pool:
            thread.join()
        assert set(sent) - {"n"} == {200}, sent
        return seen, replicas

    batched, replicas_before = measure()
    assert max(batched) > 1, f"24 concurrent clients never shared a batch: {batched}"
    try:
        redeploy(dataclasses.replace(config, max_batch_size=1), settings)
        unbatched, replicas_after = measure()
        assert set(unbatched) == {1}, unbatched
        assert replicas_after == replicas_before, "changing the batch size restarted a replica"
    finally:
        redeploy(config, settings)


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(ray_client):
    cluster = ray_client
    app = "model:diabetes:1"
    config, settings = model_config(cluster, "diabetes", "1")
    eager = dataclasses.replace(config, min_replicas=1, initial_replicas=1, max_replicas=2, target_ongoing_requests=1,
                                upscale_delay_s=0.5, downscale_delay_s=2.0)
    redeploy(eager, settings)
    assert running_replicas(app) == 1
    stop, seen, replicas = threading.Event(), Counter(), set()
    pool, sent = hammer(f"{cluster.url}/v2/models/diabetes/infer", DIABETES_ROW, 16, stop, seen, replicas)
    try:
        deadline = time.monotonic() + 90
        while running_replicas(app) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        scaled_up = running_replicas(app)
        time.sleep(2)  # let the new replica take traffic
    finally:
        stop.set()
        for thread in pool:
            thread.join()
    assert scaled_up == 2, "load did not add a replica"
    assert set(sent) - {"n"} == {200}, f"requests failed while scaling: {sent}"
    assert len(replicas) == 2, "the new replica never served"
    deadline = time.monotonic() + 90
    while running_replicas(app) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        assert running_replicas(app) == 1, "idle deployment did not scale back down"
    finally:
        redeploy(config, settings)
