"""Graph benchmark: what an inference graph costs over calling its model straight, in one run on one cluster.

On a throwaway ``modelpool start`` cluster (the example models, default settings) this registers two
TRANSFORMER role archives that change nothing (an input transformer returning ``X`` as float, an output
transformer returning ``X`` as it is; ``initial_workers=0``: they run inside the graph's replicas) and PUTs
Seldon's chain as the graph ``iris_graph``::

    in (TRANSFORMER) -> model (iris version 1) -> out (TRANSFORMER)

Then ``wrk -t1`` with the one-row iris V2 body (``loadtests.bench_serving.BODY``) measures the bare model
(``/v2/models/iris/infer`` when version 1 is the default, else its versioned path) against the graph
(``/v2/models/iris_graph/infer``) at c=1 and c=64, the two alternating run by run (A/B/A/B, ``--rounds``
each) so machine noise hits both alike. It prints req/s, p50, p99 and non-2xx per server and concurrency,
and the two figures issue 16 sets targets for: at c=1 the graph's p50 minus the model's (<= +1 ms), at
c=64 the graph's req/s over the model's (>= 0.7x); each as the difference or ratio of the medians over
rounds and as the median of the paired per-round ones (each pair ran back to back, so drift cancels).

Needs wrk (``apt-get install -y wrk``). Usage:
``python -m loadtests.bench_graph [--seconds 8] [--rounds 3] [--out results/bench_graph.md]``
"""
from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass

from loadtests.bench_serving import BODY, wait_http
from loadtests.local_cluster import BenchCluster, bench_cluster
from loadtests.report import publish
from loadtests.wrk import LoadResult, require_wrk, run_wrk

GRAPH = "iris_graph"
MODEL, VERSION = "iris", "1"
IN, OUT = "identity_in", "identity_out"
CONCURRENCY = (1, 64)
SERVERS = ("model", "graph")
C1_DELTA_TARGET_MS, C64_RATIO_TARGET = 1.0, 0.7

ROLES = """
import numpy as np


class AsFloat:
    '''TRANSFORMER (input only): X as float, otherwise unchanged.'''
    def transform_input(self, X, features_names):
        return np.asarray(X, dtype=float)


class Same:
    '''TRANSFORMER (output only): X unchanged.'''
    def transform_output(self, X, features_names):
        return X
"""


def chain(in_model: str = IN, out_model: str = OUT) -> dict:
    """Seldon's transformer -> model -> transformer chain over iris version 1."""
    return {"name": "in", "type": "TRANSFORMER", "model": in_model, "children": [
        {"name": "model", "model": MODEL, "version": VERSION, "children": [
            {"name": "out", "type": "TRANSFORMER", "model": out_model}]}]}


Runs = dict[str, dict[int, list[LoadResult]]]  # server -> concurrency -> one result per round


@dataclass(frozen=True)
class Figures:
    """The two targets' figures, from the medians over rounds and from the paired rounds."""

    c1_p50_delta_ms: float           # graph p50 median - model p50 median, c=1
    c1_p50_deltas_ms: list[float]    # per round (graph - model, run back to back)
    c64_rps_ratio: float             # graph req/s median / model req/s median, c=64
    c64_rps_ratios: list[float]      # per round

    @property
    def c1_paired_delta_ms(self) -> float:
        return statistics.median(self.c1_p50_deltas_ms)

    @property
    def c64_paired_ratio(self) -> float:
        return statistics.median(self.c64_rps_ratios)

    @property
    def c1_met(self) -> bool:
        return self.c1_p50_delta_ms <= C1_DELTA_TARGET_MS

    @property
    def c64_met(self) -> bool:
        return self.c64_rps_ratio >= C64_RATIO_TARGET


def median_result(results: list[LoadResult]) -> LoadResult:
    """Each figure's median over rounds; non-2xx answers summed."""
    return LoadResult(requests_per_s=statistics.median(r.requests_per_s for r in results),
                      p50_ms=statistics.median(r.p50_ms for r in results),
                      p99_ms=statistics.median(r.p99_ms for r in results),
                      errors=sum(r.errors for r in results))


def figures(runs: Runs) -> Figures:
    model, graph = runs["model"], runs["graph"]
    return Figures(
        c1_p50_delta_ms=median_result(graph[1]).p50_ms - median_result(model[1]).p50_ms,
        c1_p50_deltas_ms=[g.p50_ms - m.p50_ms for m, g in zip(model[1], graph[1])],
        c64_rps_ratio=median_result(graph[64]).requests_per_s / max(median_result(model[64]).requests_per_s, 1e-9),
        c64_rps_ratios=[g.requests_per_s / max(m.requests_per_s, 1e-9) for m, g in zip(model[64], graph[64])],
    )


# --- the cluster ------------------------------------------------------------------------------------


def _admin(cluster: BenchCluster):
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {cluster.token}"
    return session


def model_path(cluster: BenchCluster) -> str:
    """The path a V2 client calls iris version 1 by: the short one when it is the default."""
    with _admin(cluster) as admin:
        answer = admin.get(f"{cluster.url}/models/{MODEL}/{VERSION}", timeout=30)
    answer.raise_for_status()
    is_default = bool(answer.json()[0].get("isDefault"))
    print(f"iris version {VERSION} is {'' if is_default else 'not '}the default version", flush=True)
    return f"/v2/models/{MODEL}/infer" if is_default else f"/v2/models/{MODEL}/versions/{VERSION}/infer"


def put_graph(cluster: BenchCluster) -> str:
    """The two role archives registered (no replicas of their own) and the chain PUT; the graph's path."""
    from modelpool.cluster.settings import load_settings
    from modelpool.deployments.examples import archive_command

    store = load_settings({}, cluster.env).model_store_path
    work = cluster.home / "bench-graph"  # inside the cluster's temp home: removed with it
    work.mkdir(exist_ok=True)
    (work / "identity_roles.py").write_text(ROLES)
    with _admin(cluster) as admin:
        for name, cls in ((IN, "AsFloat"), (OUT, "Same")):
            archive = archive_command(name, "1", f"identity_roles:{cls}", [work / "identity_roles.py"],
                                      service_type="TRANSFORMER", out=store / f"{name}-1.zip")
            answer = admin.post(f"{cluster.url}/models", timeout=300,
                                params={"url": archive.name, "initial_workers": 0, "synchronous": "true"})
            if answer.status_code != 200:
                raise RuntimeError(f"registering {name} failed: {answer.status_code} {answer.text}")
        answer = admin.put(f"{cluster.url}/graphs/{GRAPH}", json={"graph": chain()}, timeout=300)
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"PUT /graphs/{GRAPH} failed: {answer.status_code} {answer.text}")
    print(f"graph {GRAPH}: {answer.json().get('status', answer.text)}", flush=True)
    return f"/v2/models/{GRAPH}/infer"


def check_same_answers(model_url: str, graph_url: str) -> None:
    """The identity chain answers what the model does, and through all three nodes."""
    import requests

    wait_http(model_url)
    wait_http(graph_url)
    direct = requests.post(model_url, data=BODY, headers={"Content-Type": "application/json"}, timeout=30)
    through = requests.post(graph_url, data=BODY, headers={"Content-Type": "application/json"}, timeout=30)
    assert direct.status_code == 200 and through.status_code == 200, (direct.text, through.text)
    assert through.headers.get("x-modelpool-graph-path") == "in,model,out", through.headers
    outputs = {o["name"]: o["data"] for o in direct.json()["outputs"]}
    assert {o["name"]: o["data"] for o in through.json()["outputs"]} == outputs, (direct.text, through.text)


def measure(urls: dict[str, str], seconds: int, rounds: int) -> Runs:
    """Warm both up, then for each concurrency alternate the servers run by run, ``rounds`` times."""
    for url in urls.values():
        for connections in (8, 64):
            run_wrk(url, BODY, connections, 2)  # connections, caches, allocators, the autoscaler's first look
    runs: Runs = {name: {c: [] for c in CONCURRENCY} for name in urls}
    for connections in CONCURRENCY:
        for round_ in range(rounds):
            for name, url in urls.items():
                result = run_wrk(url, BODY, connections, seconds)
                runs[name][connections].append(result)
                print(f"  round {round_ + 1} {name:<6} c={connections:<3} {result.requests_per_s:>8.1f} req/s  "
                      f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:8.2f} ms  non-2xx {result.errors}", flush=True)
    return runs


# --- the report -------------------------------------------------------------------------------------


def report(runs: Runs, model_path_: str, args: argparse.Namespace) -> str:
    found = figures(runs)
    meds = {name: {c: median_result(results) for c, results in per_c.items()} for name, per_c in runs.items()}
    label = {"model": f"iris v{VERSION} alone (`{model_path_}`)",
             "graph": f"{GRAPH}: in -> iris v{VERSION} -> out (`/v2/models/{GRAPH}/infer`)"}

    def listed(values: list[float], fmt: str) -> str:
        return ", ".join(format(v, fmt) for v in values)

    lines = [
        f"iris LogisticRegression, one row per V2 request, wrk -t1, {os.cpu_count()} cores; each point the median of "
        f"{args.rounds} runs of {args.seconds}s, model and graph alternating run by run on one `modelpool start` "
        "cluster (default settings; the two identity transformers run in the graph's replicas)",
        "",
        "| server | c | req/s | p50 ms | p99 ms | non-2xx |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {label[name]} | {c} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
          for c in CONCURRENCY for name, r in ((n, meds[n][c]) for n in SERVERS)],
        "",
        "| figure | medians | paired, median of rounds | per round | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| graph p50 - model p50 at c=1 | {found.c1_p50_delta_ms:+.2f} ms | {found.c1_paired_delta_ms:+.2f} ms | "
        f"{listed(found.c1_p50_deltas_ms, '+.2f')} | <= +{C1_DELTA_TARGET_MS:g} ms | "
        f"{'yes' if found.c1_met else 'NO'} |",
        f"| graph / model req/s at c=64 | {found.c64_rps_ratio:.2f}x | {found.c64_paired_ratio:.2f}x | "
        f"{listed(found.c64_rps_ratios, '.2f')} | >= {C64_RATIO_TARGET:g}x | {'yes' if found.c64_met else 'NO'} |",
        f"| graph p99 / model p99 at c=64 | {meds['graph'][64].p99_ms / max(meds['model'][64].p99_ms, 1e-9):.2f}x "
        "| | | | |",
        f"| non-2xx answers, all runs (model / graph) | {sum(r.errors for r in meds['model'].values())} / "
        f"{sum(r.errors for r in meds['graph'].values())} | | | 0 | |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server and concurrency")
    parser.add_argument("--out", default="results/bench_graph.md")
    args = parser.parse_args()
    require_wrk()
    with bench_cluster() as cluster:
        model = model_path(cluster)
        graph = put_graph(cluster)
        urls = {"model": f"{cluster.url}{model}", "graph": f"{cluster.url}{graph}"}
        check_same_answers(urls["model"], urls["graph"])
        runs = measure(urls, args.seconds, args.rounds)
    publish(report(runs, model, args), args.out)


if __name__ == "__main__":
    main()
