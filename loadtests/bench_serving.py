"""Serving benchmark: modelpool against plain Ray Serve, measured in the same run.

Prints a table of req/s and p50/p99 for the iris LogisticRegression (one row per V2 request) at
concurrency 1, 8 and 64 for:

- ``plain-serve``: a plain Ray Serve deployment, Serve's default Python proxy, default
  max_ongoing_requests, no batching (what a Ray Serve user writes first);
- ``unbatched-haproxy``: the same plain handler deployed inside the modelpool cluster (HAProxy
  ingress), i.e. an unbatched handler on the same stack;
- ``modelpool``: the model as modelpool serves it (adaptive batcher, 64 rows / 5 ms).

and the ratios the serving issue sets targets for. Needs wrk (``apt-get install -y wrk``).
Usage: ``python -m loadtests.bench_serving [--seconds 10] [--out results/bench_serving.md]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelpool.cluster import local_cluster, runtime  # noqa: F401  (sets Ray's environment before ray is imported)
from loadtests.wrk import LoadResult, run_wrk
from modelpool.cluster.net import free_port
from modelpool.cluster.settings import DEFAULT_REPLICA_NUM_CPUS, DEFAULT_THREADS
from loadtests.report import publish

BODY = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.9,3.0,5.1,1.8]}]}'
CONCURRENCY = (1, 8, 64)


def wait_http(url: str, timeout_s: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.post(url, data=BODY, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def _show(name: str, connections: int, r: LoadResult) -> None:
    print(f"  {name:<18} c={connections:<3} {r.requests_per_s:>9.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
          f"p99 {r.p99_ms:8.2f} ms  errors {r.errors}", flush=True)


def _median(results: list[LoadResult]) -> LoadResult:
    return LoadResult(
        requests_per_s=statistics.median(r.requests_per_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
    )


def measure(name: str, url: str, seconds: int) -> dict[int, LoadResult]:
    return medians(measure_interleaved({name: url}, seconds, rounds=1))[name]


Runs = dict[str, dict[int, list[LoadResult]]]


def measure_interleaved(urls: dict[str, str], seconds: int, rounds: int, c1_rounds: int = 0) -> Runs:
    """Alternate between servers run by run, so machine noise hits every server alike.

    Returns every run; c=1 gets ``c1_rounds`` runs (at least ``rounds``) since its latency ratio
    is the tightest target and the one most moved by background noise.
    """
    for url in urls.values():
        wait_http(url)
        run_wrk(url, BODY, 8, 2)  # warm up connections, caches and allocators
    runs: Runs = {name: {c: [] for c in CONCURRENCY} for name in urls}
    for connections in CONCURRENCY:
        for _ in range(max(rounds, c1_rounds) if connections == 1 else rounds):
            for name, url in urls.items():
                result = run_wrk(url, BODY, connections, seconds)
                runs[name][connections].append(result)
                _show(name, connections, result)
    return runs


def medians(runs: Runs) -> dict[str, dict[int, LoadResult]]:
    return {name: {c: _median(results) for c, results in per_c.items()} for name, per_c in runs.items()}


def paired_p50_ratio(pool_runs: list[LoadResult], base_runs: list[LoadResult]) -> float:
    """Median of the per-round ratios: each pair ran back to back, so drift between rounds cancels."""
    return statistics.median(p.p50_ms / b.p50_ms for p, b in zip(pool_runs, base_runs))


def iris_model_file(store: Path, cache: Path) -> Path:
    from modelpool.deployments.archive import unpack_archive

    archive = unpack_archive(store / "iris-1.zip", cache)
    return archive.model_dir / archive.manifest.model_file


def bench_plain_serve(model_file: Path, seconds: int) -> dict[int, LoadResult]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    server = subprocess.Popen([sys.executable, "-m", "loadtests.plain_serve", str(model_file), str(port), "default"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        if "READY" not in line:
            raise RuntimeError(f"plain Ray Serve did not start: {line!r}")
        return measure("plain-serve", f"http://127.0.0.1:{port}/", seconds)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
        subprocess.run([runtime.ray_executable(), "stop", "--force"], capture_output=True)


def bench_modelpool(home: Path, model_file: Path, seconds: int, rounds: int, c1_rounds: int) -> Runs:
    port, ray_port = free_port(), free_port()
    env = {**os.environ, "MODELPOOL_HOME": str(home), "MODELPOOL_HTTP_PORT": str(port), "MODELPOOL_RAY_PORT": str(ray_port)}
    cli = [sys.executable, "-m", "modelpool.cli"]
    started = subprocess.run([*cli, "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run([*cli, "stop"], env=env, capture_output=True)
        raise RuntimeError(f"modelpool start failed:\n{started.stdout}\n{started.stderr}")
    try:
        import ray
        from ray import serve

        from loadtests.plain_serve import PlainIris

        runtime.connect(local_cluster.read_state(home)["address"])
        serve.run(serve.deployment(PlainIris).options(max_ongoing_requests=DEFAULT_THREADS,
                                                      ray_actor_options={"num_cpus": DEFAULT_REPLICA_NUM_CPUS})
                  .bind(str(model_file)), name="bench-unbatched", route_prefix="/bench/unbatched")
        runs = measure_interleaved({
            "unbatched-haproxy": f"http://127.0.0.1:{port}/bench/unbatched",
            "modelpool": f"http://127.0.0.1:{port}/v2/models/iris/versions/1/infer",
        }, seconds, rounds, c1_rounds)
        ray.shutdown()
        return runs
    finally:
        subprocess.run([*cli, "stop"], env=env, capture_output=True)


def report(plain: dict, cluster_runs: Runs, seconds: int, rounds: int, c1_rounds: int) -> str:
    summary = medians(cluster_runs)
    unbatched, pool = summary["unbatched-haproxy"], summary["modelpool"]
    lines = [
        f"iris LogisticRegression, one row per V2 request, wrk -t1, {os.cpu_count()} cores; plain Ray Serve: one "
        f"{seconds}s run per point; on the modelpool cluster the two servers alternate run by run, median of "
        f"{rounds} runs of {seconds}s ({max(rounds, c1_rounds)} at c=1)",
        "",
        "| server | c | req/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, results in (("plain Ray Serve (default proxy, no batching)", plain),
                          ("unbatched handler, HAProxy ingress", unbatched),
                          ("modelpool (adaptive batching)", pool)):
        for c, r in results.items():
            lines.append(f"| {name} | {c} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    lines += ["", "| ratio | value | target |", "| --- | --- | --- |"]
    for c in CONCURRENCY:
        ratio = pool[c].requests_per_s / max(plain[c].requests_per_s, 1e-9)
        target = ">= 6x" if c == 64 else ""
        lines.append(f"| modelpool / plain Ray Serve req/s at c={c} | {ratio:.1f}x | {target} |")
    for c in CONCURRENCY:
        ratio = pool[c].requests_per_s / max(unbatched[c].requests_per_s, 1e-9)
        lines.append(f"| modelpool / unbatched HAProxy handler req/s at c={c} | {ratio:.2f}x | |")
    p50_ratio = paired_p50_ratio(cluster_runs["modelpool"][1], cluster_runs["unbatched-haproxy"][1])
    lines.append(f"| modelpool p50 / unbatched handler p50 at c=1 (median of per-round ratios) | {p50_ratio:.2f}x | <= 1.2x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per point on the modelpool cluster")
    parser.add_argument("--c1-rounds", type=int, default=7, help="alternating runs at c=1 (its ratio is the tightest)")
    parser.add_argument("--out", default="results/bench_serving.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelpool-bench-") as tmp:
        home = Path(tmp)
        from modelpool.deployments.examples import build_examples

        build_examples(home / "model_store")
        model_file = iris_model_file(home / "model_store", home / "bench-cache")
        print("plain Ray Serve (default proxy):", flush=True)
        plain = bench_plain_serve(model_file, args.seconds)
        print("modelpool cluster:", flush=True)
        cluster_runs = bench_modelpool(home, model_file, args.seconds, args.rounds, args.c1_rounds)
    table = report(plain, cluster_runs, args.seconds, args.rounds, args.c1_rounds)
    publish(table, args.out)


if __name__ == "__main__":
    main()
