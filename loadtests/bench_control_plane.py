"""The per-node inputs of the scaling estimate (issue 21), measured on this machine, and the estimate they give.

    python -m loadtests.bench_control_plane [--seconds 20] [--replicas 1 6 12]

Four phases, each on a cluster of its own, stopped at the end:
1. **Serving**: a `modelpool start` cluster under wrk at c=64 on iris; the CPU time of iris's replica and of the
   front's HAProxy over the run, per request.
2. **Per replica**: the same cluster at rest with diabetes scaled to each of ``--replicas``; the CPU share of
   Serve's controller and of the GCS against the replicas running, fitted to a line.
3. **Per node**: the two-raylet cluster of tests/multinode (``cluster.yaml``'s way: ``ray start --head``, a worker
   ``ray start --address``, ``modelpool start --address``) at rest with the head alone, then with the worker
   joined: what the second node adds to the GCS and the controller, and what Ray's processes take on it. Both
   raylets share this machine's cores, so this checks cost, not speed.
4. **Batch**: one batch worker scoring a million iris rows from the local object store (median of three jobs):
   rows/s, and the Parquet bytes read and written per row.

Each figure is a cost measured in the same run on the same 2 cores; the estimate (``scaling_estimate``) is
arithmetic on them, printed as BENCHMARKS.md's tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
import psutil
import requests

from loadtests.bench_batch import modelpool_batch, upload_inputs
from loadtests.local_cluster import bench_cluster
from loadtests.profile_serving import cluster_processes
from loadtests.scaling_estimate import (CONTROLLER_BUSY, Measured, NodeShape, controller_replica_limit,
                                       inputs_markdown, markdown)
from loadtests.wrk import run_wrk
from tests.multinode.cluster import WORKER_RESOURCE, two_node_cluster

ROW = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]})
BATCH_ROWS = 1_000_000


def role(pid: int, title: str) -> str:
    """What a process is, for the control plane's accounts: the front, a replica of an app, the controller..."""
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        command = ""
    if title == "haproxy":
        return "front" if "modelpool-front" in command else "serve haproxy"
    if title == "raylet":
        return "worker raylet" if WORKER_RESOURCE in command else "raylet"
    if title.startswith("ray::ServeReplica:"):
        return "replica:" + title.removeprefix("ray::ServeReplica:")
    return {"ray::ServeController": "controller", "gcs_server": "gcs"}.get(title, title)


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """PID -> (role, CPU seconds so far) of every cluster process."""
    found = {}
    for pid, title in cluster_processes().items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        found[pid] = (role(pid, title), times.user + times.system)
    return found


def spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by role between two snapshots (processes in both)."""
    by_role: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        if pid in before:
            by_role[name] = by_role.get(name, 0.0) + seconds - before[pid][1]
    return by_role


def shares_at_rest(seconds: float) -> dict[str, float]:
    """Share of one core each role used over ``seconds`` with nothing sent."""
    before, started = cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {name: used / elapsed for name, used in spent(before, cpu_seconds()).items()}


def worker_node_share(seconds: float) -> float:
    """Share of a core the joined node's own Ray processes use at rest: its raylet and the agents it started."""
    raylet = next(p for p in psutil.process_iter(["name", "cmdline"])
                  if p.info["name"] == "raylet" and WORKER_RESOURCE in " ".join(p.info["cmdline"] or []))
    agents = [raylet] + [child for child in raylet.children() if "Agent" in " ".join(child.cmdline())]
    before = sum(sum(p.cpu_times()[:2]) for p in agents)
    time.sleep(seconds)
    return (sum(sum(p.cpu_times()[:2]) for p in agents) - before) / seconds


def serving(cluster, seconds: int) -> dict[str, float]:
    """Phase 1: req/s per vCPU of a replica and the front's CPU per request, under wrk at c=64."""
    url = f"{cluster.url}/v2/models/iris/infer"
    run_wrk(url, ROW, 64, 3)  # warm: connections, batching, the replicas' first calls
    before, wire_before = cpu_seconds(), loopback_bytes()
    load = run_wrk(url, ROW, 64, seconds)
    used, wire = spent(before, cpu_seconds()), loopback_bytes() - wire_before
    requests_served = load.requests_per_s * seconds
    replica = max((name for name in used if name.startswith("replica:model:iris:")), key=used.get)
    print(f"serving: {load.requests_per_s:,.0f} req/s at c=64, p99 {load.p99_ms:.1f} ms; CPU s: "
          + ", ".join(f"{name} {value:.2f}" for name, value in sorted(used.items(), key=lambda kv: -kv[1])[:6]))
    return {"replica_rps_per_vcpu": requests_served / used[replica],
            "ingress_cpu_us_per_request": used.get("front", 0.0) / requests_served * 1e6,
            "wire_bytes_per_request": wire / requests_served}


def loopback_bytes() -> int:
    """Bytes the loopback interface has carried (each counted once): wrk to the front and the front to the replica
    both run over it, the two legs a request takes through a cluster's head."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def scale(cluster, replicas: int) -> None:
    with requests.Session() as admin:
        admin.headers["Authorization"] = f"Bearer {cluster.token}"
        answer = admin.put(f"{cluster.url}/models/diabetes/1", timeout=600, params={
            "min_worker": replicas, "max_worker": replicas, "synchronous": "true", "timeout": 600})
        answer.raise_for_status()


def fit(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Least squares: (intercept, slope)."""
    xs, ys = zip(*points)
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


def per_replica(cluster, counts: list[int], seconds: float, settle: float) -> dict[str, float]:
    """Phase 2: the controller's and the GCS's share against the replicas running, at rest."""
    controller, gcs = [], []
    for count in counts:
        scale(cluster, count)
        time.sleep(settle)
        shares = shares_at_rest(seconds)
        running = sum(1 for name in cluster_processes().values() if name.startswith("ray::ServeReplica:"))
        print(f"per replica: {running} replicas: controller {shares.get('controller', 0):.1%}, "
              f"GCS {shares.get('gcs', 0):.1%} of a core")
        controller.append((running, shares.get("controller", 0.0)))
        gcs.append((running, shares.get("gcs", 0.0)))
    scale(cluster, 1)
    (controller_base, controller_slope), (_, gcs_slope) = fit(controller), fit(gcs)
    return {"controller_base": max(controller_base, 0.0), "controller_per_replica": max(controller_slope, 0.0),
            "gcs_per_replica": max(gcs_slope, 0.0)}


def per_node(seconds: float, settle: float) -> dict[str, float]:
    """Phase 3: what a second node adds to the GCS and the controller, and costs on itself."""
    with tempfile.TemporaryDirectory(prefix="modelpool-bench-nodes-") as home:
        with two_node_cluster(Path(home), start_worker=False) as cluster:
            time.sleep(settle)
            alone = shares_at_rest(seconds)
            cluster.start_worker_node()  # returns once the raylet has registered with the GCS
            time.sleep(settle)
            joined = shares_at_rest(seconds)
            node = worker_node_share(seconds)
    print(f"per node: GCS {alone.get('gcs', 0):.1%} -> {joined.get('gcs', 0):.1%}, controller "
          f"{alone.get('controller', 0):.1%} -> {joined.get('controller', 0):.1%} of a core; the joined node's "
          f"own Ray processes {node:.1%}")
    return {"gcs_per_node": max(joined.get("gcs", 0.0) - alone.get("gcs", 0.0), 0.0),
            "controller_per_node": max(joined.get("controller", 0.0) - alone.get("controller", 0.0), 0.0),
            "node_overhead": node}


def objects_bytes(home: Path) -> int:
    return sum(path.stat().st_size for path in (home / "objects").rglob("*") if path.is_file())


def batch(cluster, runs: int = 3) -> dict[str, float]:
    """Phase 4: one worker (parallel_count 1) scoring a million rows; rows/s and Parquet bytes per row."""
    key = upload_inputs(cluster.home, [BATCH_ROWS])[BATCH_ROWS]
    input_bytes = (cluster.home / f"iris-{BATCH_ROWS}.parquet").stat().st_size
    seconds, written = [], []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {cluster.token}"
        modelpool_batch(session, cluster.url, key, BATCH_ROWS, 1)  # warm: the worker's model and paths
        for _ in range(runs):
            before = objects_bytes(cluster.home)
            total_s, _ = modelpool_batch(session, cluster.url, key, BATCH_ROWS, 1)
            seconds.append(total_s)
            written.append(objects_bytes(cluster.home) - before)
    rows_per_s = BATCH_ROWS / statistics.median(seconds)
    print(f"batch: {rows_per_s:,.0f} rows/s on one worker; {input_bytes:,} bytes read, "
          f"{statistics.median(written):,.0f} written per job")
    return {"batch_rows_per_s_per_worker": rows_per_s,
            "batch_bytes_per_row": (input_bytes + statistics.median(written)) / BATCH_ROWS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="each measuring window (and the wrk run)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds at rest before a window")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 6, 12], help="diabetes replicas, phase 2")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with bench_cluster({"MODELPOOL_REPLICA_NUM_CPUS": "0.05"}) as cluster:
        figures |= serving(cluster, args.seconds)
        figures |= batch(cluster)
        figures |= per_replica(cluster, args.replicas, args.seconds, args.settle)
    figures |= per_node(args.seconds, args.settle)
    measured = Measured(**figures)
    print(json.dumps(asdict(measured), indent=2))
    print(inputs_markdown(measured))
    print("\ncluster.yaml's instance types, the front on one thread (--grpc-workers 1, the default):")
    print(markdown(measured, NodeShape()))
    print("\nthe same, the front on three threads (--grpc-workers 3):")
    print(markdown(measured, NodeShape(front_threads=3)))
    for nodes in (1, 4, 16, 64):
        print(f"the controller reaches {CONTROLLER_BUSY:.0%} of its core with {nodes} worker nodes at "
              f"{controller_replica_limit(measured, nodes)} replicas")

if __name__ == "__main__":
    main()
