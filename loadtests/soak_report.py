"""The soak run's figures and verdicts, from what it recorded: pure, no cluster, unit-tested in milliseconds.

In: every request (kind, start, end, outcome), every kill, every batch job end to end, the process samples
(RSS and open file descriptors per process, under a stable key), and the object-store leftovers
(``loadtests.soak_objects``). Out: per-bucket series (a minute in the full run), per-process growth, and one
pass/fail line per target:

* **failures** under 0.05% of the answered requests (429s are *refused*, counted apart and not in the ratio);
  a failure overlapping a grace window after a kill is *excused*: ``grace_s`` after a replica kill for any
  request, ``management_grace_s`` after the management kill for requests through management only (inference
  does not pass through it, so it gets no excuse from it);
* **batch jobs**: every one Complete (nothing lost under kills);
* **RSS** of every long-lived process grows under 10%: the median of its last samples over the median of its
  first samples after the warm-up (its own warm-up, for a process started later: a replaced replica);
* **file descriptors** of every long-lived process do not grow: its last samples' median is at most the
  highest of its first samples after the warm-up (that window is the noise a steady process shows);
* **object store**: no stray key left by finished work.

A process is long-lived, and judged, when it is still there at the end and has ``2 * BASELINE_SAMPLES`` samples
after its warm-up; the others (killed, replaced, reloaded haproxys, idle workers that came and went) are
reported, not judged.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

from loadtests.soak_schedule import BASELINE_SAMPLES, ChaosPlan

OK, FAILED, REFUSED = "ok", "failed", "refused"


@dataclass(frozen=True, slots=True)
class Request:
    kind: str                 # "v2-json iris", "grpc iris v1", "scale", "batch poll", ...
    start_s: float            # seconds since the run started
    end_s: float
    outcome: str              # OK, FAILED or REFUSED
    error: str = ""
    management: bool = False  # through the management replica (the management kill excuses it)

    @property
    def latency_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000


@dataclass(frozen=True)
class Kill:
    at_s: float
    target: str               # the Serve application ("model:iris:1", "management")
    role: str
    pid: int
    back_after_s: Optional[float] = None  # until a process of the role ran again (management: answered again)

    @property
    def management(self) -> bool:
        return self.target == "management"


@dataclass(frozen=True)
class Job:
    execution_id: str
    submitted_s: float
    ended_s: float
    state: str                # the final state seen, or "Lost: ..." when the soak gave up on it
    rows: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    key: str                  # a stable name for one process: its role and an ordinal ("ServeController#1")
    pid: int
    rss_bytes: int
    fds: int


@dataclass(frozen=True)
class Targets:
    max_failure_ratio: float = 0.0005
    max_rss_growth: float = 0.10
    # a process's sockets come and go (keep-alive connections, Ray's channels): a few past the warm-up's highest
    # is churn, seen in the first 60 s run (+1 on a replica, +2 on log_monitor); a leak grows with the work
    max_fd_growth: int = 4
    # processes whose descriptors are bounded by design, judged against that bound instead: Ray's log monitor
    # tails every worker's log files and closes them all only once it holds LOG_MONITOR_MAX_OPEN_FILES (200,
    # ray/_private/log_monitor.py), so each replica a scale or a kill starts adds open files up to that count
    # (a 10-minute soak: 69 -> 91); 32 more for its sockets and pipes
    fd_ceilings: tuple[tuple[str, int], ...] = (("log_monitor", 200 + 32),)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Bucket:
    start_s: float
    requests: int = 0
    ok: int = 0
    failed: int = 0
    excused: int = 0
    refused: int = 0
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None


@dataclass
class Growth:
    key: str
    pid: int
    first_s: float
    last_s: float
    judged: bool
    reason: str = ""
    rss_base_mb: Optional[float] = None
    rss_end_mb: Optional[float] = None
    rss_growth: Optional[float] = None
    fds_base: Optional[float] = None
    fds_base_max: Optional[int] = None
    fds_end: Optional[float] = None
    rss_ok: bool = True
    fds_ok: bool = True


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0-100) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def excused_by(request: Request, kill: Kill, plan: ChaosPlan) -> bool:
    """Whether ``request`` overlaps ``kill``'s grace window (and the kill is one that can excuse it)."""
    if kill.management and not request.management:
        return False
    grace = plan.management_grace_s if kill.management else plan.grace_s
    return request.start_s <= kill.at_s + grace and request.end_s >= kill.at_s


def is_excused(request: Request, kills: Iterable[Kill], plan: ChaosPlan) -> bool:
    return request.outcome == FAILED and any(excused_by(request, kill, plan) for kill in kills)


def buckets(requests: Iterable[Request], kills: Sequence[Kill], plan: ChaosPlan) -> list[Bucket]:
    """Per-bucket counts (by the time each request ended) and p50/p99 of the answered inference requests."""
    count = max(1, int(-(-plan.duration_s // plan.bucket_s)))
    series = [Bucket(start_s=i * plan.bucket_s) for i in range(count)]
    latencies: dict[int, list[float]] = defaultdict(list)
    for request in requests:
        index = min(count - 1, max(0, int(request.end_s // plan.bucket_s)))
        bucket = series[index]
        bucket.requests += 1
        if request.outcome == OK:
            bucket.ok += 1
            if not request.management:
                latencies[index].append(request.latency_ms)
        elif request.outcome == REFUSED:
            bucket.refused += 1
        elif is_excused(request, kills, plan):
            bucket.excused += 1
        else:
            bucket.failed += 1
    for index, values in latencies.items():
        series[index].p50_ms, series[index].p99_ms = percentile(values, 50), percentile(values, 99)
    return series


def by_kind(requests: Iterable[Request], kills: Sequence[Kill], plan: ChaosPlan) -> dict[str, dict]:
    """Per request kind: counts, and p50/p99 of its answered requests."""
    rows: dict[str, dict] = {}
    latencies: dict[str, list[float]] = defaultdict(list)
    for request in requests:
        row = rows.setdefault(request.kind, {"requests": 0, OK: 0, FAILED: 0, "excused": 0, REFUSED: 0})
        row["requests"] += 1
        if request.outcome == FAILED and is_excused(request, kills, plan):
            row["excused"] += 1
        else:
            row[request.outcome] += 1
        if request.outcome == OK:
            latencies[request.kind].append(request.latency_ms)
    for kind, row in rows.items():
        row["p50_ms"], row["p99_ms"] = percentile(latencies[kind], 50), percentile(latencies[kind], 99)
    return dict(sorted(rows.items()))


def top_failures(requests: Iterable[Request], kills: Sequence[Kill], plan: ChaosPlan, limit: int = 10
                 ) -> list[tuple[str, str, bool, int]]:
    """(kind, error, excused, occurrences), most frequent first."""
    seen = Counter((r.kind, r.error[:160], is_excused(r, kills, plan)) for r in requests if r.outcome == FAILED)
    return [(kind, error, excused, n) for (kind, error, excused), n in seen.most_common(limit)]


def growth(samples: Iterable[Sample], plan: ChaosPlan, targets: Targets = Targets()) -> list[Growth]:
    """Every process's growth from the end of its warm-up to the end of the run (see the module's rules)."""
    by_key: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_key[sample.key].append(sample)
    last_round = max((s.at_s for series in by_key.values() for s in series), default=0.0)
    found = []
    for key, series in sorted(by_key.items()):
        series.sort(key=lambda s: s.at_s)
        first, last = series[0].at_s, series[-1].at_s
        row = Growth(key=key, pid=series[0].pid, first_s=first, last_s=last, judged=False)
        judged_from = max(plan.warmup_s, first + plan.warmup_s if first > plan.sample_every_s else 0.0)
        after = [s for s in series if s.at_s >= judged_from]
        if last < last_round - plan.sample_every_s / 2:
            row.reason = f"gone at {last:.0f} s"
        elif len(after) < 2 * BASELINE_SAMPLES:
            row.reason = f"too young: {len(after)} samples after its warm-up (started at {first:.0f} s)"
        else:
            base, end = after[:BASELINE_SAMPLES], after[-BASELINE_SAMPLES:]
            row.judged = True
            row.rss_base_mb = statistics.median(s.rss_bytes for s in base) / 2**20
            row.rss_end_mb = statistics.median(s.rss_bytes for s in end) / 2**20
            row.rss_growth = row.rss_end_mb / row.rss_base_mb - 1 if row.rss_base_mb else 0.0
            row.fds_base = statistics.median(s.fds for s in base)
            row.fds_base_max = max(s.fds for s in base)
            row.fds_end = statistics.median(s.fds for s in end)
            row.rss_ok = row.rss_growth < targets.max_rss_growth
            ceiling = dict(targets.fd_ceilings).get(key.split("#")[0])
            row.fds_ok = (row.fds_end <= ceiling if ceiling is not None
                          else row.fds_end <= row.fds_base_max + targets.max_fd_growth)
        found.append(row)
    return found


def process_series(samples: Iterable[Sample], plan: ChaosPlan) -> dict[str, list[Optional[list[int]]]]:
    """key -> per bucket, the bucket's last [rss_bytes, fds] of that process (None where it was not there)."""
    count = max(1, int(-(-plan.duration_s // plan.bucket_s)))
    series: dict[str, list[Optional[list[int]]]] = defaultdict(lambda: [None] * count)
    for sample in sorted(samples, key=lambda s: s.at_s):
        series[sample.key][min(count - 1, int(sample.at_s // plan.bucket_s))] = [sample.rss_bytes, sample.fds]
    return dict(sorted(series.items()))


@dataclass
class SoakReport:
    plan: ChaosPlan
    targets: Targets
    buckets: list[Bucket]
    kinds: dict[str, dict]
    failures: list[tuple[str, str, bool, int]]
    kills: list[Kill]
    jobs: list[Job]
    growth: list[Growth]
    processes: dict[str, list]
    objects: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_json(self) -> dict:
        return {"passed": self.passed, "plan": asdict(self.plan), "targets": asdict(self.targets),
                "checks": [asdict(c) for c in self.checks], "buckets": [asdict(b) for b in self.buckets],
                "kinds": self.kinds, "failures": [list(f) for f in self.failures],
                "kills": [asdict(k) for k in self.kills], "jobs": [asdict(j) for j in self.jobs],
                "growth": [asdict(g) for g in self.growth], "processes": self.processes, "objects": self.objects}


def build(plan: ChaosPlan, requests: Sequence[Request], kills: Sequence[Kill], jobs: Sequence[Job],
          samples: Sequence[Sample], objects: dict, targets: Targets = Targets()) -> SoakReport:
    report = SoakReport(plan=plan, targets=targets, buckets=buckets(requests, kills, plan),
                        kinds=by_kind(requests, kills, plan), failures=top_failures(requests, kills, plan),
                        kills=list(kills), jobs=list(jobs), growth=growth(samples, plan, targets),
                        processes=process_series(samples, plan), objects=objects)
    report.checks = checks(report)
    return report


def checks(report: SoakReport) -> list[Check]:
    targets = report.targets
    failed = sum(b.failed for b in report.buckets)
    answered = sum(b.ok for b in report.buckets) + failed
    excused = sum(b.excused for b in report.buckets)
    refused = sum(b.refused for b in report.buckets)
    ratio = failed / answered if answered else 1.0
    judged = [g for g in report.growth if g.judged]
    worst_rss = max(judged, key=lambda g: g.rss_growth, default=None)
    fd_growers = [g for g in judged if not g.fds_ok]
    lost = [j for j in report.jobs if j.state != "Complete"]
    stray = int(report.objects.get("stray_count", 0))
    return [
        Check("failed requests", answered > 0 and ratio < targets.max_failure_ratio,
              f"{failed} of {answered} answered ({ratio:.3%}; target < {targets.max_failure_ratio:.2%}); "
              f"{excused} excused by kills, {refused} refused (429)"),
        Check("batch jobs complete", bool(report.jobs) and not lost,
              f"{len(report.jobs) - len(lost)} of {len(report.jobs)} Complete"
              + (f"; not: {', '.join(f'{j.execution_id[:8]} {j.state}' for j in lost[:5])}" if lost else "")),
        Check("RSS growth", bool(judged) and all(g.rss_ok for g in judged),
              f"{len(judged)} long-lived processes; largest growth {worst_rss.key} {worst_rss.rss_growth:+.1%} "
              f"(target < {targets.max_rss_growth:.0%})" if worst_rss else "no long-lived process was sampled"),
        Check("file descriptors", bool(judged) and not fd_growers,
              "no growth" if not fd_growers else "; ".join(
                  f"{g.key} {g.fds_base_max} -> {g.fds_end:g}" for g in fd_growers[:8])),
        Check("object store after finished work", stray == 0 and not report.objects.get("error"),
              report.objects.get("error") or f"{stray} stray keys"
              + (f": {', '.join(report.objects.get('stray', [])[:5])}" if stray else "")),
    ]
