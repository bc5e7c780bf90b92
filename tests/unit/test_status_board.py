"""The status board's arithmetic (rates, p50/p99 from summed histograms, the one-minute window, the errors ring) and
the replicas' side of it (each second's summary, one call at a time, a missing or dead board): no Ray."""
from __future__ import annotations

import contextvars
import json
import time

import pytest

from modelpool.deployments import board_report, latency_histogram, metrics
from modelpool.deployments.board_report import BoardPusher, VersionReport, error_entry
from modelpool.deployments.status_board import ERRORS_KEPT, FORGET_AFTER_S, WINDOW_S, BoardState

NOW = 1_767_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def summary(second: float, statuses: dict, latencies: list[float] = (), model: str = "iris", version: str = "1",
            replica: str = "r1", errors: list = ()) -> dict:
    return {"model": model, "version": version, "replica": replica, "second": int(second), "statuses": statuses,
            "histogram": latency_histogram.histogram(latencies), "errors": list(errors)}


def stats_of(board: BoardState, model: str = "iris", version: str = "1") -> dict:
    return next(s for s in board.snapshot()["stats"] if (s["model"], s["version"]) == (model, version))


# ------------------------------------------------------------------------------ the histogram
def test_buckets_are_log_spaced_and_cover_50_us_to_100_s():
    bounds = latency_histogram.BOUNDS
    assert bounds[0] == 0.05 and bounds[-1] > 100_000
    assert all(b / a == pytest.approx(2 ** 0.25) for a, b in zip(bounds, bounds[1:]))
    assert latency_histogram.bucket_of(0.01) == 0 and latency_histogram.bucket_of(1e9) == len(bounds)


@pytest.mark.parametrize("value", [0.07, 0.9, 2.0, 13.0, 480.0, 9_000.0])
def test_a_quantile_is_within_one_bucket_of_the_truth(value):
    counts = latency_histogram.histogram([value] * 100)
    for q in (0.5, 0.99):
        assert value / 2 ** 0.25 <= latency_histogram.quantile(counts, q) <= value * 2 ** 0.25


def test_quantiles_of_a_spread_and_of_nothing():
    counts = latency_histogram.histogram([1.0] * 90 + [50.0] * 9 + [900.0])
    assert latency_histogram.quantile(counts, 0.5) == pytest.approx(1.0, rel=0.2)
    assert latency_histogram.quantile(counts, 0.99) == pytest.approx(50.0, rel=0.2)
    assert latency_histogram.quantile(counts, 1.0) == pytest.approx(900.0, rel=0.2)
    assert latency_histogram.quantile({}, 0.5) is None
    assert latency_histogram.quantile(latency_histogram.histogram([1e9]), 0.5) == latency_histogram.BOUNDS[-1]


# ------------------------------------------------------------------------------ the board
def test_rates_and_percentiles_add_up_over_replicas_and_seconds():
    clock = Clock()
    board = BoardState(clock)
    board.push("node-a", [summary(NOW - 70, {200: 1})])  # first seen now, so the window will be the full minute
    clock.now += 70
    for offset in range(1, 31):  # 30 s of traffic from two replicas: 2 ms on r1, 40 ms on r2 (a tenth of it)
        board.push("node-a", [summary(clock.now - offset, {200: 9, 500: 1}, [2.0] * 9 + [40.0], replica="r1")])
        board.push("node-b", [summary(clock.now - offset, {200: 10}, [2.0] * 10, replica="r2")])
    stats = stats_of(board)
    assert stats["requests"] == 600 and stats["errors"] == 30
    assert stats["windowS"] == WINDOW_S
    assert stats["requestsPerSecond"] == pytest.approx(600 / 60)
    assert stats["errorsPerSecond"] == pytest.approx(30 / 60)
    assert stats["p50Ms"] == pytest.approx(2.0, rel=0.2)
    assert stats["p99Ms"] == pytest.approx(40.0, rel=0.2)
    replicas = {r["replicaId"]: r for r in board.snapshot()["replicas"]}
    assert replicas["r1"]["nodeId"] == "node-a" and replicas["r2"]["nodeId"] == "node-b"
    assert replicas["r1"]["lastReport"] == clock.now


def test_only_the_last_minute_counts():
    clock = Clock()
    board = BoardState(clock)
    board.push("n", [summary(NOW, {200: 100}, [900.0] * 100)])
    clock.now += 30
    board.push("n", [summary(clock.now, {200: 10}, [1.0] * 10)])
    assert stats_of(board)["requests"] == 110
    clock.now += 31  # the slow second is 61 s old now
    stats = stats_of(board)
    assert stats["requests"] == 10 and stats["p99Ms"] == pytest.approx(1.0, rel=0.2)
    clock.now += 60
    stats = stats_of(board)
    assert (stats["requests"], stats["requestsPerSecond"], stats["p50Ms"], stats["p99Ms"]) == (0, 0.0, None, None)


def test_a_version_seen_for_less_than_a_minute_is_averaged_over_the_time_seen():
    clock = Clock()
    board = BoardState(clock)
    for second in range(10):  # 100 req/s for the 10 s since its replica first reported
        board.push("n", [summary(clock.now, {200: 100})])
        clock.now += 1
    stats = stats_of(board)
    assert stats["windowS"] == pytest.approx(10.0)
    assert stats["requestsPerSecond"] == pytest.approx(100.0)


def test_errors_keep_the_newest_fifty_newest_first_with_their_replica():
    board = BoardState(Clock())
    for i in range(ERRORS_KEPT + 5):
        board.push("n", [summary(NOW, {500: 1}, errors=[{"time": NOW + i, "status": 500, "message": f"boom {i}",
                                                         "requestId": f"req-{i}"}], replica=f"r{i % 2}")])
    errors = board.snapshot()["errors"]
    assert len(errors) == ERRORS_KEPT
    assert errors[0] == {"time": NOW + ERRORS_KEPT + 4, "model": "iris", "version": "1", "replicaId": "r0",
                         "status": 500, "message": f"boom {ERRORS_KEPT + 4}", "requestId": f"req-{ERRORS_KEPT + 4}"}
    assert errors[-1]["message"] == "boom 5"


def test_heartbeats_keep_a_replica_and_silent_ones_are_forgotten():
    clock = Clock()
    board = BoardState(clock)
    board.push("n", [summary(NOW, {200: 1}, replica="alive"), summary(NOW, {200: 1}, replica="gone")])
    for _ in range(4):
        clock.now += FORGET_AFTER_S / 3
        board.push("n", [summary(clock.now, {}, replica="alive")])  # a heartbeat: nothing counted
    assert [r["replicaId"] for r in board.snapshot()["replicas"]] == ["alive"]
    assert stats_of(board)["requests"] == 0


# ------------------------------------------------------------------------------ a replica's second
def test_a_second_is_summed_over_routes_and_heartbeats_follow_once_it_answered():
    report = VersionReport("iris", "1", "r1")
    assert report.summary({}, {}, [], now=NOW, monotonic=0.0) is None  # never answered: nothing to say
    second = report.summary({("infer", 200): 3, ("predict", 200): 1, ("infer", 500): 1},
                            {"infer": [1.0, 1.0, 1.0, 30.0], "predict": [2.0]}, [], now=NOW, monotonic=1.0)
    assert second["statuses"] == {200: 4, 500: 1} and second["second"] == int(NOW)
    assert sum(second["histogram"].values()) == 5
    assert (second["model"], second["version"], second["replica"]) == ("iris", "1", "r1")
    assert report.summary({}, {}, [], now=NOW + 5, monotonic=6.0) is None
    heartbeat = report.summary({}, {}, [], now=NOW + 11, monotonic=11.5)
    assert heartbeat["statuses"] == {} and heartbeat["histogram"] == {}


def test_an_error_keeps_the_answers_message_cut_short_and_never_more():
    long = "x" * 1000
    entry = error_entry(500, json.dumps({"error": long, "traceback": ["secret path"]}).encode(), now=NOW)
    assert entry["status"] == 500 and entry["time"] == NOW
    assert len(entry["message"]) == board_report.MESSAGE_CHARS and entry["message"].startswith("xxx")
    assert error_entry(502, b"<html>bad gateway</html>")["message"] == "<html>bad gateway</html>"
    assert error_entry(500, b"")["message"] == ""


def test_an_error_carries_the_request_id_of_its_call():
    """The id Serve's request context holds (the REST entry sets it on the replica's own port too): the log's."""
    from ray.serve import context

    def in_a_call() -> dict:
        context._set_request_context(request_id="req-42")
        return error_entry(500, b'{"error": "boom"}')

    assert contextvars.copy_context().run(in_a_call)["requestId"] == "req-42"


class FakeBoard:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []
        self.push = self

    def remote(self, node: str, summaries: list) -> str:
        self.calls.append((node, list(summaries)))
        return f"ref-{len(self.calls)}"


def test_one_call_per_second_at_most_and_seconds_wait_while_one_runs():
    board, outcomes = FakeBoard(), {}
    pusher = BoardPusher(lookup=lambda: board, settled=lambda ref: outcomes.get(ref), node=lambda: "node-a")
    now = time.time()
    pusher.push([summary(now, {200: 1}), summary(now, {200: 2}, model="other")])
    assert board.calls == [("node-a", [summary(now, {200: 1}), summary(now, {200: 2}, model="other")])]
    pusher.push([summary(now + 1, {200: 3})])  # ref-1 still runs: kept for later
    assert len(board.calls) == 1
    outcomes["ref-1"] = True
    pusher.push([summary(now + 2, {200: 4})])
    assert [s["statuses"] for s in board.calls[1][1]] == [{200: 3}, {200: 4}]
    outcomes["ref-2"] = True
    pusher.push([])  # nothing to say: no call
    assert len(board.calls) == 2


def test_a_missing_board_is_looked_up_at_most_every_ten_seconds_and_a_dead_one_again():
    clock, lookups, board, outcomes = Clock(0.0), [], FakeBoard(), {}

    def lookup():
        lookups.append(clock.now)
        return board if clock.now >= 5 else None

    pusher = BoardPusher(lookup=lookup, settled=lambda ref: outcomes.get(ref), node=lambda: "n", clock=clock)
    for second in range(0, 11):
        clock.now = float(second)
        pusher.push([summary(time.time(), {200: 1})])
        if second == 10:
            assert lookups == [0.0, 10.0] and len(board.calls) == 1
            assert len(board.calls[0][1]) == 11  # what waited for the board is sent once it is there
    outcomes["ref-1"] = False  # the board died: not called again until it is found again
    for second in range(11, 21):
        clock.now = float(second)
        pusher.push([summary(time.time(), {200: 1})])
    assert lookups == [0.0, 10.0, 20.0] and len(board.calls) == 2
    assert len(board.calls[1][1]) == 10


def test_seconds_older_than_the_window_are_dropped_while_the_board_is_away():
    board = FakeBoard()
    present = {"yes": False}
    pusher = BoardPusher(lookup=lambda: board if present["yes"] else None, settled=lambda ref: True, node=lambda: "n",
                         clock=Clock(0.0))
    pusher.push([summary(time.time() - 120, {200: 1}), summary(time.time(), {200: 2})])
    pusher._looked_at = None  # as if ten seconds went by
    present["yes"] = True
    pusher.push([])
    assert [s["statuses"] for s in board.calls[0][1]] == [{200: 2}]


def test_a_failing_board_never_reaches_the_caller():
    class Broken:
        class push:
            @staticmethod
            def remote(*_):
                raise RuntimeError("the actor handle is broken")

    pusher = BoardPusher(lookup=Broken, settled=lambda ref: True, node=lambda: "n")
    pusher.push([summary(time.time(), {200: 1})])  # no exception
    pusher.push([summary(time.time(), {200: 1})])


# ------------------------------------------------------------------------------ ModelMetrics feeds it
class _Recorder:
    def inc(self, *_):
        pass

    observe = set = inc


@pytest.fixture()
def counted_metrics(monkeypatch):
    """ModelMetrics as in a replica (a metrics registry), without Ray and without the flushing thread."""
    monkeypatch.setattr(metrics, "_metrics", {name: _Recorder() for name in (
        "requests", "latency", "batch_size", "batched", "batch_wait", "queue")})

    class NoThread:
        def add(self, _):
            pass

    monkeypatch.setattr(metrics, "_flusher", NoThread)
    return metrics.ModelMetrics("iris", "1", "r1")


def test_model_metrics_flush_hands_the_second_to_the_board(counted_metrics):
    for _ in range(4):
        counted_metrics.request("infer", 200, 2.0)
    counted_metrics.request("infer", 500, 30.0)
    counted_metrics.error(500, b'{"error": "model \'iris\' version \'1\' failed: ValueError: negative"}')
    counted_metrics.request("infer", 404, 0.1)
    counted_metrics.error(404, b'{"error": "no such route"}')  # counted, not listed
    second = counted_metrics.flush()
    assert second["statuses"] == {200: 4, 500: 1, 404: 1}
    assert [e["message"] for e in second["errors"]] == ["model 'iris' version '1' failed: ValueError: negative"]
    assert counted_metrics.flush() is None  # a second with nothing: no summary (the heartbeat comes later)


def test_a_burst_of_errors_is_capped_per_second(counted_metrics):
    for _ in range(500):
        counted_metrics.error(500, b'{"error": "boom"}')
    assert len(counted_metrics._errors) == board_report.ERRORS_PER_SECOND
