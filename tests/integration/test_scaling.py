"""Live reconfiguration without restarts, and autoscaling up under load and back down."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

import pytest
import requests

from modelpool.cluster.settings import load_settings

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.9, 3.0, 5.1, 1.8]}]}
DIABETES_ROW = {"inputs": [{"name": "input-0", "shape": [1, 10], "datatype": "FP64", "data": [0.01] * 10}]}


def manager(cluster):
    """The management core as a library, joined to the same cluster and registry."""
    from modelpool.management.model_manager import ModelManager

    return ModelManager(load_settings({}, cluster.env))


def deploy_config(config, settings, metrics_interval_s=None):
    """Deploy one model config as management would; ``metrics_interval_s``: how often replicas report their
    load to Serve's autoscaler (Serve's default, 10 s, makes every scaling decision wait that long)."""
    from modelpool.management import deployer, serve_configs

    app = serve_configs.model_app_config(config, str(settings.cache_path), deployer.code_version())
    if metrics_interval_s is not None:
        app.deployment_options["autoscaling_config"]["metrics_interval_s"] = metrics_interval_s
    deployer.deploy_apps([app], wait=True)


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


def test_batch_size_changes_live_without_restarting_replicas(cluster, admin):
    url = f"{cluster.url}/v2/models/iris/versions/1/infer"

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
        changed = admin.put(f"{cluster.url}/models/iris/1", params={"batch_size": 1, "synchronous": "true"})
        assert changed.status_code == 200, changed.text
        unbatched, replicas_after = measure()
        assert set(unbatched) == {1}, unbatched
        assert replicas_before <= replicas_after, "changing the batch size restarted a replica"
    finally:
        admin.put(f"{cluster.url}/models/iris/1", params={"batch_size": 64, "synchronous": "true"})


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(ray_client):
    cluster = ray_client
    app = "model:diabetes:1"
    core = manager(cluster)
    plan = core._plan()
    config = next(c for c in plan.dedicated if c.name == "diabetes")
    # load reported every 0.5 s and averaged over 3 s: the scaling rule itself, without Serve's 10 s/30 s pace
    eager = dataclasses.replace(config, min_replicas=1, initial_replicas=1, max_replicas=2, target_ongoing_requests=1,
                                upscale_delay_s=0.5, downscale_delay_s=2.0, look_back_period_s=3.0)
    deploy_config(eager, core.settings, metrics_interval_s=0.5)
    assert running_replicas(app) == 1
    stop, seen, replicas = threading.Event(), Counter(), set()
    pool, sent = hammer(f"{cluster.url}/v2/models/diabetes/infer", DIABETES_ROW, 16, stop, seen, replicas)
    try:
        deadline = time.monotonic() + 90
        while running_replicas(app) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        scaled_up = running_replicas(app)
        deadline = time.monotonic() + 30
        while len(replicas) < 2 and time.monotonic() < deadline:  # until the new replica has taken traffic
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in pool:
            thread.join()
    assert scaled_up == 2, "load did not add a replica"
    assert set(sent) - {"n"} == {200}, f"requests failed while scaling: {sent}"
    assert len(replicas) == 2, "the new replica never served"
    deadline = time.monotonic() + 90
    while running_replicas(app) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert running_replicas(app) == 1, "idle deployment did not scale back down"
    finally:
        core.apply(only_model="diabetes", wait=True)
