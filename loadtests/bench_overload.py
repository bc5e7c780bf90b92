"""Overload benchmark (issue 18): what a model does at 4x the load it can serve, against itself at saturation.

One fresh local cluster (``make start``'s settings), the iris V2 REST path, one row per request
(``loadtests.bench_serving.BODY``), all in one run:

1. **Saturation, measured first.** wrk at c = 4, 8, ... 256 (``--sweep-s`` each); the saturating concurrency
   ``c_sat`` is the smallest whose req/s is within 5% of the best. ``--max-queued-requests`` is applied after it.
2. **Rounds**, alternating: wrk at ``c_sat``, then at ``4 x c_sat``, ``--seconds`` each. Each wrk connection is a
   client that honours ``Retry-After`` as modelpool's SDK does (the time asked plus up to half again at random,
   ``client_core.Retries``); ``--harsh`` makes a refused connection send again at once instead, the harshest
   client there is, whose refusals then cost the machine's cores as much as answers do. Beside wrk, a
   *probe* (two keep-alive connections, a request every 20 ms each) records every answer's status and the
   latency its client saw, so accepted and refused calls are timed apart (wrk only has one histogram). The
   probe sends from 127.0.0.2, and tcpdump times its exchanges on the loopback wire too
   (``loadtests.wire_timing``): the server's share of each latency, apart from the probe's own waits for a core
   on the two the server shares with it.
3. **Recovery**: after each overload run the probe goes on alone; the time from wrk's end until ten
   answers in a row are 200 within twice the saturation p99 is "full service back".

Reported (each a ratio or figure from the same run): accepted p99 at 4x over p99 at saturation (target
<= 2x), refusals' p99 and max latency as the probe saw them and on the wire (target <= 10 ms), wrk's connection errors and timeouts (target 0),
recovery time (target <= 15 s), and the share refused. ``--max-queued-requests`` scales the model before
measuring; ``--threads`` and ``--batch-size`` start the cluster with those settings (``--threads`` may not be
below the batch size; default: as ``make start`` leaves them). The front refuses a call past replicas x (running + waiting), so these size what
a model holds: the defaults (128 + 100 per replica) accept far more than saturates a replica on this machine.

Needs wrk and tcpdump (and root, to capture). Run under ``flock /tmp/modelpool-ray.lock`` where other clusters run.
``python -m loadtests.bench_overload [--seconds 20] [--rounds 3] [--sweep-s 8] [--max-queued-requests N]
[--threads N] [--batch-size N] [--harsh] [--out results/bench_overload.md]``
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlsplit

import requests

from loadtests.bench_serving import BODY, V2_PATH, wait_http
from loadtests.local_cluster import BenchCluster, bench_cluster
from loadtests.report import publish
from loadtests.wire_timing import PROBE_SOURCE, Exchange, FromAddress, LoopbackCapture
from loadtests.wrk import require_wrk

SWEEP = (4, 8, 16, 32, 64, 128, 256)
SATURATED_SHARE = 0.95
OVERLOAD_FACTOR = 4
PROBE_CONNECTIONS = 2
PROBE_PAUSE_S = 0.02
RECOVERED_STREAK = 10
RECOVERY_LIMIT_S = 30.0
TARGETS = {"accepted_p99_ratio": 2.0, "refusal_p99_ms": 10.0, "connection_errors": 0, "recovery_s": 15.0}

# wrk's summary counts a 429 as a "status" error; the thread-local counters split 2xx, 429 and the rest, and
# connection errors (connect, read, write, timeout) stay apart from them.
_SCRIPT = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
local threads = {}
local honour = %s
-- wrk asks delay() before each request of a connection, but neither hook says which connection: every answer
-- queues the wait its client owes (0, or Retry-After plus up to half again), every request takes the oldest one
local waits, first, last = {}, 1, 0
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; shed = 0; other = 0 end
function response(status, headers, body)
  local wait_ms = 0
  if status == 429 then
    shed = shed + 1
    if honour then
      local asked = (tonumber(headers["Retry-After"]) or 1) * 1000
      wait_ms = asked + math.random() * asked / 2
    end
  elseif status < 300 then ok = ok + 1 else other = other + 1 end
  last = last + 1; waits[last] = wait_ms
end
function delay()
  if first > last then return 0 end
  local wait_ms = waits[first]; waits[first] = nil; first = first + 1
  return wait_ms
end
function done(summary, latency, requests)
  local o, s, x = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); s = s + t:get("shed"); x = x + t:get("other") end
  local e = summary.errors
  io.write(string.format("MODELPOOL_OVERLOAD %%d %%d %%d %%d %%d %%d %%d %%d\\n", summary.duration, o, s, x,
    e.connect + e.read + e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""
_SUMMARY = re.compile(r"MODELPOOL_OVERLOAD" + r" (\d+)" * 8)


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: answers by kind, connection errors and timeouts, and its latency over all answers."""

    connections: int
    seconds: float
    ok: int
    shed: int
    other: int
    socket_errors: int
    timeouts: int
    p50_ms: float
    p99_ms: float

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def parse_wrk(out: str, connections: int) -> WrkRun:
    match = _SUMMARY.search(out)
    if match is None:
        raise RuntimeError(f"could not read wrk's summary:\n{out}")
    duration_us, ok, shed, other, socket_errors, timeouts, p50_us, p99_us = map(int, match.groups())
    return WrkRun(connections, duration_us / 1e6, ok, shed, other, socket_errors, timeouts, p50_us / 1000,
                  p99_us / 1000)


def run_wrk(url: str, connections: int, seconds: int, honour_retry_after: bool = True) -> WrkRun:
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "overload.lua"
        lua.write_text(_SCRIPT % (BODY, "true" if honour_retry_after else "false"))
        out = subprocess.run([require_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                              "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out, connections)


def saturating(runs: Sequence[WrkRun], share: float = SATURATED_SHARE) -> int:
    """The smallest concurrency whose answered req/s is within ``1 - share`` of the best run's."""
    best = max(run.ok_per_s for run in runs)
    return min(run.connections for run in runs if run.ok_per_s >= share * best)


@dataclass
class Probe:
    """A few keep-alive connections sending one request at a time beside wrk: (sent at, status, ms) each. They
    leave from ``PROBE_SOURCE``, so a ``LoopbackCapture`` times them on the wire."""

    url: str
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Probe":
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(PROBE_CONNECTIONS)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _loop(self) -> None:
        with requests.Session() as session:
            session.mount("http://", FromAddress(PROBE_SOURCE))
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = session.post(self.url, data=BODY, headers={"Content-Type": "application/json"},
                                          timeout=10).status_code
                except requests.RequestException:
                    status = 0  # a connection error or timeout: counted, never hidden
                self.samples.append((sent, status, (time.monotonic() - sent) * 1000))
                self._stop.wait(PROBE_PAUSE_S)

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [sample for sample in self.samples if start <= sample[0] < end]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def recovery_s(samples: Sequence[tuple[float, int, float]], load_end: float, limit_ms: float) -> Optional[float]:
    """Seconds from ``load_end`` to the first of ``RECOVERED_STREAK`` answers in a row that are 200 within
    ``limit_ms`` (None: not within the samples)."""
    streak_start: Optional[float] = None
    streak = 0
    for sent, status, ms in sorted(s for s in samples if s[0] >= load_end):
        if status == 200 and ms <= limit_ms:
            streak_start = sent if streak == 0 else streak_start
            streak += 1
            if streak >= RECOVERED_STREAK:
                return max(0.0, streak_start - load_end)
        else:
            streak = 0
    return None


@dataclass
class Round:
    saturated: WrkRun
    overloaded: WrkRun
    saturated_probe: list[tuple[float, int, float]]
    overloaded_probe: list[tuple[float, int, float]]
    recovery_s: Optional[float]
    overload_window: tuple[float, float] = (0.0, 0.0)  # time.monotonic() at the 4x load's start and end
    overloaded_wire: list[Exchange] = field(default_factory=list)  # filled once the capture has stopped

    def accepted_p99_ms(self, probe: list[tuple[float, int, float]]) -> float:
        return percentile([ms for _, status, ms in probe if status == 200], 99)

    @property
    def saturation_p99_ms(self) -> float:
        return self.accepted_p99_ms(self.saturated_probe)

    @property
    def overload_p99_ms(self) -> float:
        return self.accepted_p99_ms(self.overloaded_probe)

    @property
    def refusals_ms(self) -> list[float]:
        return [ms for _, status, ms in self.overloaded_probe if status == 429]

    @property
    def wire_refusals_ms(self) -> list[float]:
        return [e.ms for e in self.overloaded_wire if e.status == 429]

    @property
    def probe_failures(self) -> int:
        return sum(1 for _, status, _ in self.saturated_probe + self.overloaded_probe if status not in (200, 429))


def scale_queue(cluster: BenchCluster, max_queued: int) -> None:
    # the version the benchmark's path calls: iris's default (PUT /models/{name} scales it, as TorchServe's does)
    answer = requests.put(f"{cluster.url}/models/iris", params={"max_queued_requests": max_queued,
                                                                  "synchronous": "true"},
                          headers={"Authorization": f"Bearer {cluster.token}"}, timeout=120)
    answer.raise_for_status()


def server_settings(args: argparse.Namespace) -> dict[str, str]:
    """``--threads`` and ``--batch-size`` as the server settings a cluster starts with (threads >= batch size)."""
    return {variable: str(value) for variable, value in (("MODELPOOL_THREADS", args.threads),
                                                         ("MODELPOOL_MAX_BATCH_SIZE", args.batch_size)) if value}


def measure(args: argparse.Namespace) -> tuple[list[WrkRun], int, list[Round], int]:
    """The sweep, the saturating concurrency, the rounds, and the segments the wire capture lost."""
    with bench_cluster(server_settings(args)) as cluster:
        url = cluster.url + V2_PATH
        wait_http(url)
        run_wrk(url, 64, 5)  # warm
        sweep = []
        for connections in SWEEP:
            sweep.append(run_wrk(url, connections, args.sweep_s, not args.harsh))
            print(f"sweep c={connections}: {sweep[-1].ok_per_s:,.0f} req/s p99 {sweep[-1].p99_ms:.1f} ms", flush=True)
        c_sat = saturating(sweep)
        # the limit comes after the sweep: with it in place, refused clients wait and answered req/s hardly moves
        # with concurrency, so the saturating concurrency is the model's, measured as the server leaves it
        if args.max_queued_requests is not None:
            scale_queue(cluster, args.max_queued_requests)
        print(f"saturating concurrency: {c_sat}; overload at {OVERLOAD_FACTOR * c_sat}", flush=True)
        rounds = []
        with LoopbackCapture(urlsplit(url).port) as wire, Probe(url) as probe:
            for number in range(args.rounds):
                time.sleep(3)
                start = time.monotonic()
                saturated = run_wrk(url, c_sat, args.seconds, not args.harsh)
                saturated_probe = probe.between(start, time.monotonic())
                time.sleep(3)
                start = time.monotonic()
                overloaded = run_wrk(url, OVERLOAD_FACTOR * c_sat, args.seconds, not args.harsh)
                load_end = time.monotonic()
                time.sleep(RECOVERY_LIMIT_S if number == args.rounds - 1 else 15)
                taken = Round(saturated, overloaded, saturated_probe, probe.between(start, load_end), None,
                              (start, load_end))
                taken.recovery_s = recovery_s(probe.between(load_end, time.monotonic()), load_end,
                                              2 * taken.saturation_p99_ms)
                rounds.append(taken)
                print(f"round {number + 1}: saturation p99 {taken.saturation_p99_ms:.1f} ms, 4x accepted p99 "
                      f"{taken.overload_p99_ms:.1f} ms, refused {overloaded.shed:,} of "
                      f"{overloaded.ok + overloaded.shed:,}, refusal p99 {percentile(taken.refusals_ms, 99):.1f} ms"
                      f" (probe),"
                      f" socket errors {overloaded.socket_errors}, timeouts {overloaded.timeouts}, recovery "
                      f"{taken.recovery_s if taken.recovery_s is None else round(taken.recovery_s, 1)} s", flush=True)
        for taken in rounds:  # the capture is read once tcpdump has stopped
            taken.overloaded_wire = wire.between(*taken.overload_window)
    return sweep, c_sat, rounds, wire.dropped


def settings_line(args: argparse.Namespace) -> str:
    """The limits the run used, as the flags that set them ("default": as ``make start`` leaves it)."""
    def shown(value: Optional[int]) -> str:
        return "default" if value is None else str(value)

    return (f"--threads {shown(args.threads)}, batch_size {shown(args.batch_size)}, "
            f"max_queued_requests {shown(args.max_queued_requests)}")


def report(sweep: Sequence[WrkRun], c_sat: int, rounds: Sequence[Round], args: argparse.Namespace,
           wire_dropped: int = 0) -> str:
    ratios = [r.overload_p99_ms / r.saturation_p99_ms for r in rounds]
    refusals = [ms for r in rounds for ms in r.refusals_ms]
    wire_refusals = [ms for r in rounds for ms in r.wire_refusals_ms]
    errors = sum(r.overloaded.socket_errors + r.overloaded.timeouts + r.saturated.socket_errors
                 + r.saturated.timeouts for r in rounds)
    recoveries = [r.recovery_s for r in rounds]
    worst_recovery = None if None in recoveries else max(recoveries)
    shed_share = sum(r.overloaded.shed for r in rounds) / max(1, sum(r.overloaded.ok + r.overloaded.shed
                                                                      for r in rounds))
    lines = ["# Overload: 4x the saturating concurrency", "",
             f"iris V2 REST, one row per request, wrk -t1 ({'no Retry-After honoured' if args.harsh else 'each connection honours Retry-After with jitter'}); {args.rounds} rounds of "
             f"{args.seconds} s; {settings_line(args)}.",
             "", "| c | req/s answered | p99 ms |", "| --- | --- | --- |"]
    lines += [f"| {run.connections} | {run.ok_per_s:,.0f} | {run.p99_ms:.1f} |" for run in sweep]
    lines += ["", f"Saturating concurrency: **{c_sat}** (smallest within 5% of the best); overload at "
              f"**{OVERLOAD_FACTOR * c_sat}**.", "",
              "| round | req/s at c_sat | p99 at c_sat (probe) | req/s 200 at 4x | refused at 4x | accepted p99 at 4x | ratio | refusal p99 / max ms (probe) | refusal p99 / max ms (wire) | socket errors + timeouts | recovery s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for number, r in enumerate(rounds, 1):
        lines.append(f"| {number} | {r.saturated.ok_per_s:,.0f} | {r.saturation_p99_ms:.1f} | "
                     f"{r.overloaded.ok_per_s:,.0f} | {r.overloaded.shed:,} | {r.overload_p99_ms:.1f} | "
                     f"{r.overload_p99_ms / r.saturation_p99_ms:.2f}x | {percentile(r.refusals_ms, 99):.1f} / "
                     f"{max(r.refusals_ms, default=float('nan')):.1f} | {percentile(r.wire_refusals_ms, 99):.1f} / "
                     f"{max(r.wire_refusals_ms, default=float('nan')):.1f} | "
                     f"{r.overloaded.socket_errors + r.overloaded.timeouts} | "
                     f"{'not back' if r.recovery_s is None else f'{r.recovery_s:.1f}'} |")
    lines += ["", "| figure | measured | target |", "| --- | --- | --- |",
              f"| accepted p99 at 4x / p99 at saturation (median of rounds) | {statistics.median(ratios):.2f}x | "
              f"<= {TARGETS['accepted_p99_ratio']}x |",
              f"| refusal latency p99 (all rounds, probe) | {percentile(refusals, 99):.1f} ms ({len(refusals):,} "
              f"refusals timed) | <= {TARGETS['refusal_p99_ms']:.0f} ms |",
              f"| refusal latency p99 (all rounds, on the wire: the server's share) | "
              f"{percentile(wire_refusals, 99):.1f} ms ({len(wire_refusals):,} refusals timed) | "
              f"<= {TARGETS['refusal_p99_ms']:.0f} ms |",
              f"| segments the wire capture lost (tcpdump's count) | {wire_dropped} | 0 |",
              f"| connection errors and timeouts (wrk, all runs) | {errors} | 0 |",
              f"| probe answers neither 200 nor 429 | {sum(r.probe_failures for r in rounds)} | 0 |",
              f"| full service back after the load drops (worst round) | "
              f"{'not within the wait' if worst_recovery is None else f'{worst_recovery:.1f} s'} | "
              f"<= {TARGETS['recovery_s']:.0f} s |",
              f"| share of requests refused at 4x | {shed_share:.0%} | |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep-s", type=int, default=8)
    parser.add_argument("--max-queued-requests", type=int, default=None)
    parser.add_argument("--harsh", action="store_true", help="wrk sends again at once after a 429 (no Retry-After)")
    parser.add_argument("--threads", type=int, default=None, help="calls running per replica (server setting)")
    parser.add_argument("--batch-size", type=int, default=None, help="--max-batch-size (server setting)")
    parser.add_argument("--out", default="results/bench_overload.md")
    args = parser.parse_args()
    require_wrk()
    sweep, c_sat, rounds, wire_dropped = measure(args)
    publish(report(sweep, c_sat, rounds, args, wire_dropped), args.out)


if __name__ == "__main__":
    main()
