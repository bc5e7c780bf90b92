"""The status board: a small named Ray actor that keeps the last minute of every replica's own counters.

The status page (``GET /ui/state``) shows req/s, p50 and p99 over the last minute and the recent errors of
every model version without Prometheus: each replica process sends the board one summary per model per
second (``board_report``), and the board adds them up when management asks. Per (model, version, replica)
it keeps the last :data:`WINDOW_S` one-second summaries (answers by status, a latency histogram), the
replica's node and when it last reported; across all of them, the last :data:`ERRORS_KEPT` errors.

Why an actor and not the metrics port: Ray exports metrics for Prometheus to scrape and keeps no history
itself, and the page must work on a cluster with no Prometheus. One actor holds a few kB per replica.
It lives on the head node (the one node whose loss ends the cluster anyway, as the batch scheduler does),
is detached so it outlives the management replica that creates it, and is restarted by Ray if its
process dies (the minute it knew is lost; the next seconds refill it).

:class:`BoardState` is the arithmetic, pure and unit-tested; :class:`StatusBoard` is the actor around it.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import ray

from modelpool.cluster.runtime import NAMESPACE
from modelpool.deployments import latency_histogram

BOARD_NAME = "status-board"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # every Ray head has 1 of it
WINDOW_S = 60
ERRORS_KEPT = 50
#: A replica silent this long (they report at least every 10 s while alive) is forgotten.
FORGET_AFTER_S = 300.0
QUANTILES = (("p50Ms", 0.5), ("p99Ms", 0.99))


@dataclass
class _ReplicaSeries:
    """The last minute of one model version in one replica."""

    node: str
    first_seen: float
    last_report: float
    seconds: deque = field(default_factory=lambda: deque(maxlen=WINDOW_S))  # (second, statuses, histogram)


class BoardState:
    """What the board knows, and the sums the page reads. Times are unix seconds.

    A summary, as a replica sends it (``board_report.VersionReport.summary``)::

        {"model": "iris", "version": "1", "replica": "abc", "second": 1767000000,
         "statuses": {200: 950, 500: 2}, "histogram": {30: 900, 31: 52},
         "errors": [{"time": ..., "status": 500, "message": "...", "requestId": "..."}]}

    An empty ``statuses`` is a heartbeat: the replica is alive and had nothing to report.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._series: dict[tuple[str, str, str], _ReplicaSeries] = {}
        self._errors: deque = deque(maxlen=ERRORS_KEPT)

    def push(self, node: str, summaries: Iterable[dict]) -> None:
        now = self.clock()
        for summary in summaries:
            key = (str(summary["model"]), str(summary["version"]), str(summary["replica"]))
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _ReplicaSeries(node=node, first_seen=now, last_report=now)
            series.node, series.last_report = node, now
            statuses = summary.get("statuses") or {}
            if statuses:
                series.seconds.append((int(summary["second"]), dict(statuses), dict(summary.get("histogram") or {})))
            for error in summary.get("errors") or ():
                self._errors.append({"time": error.get("time"), "model": key[0], "version": key[1],
                                     "replicaId": key[2], "status": error.get("status"),
                                     "message": error.get("message"), "requestId": error.get("requestId")})
        self._forget(now)

    def _forget(self, now: float) -> None:
        for key in [key for key, series in self._series.items() if now - series.last_report > FORGET_AFTER_S]:
            del self._series[key]

    def snapshot(self) -> dict[str, Any]:
        """Per model version: requests and 5xx errors over the window, their rates, p50 and p99; per replica: its
        node and last report; the recent errors, newest first.

        The window is the last :data:`WINDOW_S` seconds, or less while the version's first replica reported for
        less time than that: a replica that began answering 10 s ago at 100 req/s shows 100 req/s, not 17.
        """
        now = self.clock()
        self._forget(now)
        since = now - WINDOW_S
        totals: dict[tuple[str, str], dict] = {}
        replicas = []
        for (model, version, replica), series in sorted(self._series.items()):
            total = totals.setdefault((model, version), {"requests": 0, "errors": 0, "histogram": {},
                                                         "first_seen": series.first_seen})
            total["first_seen"] = min(total["first_seen"], series.first_seen)
            for second, statuses, counts in series.seconds:
                if second <= since:
                    continue
                for status, count in statuses.items():
                    total["requests"] += count
                    if int(status) >= 500:
                        total["errors"] += count
                latency_histogram.add(total["histogram"], counts)
            replicas.append({"model": model, "version": version, "replicaId": replica, "nodeId": series.node,
                             "lastReport": series.last_report})
        stats = [stats_entry(model, version, total, now) for (model, version), total in sorted(totals.items())]
        return {"generatedAt": now, "stats": stats, "replicas": replicas, "errors": list(reversed(self._errors))}


def stats_entry(model: str, version: str, total: dict, now: float) -> dict[str, Any]:
    """One version's figures over its window (see :meth:`BoardState.snapshot`)."""
    window = min(float(WINDOW_S), max(1.0, now - total["first_seen"]))
    entry: dict[str, Any] = {"model": model, "version": version, "requests": total["requests"],
                             "errors": total["errors"],
                             "requestsPerSecond": round(total["requests"] / window, 3),
                             "errorsPerSecond": round(total["errors"] / window, 3),
                             "windowS": round(window, 1)}
    for key, q in QUANTILES:
        value = latency_histogram.quantile(total["histogram"], q)
        entry[key] = round(value, 3) if value is not None else None
    return entry


@ray.remote(num_cpus=0, max_restarts=-1)
class StatusBoard:
    """The actor: one per cluster, named :data:`BOARD_NAME` in modelpool's namespace. Its calls are short and
    run one at a time, so the state needs no lock."""

    def __init__(self) -> None:
        self.state = BoardState()

    # Every replica pushes once a second and the page polls: Ray would keep an event of each call in the GCS (up to
    # 100,000 tasks), whose memory grew 12% in a 10-minute soak. Serve keeps its own replicas' calls out the same way.
    @ray.method(enable_task_events=False)
    def push(self, node: str, summaries: list[dict]) -> None:
        self.state.push(node, summaries)

    @ray.method(enable_task_events=False)
    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()


def create_board() -> Any:
    """The cluster's board, started if it is not running (idempotent: every management replica calls it)."""
    return StatusBoard.options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                               resources={HEAD_NODE_RESOURCE: 0.001}).remote()


def find_board() -> Optional[Any]:
    """The running board's handle, or None when there is none (or no Ray in this process)."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
    except ValueError:  # no actor of that name
        return None
