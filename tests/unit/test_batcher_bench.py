"""loadtests.bench_batching reads batch sizes, waits and replica latency off the metrics port, as Ray exports them."""
import math

from loadtests.bench_batching import Run, _bucket_name, histogram_of_sizes, snapshot
from loadtests.wrk import LoadResult

TAGS = 'Component="core_worker",NodeAddress="127.0.0.1",SessionName="session_x",Version="2.60.0"'


def exposition(worker: str, buckets: dict, batched: float, wait_ms: float, model: str = "iris") -> str:
    """Prometheus text as Ray's metrics agent writes it: cumulative buckets, one series per worker."""
    labels = f'{TAGS},WorkerId="{worker}",model="{model}",version="2"'
    lines = [f'ray_modelpool_batch_size_bucket{{{labels},le="{le}"}} {count}' for le, count in buckets.items()]
    lines += [
        f"ray_modelpool_batch_size_count{{{labels}}} {list(buckets.values())[-1]}",
        f"ray_modelpool_batch_size_sum{{{labels}}} 1.5",  # bucket midpoints: Ray's approximation, never used
        f"ray_modelpool_batched_requests_total{{{labels}}} {batched}",
        f"ray_modelpool_batch_wait_ms_total{{{labels}}} {wait_ms}",
        f'ray_modelpool_request_latency_ms_bucket{{{labels},le="1.0",route="infer"}} {batched}',
        f'ray_modelpool_request_latency_ms_bucket{{{labels},le="+Inf",route="infer"}} {batched}',
        f"ray_modelpool_request_latency_ms_count{{{labels},route=\"infer\"}} {batched}",
    ]
    return "\n".join(["# HELP ray_modelpool_batch_size Requests served by one handler call.",
                      "# TYPE ray_modelpool_batch_size histogram", *lines])


def test_batch_sizes_add_up_over_replicas_and_subtract_between_runs():
    before = snapshot(exposition("w1", {"1.0": 10, "2.0": 10, "4.0": 10, "+Inf": 10}, batched=10, wait_ms=0.5))
    after = snapshot("\n".join([
        exposition("w1", {"1.0": 12, "2.0": 14, "4.0": 20, "+Inf": 20}, batched=40, wait_ms=30.5),
        exposition("w2", {"1.0": 1, "2.0": 1, "4.0": 1, "+Inf": 1}, batched=1, wait_ms=0.0),
        exposition("w3", {"1.0": 99, "+Inf": 99}, batched=99, wait_ms=99.0, model="other"),  # another model: left out
    ]))
    seen = after.minus(before)
    assert seen.batch_sizes.per_bucket() == [(0.0, 1.0, 3), (1.0, 2.0, 2), (2.0, 4.0, 6)]
    assert seen.batch_sizes.count == 11
    run = Run(64, LoadResult(100.0, 1.0, 2.0, 0), seen)
    assert run.mean_batch == 31 / 11, "the exact counter, not Ray's midpoint sum"
    assert run.mean_wait_ms == 30.0 / 31


def test_replica_latency_quantiles_are_bucket_bounds():
    seen = snapshot(exposition("w1", {"1.0": 1, "+Inf": 1}, batched=100, wait_ms=1.0)).latency_ms
    assert seen.quantile(0.5) == 1.0
    assert math.isnan(snapshot("").latency_ms.quantile(0.99)), "no requests, no latency"


def test_exact_sizes_fall_in_the_metrics_power_of_two_buckets():
    sizes = histogram_of_sizes({1: 5, 2: 1, 3: 2, 64: 4, 100: 1})
    assert [(_bucket_name(lo, hi), n) for lo, hi, n in sizes.per_bucket()] == [
        ("1", 5), ("2", 1), ("3-4", 2), ("33-64", 4), ("65-128", 1)]
    assert sizes.count == 13 and sizes.total == 5 + 2 + 6 + 256 + 100


def test_an_older_modelpool_without_the_batched_counter_falls_back_to_requests_answered():
    seen = snapshot(exposition("w1", {"1.0": 4, "+Inf": 4}, batched=0, wait_ms=0.0)
                    + '\nray_modelpool_requests_total{model="iris",version="2",route="infer",status="200"} 4')
    run = Run(1, LoadResult(100.0, 1.0, 2.0, 0), seen)
    assert run.mean_batch == 1.0
    assert math.isnan(run.mean_wait_ms)
