"""Serving benchmark: modelpool against the strongest alternatives, measured in the same run.

Prints req/s and p50/p99 for the iris LogisticRegression (one row per V2 request, ``wrk -t1``) at
concurrency 1, 8 and 64, and the ratios issues 2 and 15 set targets for, for:

- ``lean``: the ceiling, one lean Python process (raw ASGI on uvicorn + httptools, micro-batches of
  whatever arrived; ``loadtests.lean_server``), no Ray, no checks;
- ``fastapi``: FastAPI on uvicorn predicting in process, unbatched (``loadtests.fastapi_server``), what
  a user writes without a serving framework; measured beside each of the two servers below, so the
  ratio to it is taken within one phase and drift between phases shows;
- ``handtuned``: plain Ray Serve tuned by hand (HAProxy ingress, throughput mode,
  ``@serve.batch(64, 5 ms)``, max_ongoing 128; ``loadtests.handtuned_serve``), the competitor, on a
  Ray of its own;
- ``plain-serve``: plain Ray Serve with its defaults (Python proxy, no batching), issue 2's baseline;
- on one ``modelpool start`` cluster (the example models, default settings): ``modelpool``
  (``/v2/models/iris/infer``) and ``unbatched-haproxy``, the plain handler deployed on the same
  cluster (issue 2's c=1 baseline).

Servers measured in one phase alternate run by run, so noise hits each alike. Needs wrk
(``apt-get install -y wrk``). Usage:
``python -m loadtests.bench_serving [--seconds 8] [--rounds 3] [--out results/bench_serving.md]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from modelpool.cluster import local_cluster, runtime  # noqa: F401  (sets Ray's environment before ray is imported)
from loadtests.wrk import LoadResult, require_wrk, run_wrk
from modelpool.cluster.net import free_port
from modelpool.cluster.settings import DEFAULT_REPLICA_NUM_CPUS, DEFAULT_THREADS
from loadtests.report import publish

BODY = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.9,3.0,5.1,1.8]}]}'
CONCURRENCY = (1, 8, 64)
V2_PATH = "/v2/models/iris/infer"  # the default version, as a V2 client calls it


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


@contextmanager
def served(module: str, *args: str, env: Optional[dict] = None, after: Optional[list[str]] = None) -> Iterator[None]:
    """``python -m module args`` until READY; on exit its stdin closes (it stops) and ``after`` runs."""
    server = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        line = server.stdout.readline()
        if "READY" not in line:
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if after:
            subprocess.run(after, capture_output=True)


def _without_serve_tuning() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}


def bench_single_process(model_file: Path, seconds: int, rounds: int) -> Runs:
    """The lean ceiling and FastAPI, no Ray."""
    lean, fastapi = free_port(), free_port()
    with served("loadtests.lean_server", str(model_file), str(lean)), \
            served("loadtests.fastapi_server", str(model_file), str(fastapi)):
        return measure_interleaved({"lean": f"http://127.0.0.1:{lean}{V2_PATH}",
                                    "fastapi": f"http://127.0.0.1:{fastapi}{V2_PATH}"}, seconds, rounds)


def bench_handtuned(model_file: Path, seconds: int, rounds: int, replicas: int) -> Runs:
    """Hand-tuned Ray Serve on its own Ray, FastAPI beside it."""
    port, fastapi = free_port(), free_port()
    stop_ray = [runtime.ray_executable(), "stop", "--force"]
    with served("loadtests.handtuned_serve", str(model_file), str(port), str(replicas), env=_without_serve_tuning(),
                after=stop_ray), served("loadtests.fastapi_server", str(model_file), str(fastapi)):
        return measure_interleaved({"handtuned": f"http://127.0.0.1:{port}{V2_PATH}",
                                    "fastapi": f"http://127.0.0.1:{fastapi}{V2_PATH}"}, seconds, rounds)


def bench_plain_serve(model_file: Path, seconds: int) -> dict[int, LoadResult]:
    port = free_port()
    with served("loadtests.plain_serve", str(model_file), str(port), "default", env=_without_serve_tuning(),
                after=[runtime.ray_executable(), "stop", "--force"]):
        return measure("plain-serve", f"http://127.0.0.1:{port}/", seconds)


def bench_modelpool(home: Path, model_file: Path, seconds: int, rounds: int, c1_rounds: int) -> Runs:
    """modelpool as `make start` leaves it, the same replicas through Serve's own HTTP path (its ingress, which
    the front passes what it does not route itself), the plain handler on that ingress, and FastAPI beside them."""
    port, ray_port, fastapi, serve_port = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "MODELPOOL_HOME": str(home), "MODELPOOL_HTTP_PORT": str(port), "MODELPOOL_RAY_PORT": str(ray_port),
           "MODELPOOL_SERVE_HTTP_PORT": str(serve_port)}
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
        ray.shutdown()
        with served("loadtests.fastapi_server", str(model_file), str(fastapi)):
            return measure_interleaved({
                "unbatched-haproxy": f"http://127.0.0.1:{serve_port}/bench/unbatched",
                "modelpool": f"http://127.0.0.1:{port}{V2_PATH}",
                "modelpool-serve-path": f"http://127.0.0.1:{serve_port}{V2_PATH}",
                "fastapi": f"http://127.0.0.1:{fastapi}{V2_PATH}",
            }, seconds, rounds, c1_rounds)
    finally:
        subprocess.run([*cli, "stop"], env=env, capture_output=True)


def _row(name: str, results: dict[int, LoadResult]) -> list[str]:
    return [f"| {name} | {c} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
            for c, r in results.items()]


def _ratio(a: float, b: float) -> float:
    return a / max(b, 1e-9)


def report(phases: dict[str, Runs], plain: dict, args: argparse.Namespace) -> str:
    single, tuned, cluster = (medians(phases[k]) for k in ("single", "handtuned", "modelpool"))
    pool, unbatched = cluster["modelpool"], cluster["unbatched-haproxy"]
    lines = [
        f"iris LogisticRegression, one row per V2 request, wrk -t1, {os.cpu_count()} cores; each point the median of "
        f"{args.rounds} runs of {args.seconds}s ({max(args.rounds, args.c1_rounds)} at c=1 on the modelpool cluster), "
        "servers of one phase alternating run by run; plain Ray Serve one run per point",
        "",
        "| server | c | req/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
        *_row("lean single process (the ceiling)", single["lean"]),
        *_row("FastAPI + uvicorn, unbatched (phase 1)", single["fastapi"]),
        *_row(f"hand-tuned Ray Serve ({args.handtuned_replicas} replicas)", tuned["handtuned"]),
        *_row("FastAPI + uvicorn, unbatched (phase 2, beside hand-tuned)", tuned["fastapi"]),
        *_row("plain Ray Serve (default proxy, no batching)", plain),
        *_row("unbatched handler, Serve's HAProxy ingress in modelpool's cluster", unbatched),
        *_row("modelpool through Serve's HTTP path (same replicas, Serve's ingress and request path)",
              cluster["modelpool-serve-path"]),
        *_row("FastAPI + uvicorn, unbatched (phase 4, beside modelpool)", cluster["fastapi"]),
        *_row("modelpool (`make start` defaults)", pool),
        "",
        "| ratio | value | target |",
        "| --- | --- | --- |",
        f"| modelpool / hand-tuned Ray Serve req/s at c=64 | "
        f"{_ratio(pool[64].requests_per_s, tuned['handtuned'][64].requests_per_s):.2f}x | >= 1.3x |",
        f"| modelpool / FastAPI req/s at c=64 (same phase) | "
        f"{_ratio(pool[64].requests_per_s, cluster['fastapi'][64].requests_per_s):.2f}x | >= 1.5x |",
        f"| modelpool p99 at c=64 | {pool[64].p99_ms:.1f} ms | <= 30 ms |",
        f"| modelpool, the front's path / Serve's path req/s at c=64 (same replicas) | "
        f"{_ratio(pool[64].requests_per_s, cluster['modelpool-serve-path'][64].requests_per_s):.2f}x | |",
        f"| modelpool p50 at c=1 | {pool[1].p50_ms:.2f} ms | <= 0.8 ms |",
        f"| modelpool non-2xx answers, all points | {sum(r.errors for r in pool.values())} | 0 |",
        f"| hand-tuned / FastAPI req/s at c=64 (same phase) | "
        f"{_ratio(tuned['handtuned'][64].requests_per_s, tuned['fastapi'][64].requests_per_s):.2f}x | |",
        f"| lean ceiling / modelpool req/s at c=64 | {_ratio(single['lean'][64].requests_per_s, pool[64].requests_per_s):.1f}x | |",
        f"| FastAPI drift, phase 4 / phase 2 req/s at c=64 | "
        f"{_ratio(cluster['fastapi'][64].requests_per_s, tuned['fastapi'][64].requests_per_s):.2f}x | |",
        f"| modelpool / plain Ray Serve req/s at c=64 (issue 2) | {_ratio(pool[64].requests_per_s, plain[64].requests_per_s):.0f}x | >= 6x |",
        f"| modelpool p50 / unbatched handler p50 at c=1, median of per-round ratios (issue 2) | "
        f"{paired_p50_ratio(phases['modelpool']['modelpool'][1], phases['modelpool']['unbatched-haproxy'][1]):.2f}x | <= 1.2x |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per point")
    parser.add_argument("--c1-rounds", type=int, default=7, help="alternating runs at c=1 on the modelpool cluster")
    parser.add_argument("--handtuned-replicas", type=int, default=2)
    parser.add_argument("--out", default="results/bench_serving.md")
    args = parser.parse_args()
    require_wrk()
    with tempfile.TemporaryDirectory(prefix="modelpool-bench-") as tmp:
        home = Path(tmp)
        from modelpool.deployments.examples import build_examples

        build_examples(home / "model_store")
        model_file = iris_model_file(home / "model_store", home / "bench-cache")
        phases: dict[str, Runs] = {}
        print("phase 1: single processes (no Ray)", flush=True)
        phases["single"] = bench_single_process(model_file, args.seconds, args.rounds)
        print("phase 2: hand-tuned Ray Serve", flush=True)
        phases["handtuned"] = bench_handtuned(model_file, args.seconds, args.rounds, args.handtuned_replicas)
        print("phase 3: plain Ray Serve (default proxy)", flush=True)
        plain = bench_plain_serve(model_file, args.seconds)
        print("phase 4: modelpool cluster", flush=True)
        phases["modelpool"] = bench_modelpool(home, model_file, args.seconds, args.rounds, args.c1_rounds)
    publish(report(phases, plain, args), args.out)


if __name__ == "__main__":
    main()
