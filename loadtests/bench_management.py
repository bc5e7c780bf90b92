"""Management benchmark: how long until a registered model answers, and until scaled replicas serve.

Measured on one modelpool cluster, each against a baseline in the same run: the same model server
deployed with a bare ``serve.run`` (no registry, no load check, no object-storage copy), so the
ratio is what the management path adds on top of Serve itself.

- register -> first successful inference (dedicated: ``initial_workers=1``; generic pool:
  ``initial_workers=0``, loaded on the first request)
- scale 1 -> 2 workers -> a request answered by the new replica

Usage: ``python -m loadtests.bench_management [--repeats 3] [--out results/bench_management.md]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import requests

from modelpool.cluster import local_cluster, runtime
from modelpool.cluster.settings import DEFAULT_THREADS
from loadtests.local_cluster import bench_cluster
from loadtests.report import publish

REPLICA_CPUS = 0.1  # the same for modelpool's replicas (MODELPOOL_REPLICA_NUM_CPUS) and the baseline's
ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.9, 3.0, 5.1, 1.8]}]}


def until_answered(session: requests.Session, url: str, timeout_s: float = 180) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            if session.post(url, json=ROW, timeout=10).status_code == 200:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def until_new_replica(session: requests.Session, url: str, known: set[str], timeout_s: float = 180) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            replica = session.post(url, json=ROW, timeout=10).headers.get("x-modelpool-replica")
            if replica and replica not in known:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise TimeoutError(url)


def until_gone(app_name: str, timeout_s: float = 120) -> None:
    """Wait until an app's replicas are gone, so the next step does not wait for their CPUs."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while app_name in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.25)


def replicas_seen(session: requests.Session, url: str, n: int = 20) -> set[str]:
    return {session.post(url, json=ROW, timeout=10).headers.get("x-modelpool-replica") for _ in range(n)}


def bench(base: str, token: str, home: Path, repeats: int) -> dict[str, list[float]]:
    from ray import serve

    from modelpool.deployments.model_deployment import ModelServer

    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {token}"
    http = requests.Session()
    store = home / "model_store"
    times: dict[str, list[float]] = {k: [] for k in ("register_dedicated", "register_generic", "serve_run",
                                                      "scale_modelpool", "scale_serve_run")}
    for i in range(repeats):
        name = f"bench_dedicated_{i}"
        started = time.perf_counter()
        admin.post(f"{base}/models", params={"url": "iris-1.zip", "model_name": name, "initial_workers": 1}).raise_for_status()
        until_answered(http, f"{base}/v2/models/{name}/infer")
        times["register_dedicated"].append(time.perf_counter() - started)

        before = replicas_seen(http, f"{base}/v2/models/{name}/infer")
        started = time.perf_counter()
        admin.put(f"{base}/models/{name}", params={"min_worker": 2, "max_worker": 2}).raise_for_status()
        until_new_replica(http, f"{base}/v2/models/{name}/infer", before)
        times["scale_modelpool"].append(time.perf_counter() - started)
        admin.delete(f"{base}/models/{name}").raise_for_status()
        until_gone(f"model:{name}:1")

        name = f"bench_generic_{i}"
        started = time.perf_counter()
        admin.post(f"{base}/models", params={"url": "iris-1.zip", "model_name": name, "initial_workers": 0}).raise_for_status()
        until_answered(http, f"{base}/v2/models/{name}/infer")
        times["register_generic"].append(time.perf_counter() - started)
        admin.delete(f"{base}/models/{name}").raise_for_status()

        app, route = f"bench-raw-{i}", f"/bench/raw{i}"
        # A fixed version makes the second serve.run a pure replica-count change, as in modelpool.
        deployment = serve.deployment(ModelServer).options(name="raw", num_replicas=1, ray_actor_options={"num_cpus": REPLICA_CPUS},
                                                           max_ongoing_requests=DEFAULT_THREADS, version="raw", _internal=True)
        started = time.perf_counter()
        serve.run(deployment.bind(str(store / "iris-1.zip"), str(home / "cache"), "iris", "1"), name=app,
                  route_prefix=route, blocking=False)
        until_answered(http, f"{base}{route}/infer")
        times["serve_run"].append(time.perf_counter() - started)

        before = replicas_seen(http, f"{base}{route}/infer")
        started = time.perf_counter()
        serve.run(deployment.options(num_replicas=2).bind(str(store / "iris-1.zip"), str(home / "cache"), "iris", "1"),
                  name=app, route_prefix=route, blocking=False)
        until_new_replica(http, f"{base}{route}/infer", before)
        times["scale_serve_run"].append(time.perf_counter() - started)
        serve.delete(app)
        until_gone(app)
        print(f"  round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    return times


def report(times: dict[str, list[float]], repeats: int) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    return "\n".join([
        f"median of {repeats} rounds, iris LogisticRegression, {os.cpu_count()} cores, one modelpool cluster",
        "",
        "| step | modelpool | bare serve.run | ratio |",
        "| --- | --- | --- | --- |",
        f"| register (initial_workers=1) -> first inference | {med['register_dedicated']:.2f} s | {med['serve_run']:.2f} s | {med['register_dedicated'] / med['serve_run']:.2f}x |",
        f"| register (initial_workers=0, generic pool) -> first inference | {med['register_generic']:.2f} s | {med['serve_run']:.2f} s | {med['register_generic'] / med['serve_run']:.2f}x |",
        f"| scale 1 -> 2 workers -> new replica answers | {med['scale_modelpool']:.2f} s | {med['scale_serve_run']:.2f} s | {med['scale_modelpool'] / med['scale_serve_run']:.2f}x |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/bench_management.md")
    args = parser.parse_args()
    with bench_cluster({"MODELPOOL_REPLICA_NUM_CPUS": str(REPLICA_CPUS)}) as cluster:
        runtime.connect(local_cluster.read_state(cluster.home)["address"])
        try:
            times = bench(cluster.url, cluster.token, cluster.home, args.repeats)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    table = report(times, args.repeats)
    publish(table, args.out)


if __name__ == "__main__":
    main()
