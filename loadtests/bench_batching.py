"""How the adaptive batcher behaves under load: batch sizes and batcher wait at c=1, 8 and 64.

Starts one ``modelpool start`` cluster (the example models, default settings; as ``bench_serving``
does) and drives wrk at ``/v2/models/iris/infer``. For every run it prints req/s and p50/p99 seen by
wrk and, from the deltas of the cluster's own metrics over that run (the metrics port; Ray exports
every second here):

- the batch-size histogram (``modelpool_batch_size``: one observation per handler call, buckets
  of powers of two) and the mean batch size;
- the mean time a request waited in the batcher for its handler call
  (``modelpool_batch_wait_ms_total`` over the requests batched);
- the replica's own p50/p99 (``modelpool_request_latency_ms``, from arrival in the replica to the
  answer, read off its buckets), which tells a tail made in the replica from one made before it.

Runs alternate c=1, 8, 64 round by round, so drift hits every concurrency alike. Needs wrk.
Wrap it in ``flock /tmp/modelpool-ray.lock`` where other jobs start Ray. Usage:
``python -m loadtests.bench_batching [--seconds 8] [--rounds 2] [--out results/bench_batching.md]``
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from loadtests.bench_serving import BODY, CONCURRENCY, V2_PATH, wait_http
from loadtests.local_cluster import bench_cluster
from loadtests.report import publish
from loadtests.wrk import LoadResult, require_wrk, run_wrk

MODEL = "iris"
SETTLE_TIMEOUT_S = 20.0
_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Histogram:
    """Cumulative Prometheus buckets (upper bound -> count), with their sum and count."""

    buckets: dict[float, float] = field(default_factory=dict)
    total: float = 0.0
    count: float = 0.0

    def minus(self, before: "Histogram") -> "Histogram":
        return Histogram({le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
                         self.total - before.total, self.count - before.count)

    def per_bucket(self) -> list[tuple[float, float, int]]:
        """(lower bound, upper bound, observations) for each non-empty bucket."""
        rows, lower, below = [], 0.0, 0.0
        for le in sorted(self.buckets):
            n = self.buckets[le] - below
            if n > 0:
                rows.append((lower, le, round(n)))
            lower, below = le, self.buckets[le]
        return rows

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (what the buckets can say)."""
        if self.count <= 0:
            return float("nan")
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * self.count:
                return le
        return float("inf")


@dataclass(frozen=True)
class Snapshot:
    batch_sizes: Histogram
    latency_ms: Histogram
    wait_ms: float
    batched: float  # requests served by handler calls (0 where the counter is missing: an older modelpool)
    answered: float = 0.0  # requests answered, any status (the stand-in for ``batched`` on an older modelpool)

    def minus(self, before: "Snapshot") -> "Snapshot":
        return Snapshot(self.batch_sizes.minus(before.batch_sizes), self.latency_ms.minus(before.latency_ms),
                        self.wait_ms - before.wait_ms, self.batched - before.batched, self.answered - before.answered)


def parse_samples(text: str, name_prefix: str, **labels: str) -> dict[str, list[tuple[dict, float]]]:
    """The samples of series starting with ``name_prefix`` whose labels include ``labels``, by name."""
    found: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or not match.group(1).startswith(name_prefix):
            continue
        sample_labels = dict(_LABEL.findall(match.group(2)))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            found.setdefault(match.group(1), []).append((sample_labels, float(match.group(3))))
    return found


def histogram(samples: dict[str, list[tuple[dict, float]]], name: str) -> Histogram:
    """One histogram summed over every series (replicas, versions) of ``name``."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        le = float(labels["le"])  # "+Inf" parses as inf
        buckets[le] = buckets.get(le, 0.0) + value
    return Histogram(buckets, sum(v for _, v in samples.get(f"{name}_sum", [])),
                     sum(v for _, v in samples.get(f"{name}_count", [])))


def histogram_of_sizes(sizes: dict[int, int]) -> Histogram:
    """Exact batch sizes (size -> batches) in the metric's power-of-two buckets."""
    from modelpool.deployments.metrics import BATCH_SIZE_BOUNDARIES

    bounds = [*map(float, BATCH_SIZE_BOUNDARIES), float("inf")]
    return Histogram({le: float(sum(n for size, n in sizes.items() if size <= le)) for le in bounds},
                     float(sum(size * n for size, n in sizes.items())), float(sum(sizes.values())))


def snapshot(text: str, model: str = MODEL) -> Snapshot:
    samples = parse_samples(text, "ray_modelpool_", model=model)
    return Snapshot(histogram(samples, "ray_modelpool_batch_size"),
                    histogram(samples, "ray_modelpool_request_latency_ms"),
                    sum(v for _, v in samples.get("ray_modelpool_batch_wait_ms_total", [])),
                    sum(v for _, v in samples.get("ray_modelpool_batched_requests_total", [])),
                    sum(v for _, v in samples.get("ray_modelpool_requests_total", [])))


def settled_snapshot(metrics_url: str) -> Snapshot:
    """The metrics once the last run is all exported: two reads a report apart that agree."""
    import requests

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    time.sleep(2.5)  # the replica hands its counts to Ray every second, Ray exports every second
    last = snapshot(requests.get(metrics_url, timeout=10).text)
    while True:
        time.sleep(1.2)
        now = snapshot(requests.get(metrics_url, timeout=10).text)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


@dataclass(frozen=True)
class Run:
    connections: int
    load: LoadResult
    seen: Snapshot  # what the cluster's metrics saw during the run

    @property
    def mean_batch(self) -> float:
        """From the batched-requests counter; on an older modelpool from requests answered (the histogram's
        sum would do neither: Ray makes it of bucket midpoints, 0.5 for a batch of 1)."""
        return (self.seen.batched or self.seen.answered) / max(self.seen.batch_sizes.count, 1)

    @property
    def mean_wait_ms(self) -> float:
        return self.seen.wait_ms / self.seen.batched if self.seen.batched else float("nan")


def format_run(run: Run) -> str:
    sizes = run.seen.batch_sizes
    buckets = "  ".join(f"{_bucket_name(lo, hi)}:{n}" for lo, hi, n in sizes.per_bucket())
    return (f"  c={run.connections:<3} {run.load.requests_per_s:>8.1f} req/s  p50 {run.load.p50_ms:7.2f} ms  "
            f"p99 {run.load.p99_ms:8.2f} ms  errors {run.load.errors}  | {_replica_latency(run.seen.latency_ms)}"
            f"batches {sizes.count:.0f}  mean size {run.mean_batch:.2f}  "
            f"mean wait {run.mean_wait_ms:.3f} ms\n      batch sizes: {buckets}")


def _replica_latency(latency_ms: Histogram) -> str:
    if latency_ms.count <= 0:
        return ""
    return f"replica p50<={latency_ms.quantile(0.5):g} p99<={latency_ms.quantile(0.99):g} ms  "


def _bucket_name(lower: float, upper: float) -> str:
    low, high = int(lower) + 1, upper
    if high == float("inf"):
        return f">{int(lower)}"
    return str(int(high)) if low == int(high) else f"{low}-{int(high)}"


def measure(url: str, metrics_url: str, seconds: int, rounds: int) -> list[Run]:
    runs: list[Run] = []
    before = settled_snapshot(metrics_url)
    for _ in range(rounds):
        for connections in CONCURRENCY:
            load = run_wrk(url, BODY, connections, seconds)
            after = settled_snapshot(metrics_url)
            runs.append(Run(connections, load, after.minus(before)))
            print(format_run(runs[-1]), flush=True)
            before = after
    return runs


def report(runs: list[Run], args: argparse.Namespace, label: str) -> str:
    lines = [
        f"{label}: {V2_PATH} (iris v2, the default version, a decision tree), one row per request, wrk -t1, "
        f"{os.cpu_count()} cores; {args.rounds} runs of {args.seconds}s per concurrency, alternating; medians; batch "
        "sizes, waits and replica latency from the server's own counts over each run",
        "",
        "| c | req/s | p50 ms | p99 ms | replica p99 <= ms | batches/s | mean batch | mean wait in batcher ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in CONCURRENCY:
        mine = [r for r in runs if r.connections == c]
        med = lambda f: statistics.median(f(r) for r in mine)  # noqa: E731
        lines.append(f"| {c} | {med(lambda r: r.load.requests_per_s):.0f} | {med(lambda r: r.load.p50_ms):.2f} | "
                     f"{med(lambda r: r.load.p99_ms):.2f} | {med(lambda r: r.seen.latency_ms.quantile(0.99)):g} | "
                     f"{med(lambda r: r.seen.batch_sizes.count) / args.seconds:.0f} | "
                     f"{med(lambda r: r.mean_batch):.2f} | {med(lambda r: r.mean_wait_ms):.3f} |")
    lines += ["", "Batch-size histogram (handler calls per bucket of batch sizes, all rounds summed):", "",
              "| c | " + " | ".join(_bucket_name(lo, hi) for lo, hi in _size_buckets()) + " |",
              "| --- |" + " --- |" * len(_size_buckets())]
    for c in CONCURRENCY:
        counts = {}
        for r in runs:
            if r.connections == c:
                for lo, hi, n in r.seen.batch_sizes.per_bucket():
                    counts[hi] = counts.get(hi, 0) + n
        lines.append(f"| {c} | " + " | ".join(str(counts.get(hi, 0)) for _, hi in _size_buckets()) + " |")
    return "\n".join(lines)


def _size_buckets() -> list[tuple[float, float]]:
    from modelpool.deployments.metrics import BATCH_SIZE_BOUNDARIES

    bounds = [0.0, *map(float, BATCH_SIZE_BOUNDARIES), float("inf")]
    return list(zip(bounds, bounds[1:]))


def stats_snapshot(base_url: str) -> Snapshot:
    """A batcher server's own counts (``loadtests.batcher_server``'s ``/stats``): exact sizes, no latency."""
    import requests

    stats = requests.get(f"{base_url}/stats", timeout=10).json()
    return Snapshot(histogram_of_sizes({int(k): v for k, v in stats["sizes"].items()}), Histogram(),
                    (stats["waited_s"] or 0.0) * 1000, stats["items"])


def measure_ab(servers: dict[str, str], seconds: int, rounds: int) -> dict[str, list[Run]]:
    """Batcher servers alternating run by run at every concurrency, so noise hits each alike."""
    for base in servers.values():
        wait_http(base + V2_PATH)
        run_wrk(base + V2_PATH, BODY, 8, 2)
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    for _ in range(rounds):
        for connections in CONCURRENCY:
            for name, base in servers.items():
                before = stats_snapshot(base)
                load = run_wrk(base + V2_PATH, BODY, connections, seconds)
                runs[name].append(Run(connections, load, stats_snapshot(base).minus(before)))
                print(f"{name}\n{format_run(runs[name][-1])}", flush=True)
    return runs


def compare_batchers(args: argparse.Namespace) -> str:
    """The installed batcher against ``--compare-batcher`` in two ``batcher_server`` processes (no Ray)."""
    from modelpool.cluster.net import free_port
    from modelpool.deployments.examples import build_examples
    from loadtests.bench_serving import served

    with tempfile.TemporaryDirectory(prefix="modelpool-bench-batching-") as tmp:
        build_examples(Path(tmp))
        archive = str(Path(tmp) / "iris-2.zip")
        overhead = ["--overhead-us", str(args.overhead_us)]
        old_port, new_port = free_port(), free_port()
        baseline = ["--batcher-file", args.compare_batcher]
        with served("loadtests.batcher_server", archive, str(old_port), *baseline, *overhead), \
                served("loadtests.batcher_server", archive, str(new_port), *overhead):
            runs = measure_ab({"baseline": f"http://127.0.0.1:{old_port}", "current": f"http://127.0.0.1:{new_port}"},
                              args.seconds, args.rounds)
    return "\n".join([
        f"Batchers compared in one run, no Ray: `loadtests.batcher_server` (modelpool's LoadedModel, V2 JSON codec, "
        f"iris v2) with {args.overhead_us:g} us of busy event loop per request standing in for the HTTP path; "
        f"baseline = `{args.compare_batcher}`, current = the installed deployments/batcher.py",
        "",
        report(runs["baseline"], args, "baseline"), "", report(runs["current"], args, "current"), "",
        ratios(runs["baseline"], runs["current"], "baseline", "current"),
    ])


def ratios(old: list[Run], new: list[Run], old_name: str, new_name: str) -> str:
    def ratio(c: int, f) -> str:
        def median(runs: list[Run]) -> float:
            return statistics.median(f(r) for r in runs if r.connections == c)

        return f"{median(new) / median(old):.2f}x"

    req_s, p50, p99 = (lambda r: r.load.requests_per_s), (lambda r: r.load.p50_ms), (lambda r: r.load.p99_ms)
    return "\n".join([
        f"| ratio, {new_name} / {old_name} (medians) | value |",
        "| --- | --- |",
        f"| req/s at c=64 | {ratio(64, req_s)} |",
        f"| p99 at c=64 | {ratio(64, p99)} |",
        f"| req/s at c=8 | {ratio(8, req_s)} |",
        f"| p99 at c=8 | {ratio(8, p99)} |",
        f"| p50 at c=1 | {ratio(1, p50)} |",
    ])


def measure_cluster(extra_env: dict, seconds: int, rounds: int) -> list[Run]:
    with bench_cluster({"RAY_metrics_report_interval_ms": "1000", **extra_env}) as cluster:
        url = f"{cluster.url}{V2_PATH}"
        metrics_url = f"http://127.0.0.1:{cluster.env['MODELPOOL_METRICS_PORT']}/metrics"
        wait_http(url)
        run_wrk(url, BODY, 8, 2)  # warm up connections, caches and allocators
        return measure(url, metrics_url, seconds, rounds)


def compare_variants(variants: dict[str, str], args: argparse.Namespace) -> str:
    """One cluster per variant at a time (one Ray per machine), variants alternating round by round."""
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, path in variants.items():
            print(f"{name} (PYTHONPATH={path})", flush=True)
            runs[name] += measure_cluster({"PYTHONPATH": path}, args.seconds, 1)
    names = list(variants)
    return "\n\n".join([*(report(runs[name], args, name) for name in names),
                         ratios(runs[names[0]], runs[names[-1]], names[0], names[-1])])


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per concurrency")
    parser.add_argument("--label", default="modelpool (`make start` defaults)")
    parser.add_argument("--compare-batcher", metavar="FILE",
                        help="instead of a cluster: the installed batcher against the AdaptiveBatcher in FILE "
                             "(e.g. `git show HEAD:deployments/batcher.py > /tmp/b.py`), in-process servers, no Ray")
    parser.add_argument("--overhead-us", type=float, default=600.0,
                        help="with --compare-batcher: busy event loop per request, standing in for the HTTP path")
    parser.add_argument("--out", default="results/bench_batching.md")
    parser.add_argument("--variant", action="append", metavar="NAME=DIR",
                        help="repeatable: clusters started with PYTHONPATH=DIR (a copy of the package as `modelpool/`, "
                             "e.g. with another batcher), one after the other, round by round, instead of one cluster")
    args = parser.parse_args(argv)
    require_wrk()
    if args.compare_batcher:
        publish(compare_batchers(args), args.out)
    elif args.variant:
        publish(compare_variants(dict(v.split("=", 1) for v in args.variant), args), args.out)
    else:
        publish(report(measure_cluster({}, args.seconds, args.rounds), args, args.label), args.out)


if __name__ == "__main__":
    main()
