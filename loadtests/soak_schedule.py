"""When the soak run's chaos happens: a pure function of the run's length, unit-tested in milliseconds.

The full run (10 minutes, ``make soak``) follows issue 18: a scale of iris v1 up or down every 30 s, a batch job
every minute, a model replica killed with SIGKILL every 2 minutes, the management replica killed once. A shorter
run keeps the same shape with its periods scaled down (a 60 s run: a scale every 15 s, a batch job every 20 s, one
replica kill at 27.5 s), and any run keeps three rules that make its figures readable:

* the warm-up (the first 2 minutes, or the first 20% of a shorter run) is where memory and descriptors find their
  level; growth is measured from its end;
* the quiet tail (the last 10% of the run up to a minute, at least 3 process samples and one grace window) has no
  event, so the end of the run shows the cluster settled, in the state it started in (the scale events end with a
  scale down);
* replica kills come half a scale period after their period (2:15, 4:15, ...), never on a scale event;
* the management kill lands near the middle, a grace window away from every replica kill and off the scale events
  (a scale call in flight when management dies is a failure no client could avoid).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

FULL_RUN_S = 600.0
SCALE_EVERY_S = 30.0
BATCH_EVERY_S = 60.0
REPLICA_KILL_EVERY_S = 120.0
WARMUP_S = 120.0
WARMUP_SHARE = 0.2
GRACE_S = 10.0              # failures this long after a replica kill are the kill's, not the cluster's
MANAGEMENT_GRACE_S = 30.0   # a management replica restarts in ~5-20 s (modelpool.client_core.RETRY_FOR_S)
SAMPLE_EVERY_S = 10.0
BASELINE_SAMPLES = 3        # process samples at each end of the judged span (their median is the figure)
QUIET_TAIL_SHARE = 0.1
QUIET_TAIL_MAX_S = 60.0
BUCKET_S = 60.0
BUCKETS_AT_LEAST = 6        # a short run gets buckets shorter than a minute, so it still shows a series

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}

# what an event does
SCALE_UP, SCALE_DOWN, BATCH, KILL_REPLICA, KILL_MANAGEMENT = ("scale_up", "scale_down", "batch", "kill_replica",
                                                              "kill_management")
#: the model replicas killed in turn (Serve applications ``model:{name}:{version}``, as ``make start`` serves them)
KILL_ROTATION = ("model:iris:1", "model:iris:2", "model:diabetes:1", "model:iris_report:1")


def parse_duration(text: str) -> float:
    """``60s``, ``10m``, ``1.5h``, ``90`` (seconds) -> seconds; ValueError for anything else or under 10 s."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"duration {text!r}: write a number with s, m or h (60s, 10m, 1h)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 10:
        raise ValueError(f"duration {text!r}: at least 10 s (the run needs a warm-up and a quiet tail)")
    return seconds


@dataclass(frozen=True)
class Event:
    at_s: float
    kind: str
    target: str = ""  # the application a replica kill aims at


@dataclass(frozen=True)
class ChaosPlan:
    duration_s: float
    warmup_s: float
    quiet_tail_s: float
    sample_every_s: float
    bucket_s: float
    scale_every_s: float
    batch_every_s: float
    replica_kill_every_s: float
    management_kill: bool = True
    grace_s: float = GRACE_S
    management_grace_s: float = MANAGEMENT_GRACE_S

    @property
    def last_event_s(self) -> float:
        return self.duration_s - self.quiet_tail_s


def plan_for(duration_s: float, *, management_kill: bool = True, grace_s: float = GRACE_S,
             management_grace_s: float = MANAGEMENT_GRACE_S) -> ChaosPlan:
    """The full run's periods, scaled down for a run shorter than 10 minutes (never longer for a longer one)."""
    d = float(duration_s)
    sample_every = min(SAMPLE_EVERY_S, max(1.0, d / 12))
    return ChaosPlan(
        duration_s=d,
        warmup_s=min(WARMUP_S, WARMUP_SHARE * d),
        quiet_tail_s=max(min(QUIET_TAIL_SHARE * d, QUIET_TAIL_MAX_S), BASELINE_SAMPLES * sample_every, grace_s),
        sample_every_s=sample_every,
        bucket_s=min(BUCKET_S, d / BUCKETS_AT_LEAST),
        scale_every_s=min(SCALE_EVERY_S, d / 4),
        batch_every_s=min(BATCH_EVERY_S, d / 3),
        replica_kill_every_s=min(REPLICA_KILL_EVERY_S, d / 3),
        management_kill=management_kill, grace_s=grace_s, management_grace_s=management_grace_s)


def _every(period_s: float, until_s: float) -> list[float]:
    """period, 2*period, ... up to ``until_s`` inclusive (rounded so float steps do not drop the last one)."""
    return [round(k * period_s, 3) for k in range(1, int(math.floor(until_s / period_s + 1e-9)) + 1)]


def scale_times(plan: ChaosPlan) -> list[tuple[float, str]]:
    """Up, down, up, ... ending with a down: the run ends at the scale it started with."""
    times = _every(plan.scale_every_s, plan.last_event_s)
    if len(times) % 2:
        times = times[:-1]
    return [(t, SCALE_UP if i % 2 == 0 else SCALE_DOWN) for i, t in enumerate(times)]


def replica_kill_times(plan: ChaosPlan) -> list[float]:
    """Every kill period, half a scale period late: a kill never meets a scale of the model it may hit."""
    offset = plan.scale_every_s / 2
    return [round(t + offset, 3) for t in _every(plan.replica_kill_every_s, plan.last_event_s - offset)]


def batch_times(plan: ChaosPlan) -> list[float]:
    return _every(plan.batch_every_s, plan.last_event_s)


def management_kill_time(plan: ChaosPlan, step_s: float = 0.5) -> Optional[float]:
    """The time nearest the middle of the run that is after the warm-up, a grace window from every replica
    kill and a quarter scale period from every scale event and batch start; None when the run has no such time."""
    if not plan.management_kill:
        return None
    kills = replica_kill_times(plan)
    others = [t for t, _ in scale_times(plan)] + batch_times(plan)
    lo, hi, middle = plan.warmup_s, plan.last_event_s, plan.duration_s / 2
    candidates = [lo + i * step_s for i in range(int((hi - lo) / step_s) + 1)]
    fitting = [t for t in candidates
               if all(abs(t - k) >= plan.grace_s for k in kills)
               and all(abs(t - s) >= plan.scale_every_s / 4 for s in others)]
    return round(min(fitting, key=lambda t: (abs(t - middle), -t)), 3) if fitting else None


def events(plan: ChaosPlan) -> list[Event]:
    """Every event of the run, in time order (a scale before a batch before a kill at the same second)."""
    found = [Event(t, kind) for t, kind in scale_times(plan)]
    found += [Event(t, BATCH) for t in batch_times(plan)]
    found += [Event(t, KILL_REPLICA, KILL_ROTATION[i % len(KILL_ROTATION)])
              for i, t in enumerate(replica_kill_times(plan))]
    at = management_kill_time(plan)
    if at is not None:
        found.append(Event(at, KILL_MANAGEMENT, "management"))
    order = (SCALE_UP, SCALE_DOWN, BATCH, KILL_REPLICA, KILL_MANAGEMENT)
    return sorted(found, key=lambda e: (e.at_s, order.index(e.kind)))
