"""Prometheus metrics of modelpool, recorded through Ray so they join Serve's on the metrics port.

Ray exports every ``ray.util.metrics`` metric of every worker on the node's metrics export port
(``--metrics-port``), with a ``ray_`` prefix: ``ray_modelpool_requests_total`` and friends appear
beside Serve's own ``ray_serve_*`` series, with no second exporter to run or secure.

Outside a Ray worker (unit tests, a handler run by hand) there is nowhere to export to; the
recorders then do nothing, which keeps the serving code free of "if metrics" branches.

The same once-a-second flush sends each model version's second to the status board (``board_report``,
``status_board``): the page's req/s, p50, p99 and recent errors, with no Prometheus needed.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Optional

from modelpool.deployments.board_report import ERRORS_PER_SECOND, BoardPusher, VersionReport, error_entry

FLUSH_EVERY_S = 1.0
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

#: where a shed call counts in modelpool_requests_total: route "shed" (it never reached a route), status 429
SHED_KEY = ("shed", 429)

_metrics: Optional[dict] = None


def _registry() -> Optional[dict]:
    """The metric objects, created once per process (Ray refuses two metrics of one name with different tags)."""
    global _metrics
    if _metrics is not None:
        return _metrics
    import ray

    if not ray.is_initialized():
        return None
    from ray.util import metrics

    _metrics = {
        "requests": metrics.Counter(
            "modelpool_requests_total", "Model requests answered, by model, version, route and HTTP status.",
            tag_keys=("model", "version", "route", "status")),
        "latency": metrics.Histogram(
            "modelpool_request_latency_ms", "Time from a request reaching its replica to its answer, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "version", "route")),
        "batch_size": metrics.Histogram(
            "modelpool_batch_size", "Requests served by one handler call.",
            boundaries=BATCH_SIZE_BOUNDARIES, tag_keys=("model", "version")),
        # Ray exports a histogram's _sum from bucket midpoints (a batch of 1 counts 0.5), so the exact
        # number of requests batched is a counter of its own: over modelpool_batch_size_count it is the
        # mean batch size, and it divides the summed wait into the mean wait of a request.
        "batched": metrics.Counter(
            "modelpool_batched_requests_total", "Requests served by handler calls (exactly; see modelpool_batch_size).",
            tag_keys=("model", "version")),
        "batch_wait": metrics.Counter(
            "modelpool_batch_wait_ms_total",
            "Time requests waited in a replica's batcher for their handler call, summed, in ms.",
            tag_keys=("model", "version")),
        "queue": metrics.Gauge(
            "modelpool_queue_length", "Most requests waiting in a replica's batcher when a batch started, over the last second.",
            tag_keys=("model", "version", "replica")),
        "replicas": metrics.Gauge(
            "modelpool_replicas", "Running replicas per served model version (dedicated apps).",
            tag_keys=("model", "version")),
        "node_requests": metrics.Counter(
            "modelpool_graph_node_requests_total",
            "Calls of inference-graph nodes, by graph, node, traffic (primary or shadow) and status.",
            tag_keys=("graph", "node", "traffic", "status")),
        "node_latency": metrics.Histogram(
            "modelpool_graph_node_latency_ms", "Time a graph node took, its children included, in ms.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("graph", "node", "traffic")),
        "shed": metrics.Counter(
            "modelpool_shed_requests_total",
            "Requests refused at once because a model's replicas were full (429, or RESOURCE_EXHAUSTED over gRPC), "
            "by the front or a replica's port, by model, version and protocol (rest or grpc); they count in "
            "modelpool_requests_total too, as route \"shed\", status 429.",
            tag_keys=("model", "version", "protocol")),
        "batch_rows": metrics.Counter(
            "modelpool_batch_rows_total", "Rows of batch-scoring jobs, by outcome (scored or failed).",
            tag_keys=("model", "version", "outcome")),
    }
    return _metrics


class ModelMetrics:
    """The recorders of one model version in one replica.

    The request path only counts into local dicts (about a microsecond); a background thread hands
    the counts to Ray once a second. Recording straight into Ray costs about 13 us per request in a
    replica (measured in an actor), a tenth of a small model's whole call. The totals are exact:
    counters are added up, batch sizes are integers, latencies are kept one by one until the flush.
    """

    def __init__(self, model: str, version: str, replica: str = "") -> None:
        self._registry = _registry()
        self._model_tags = {"model": model, "version": version}
        self._queue_tags = {**self._model_tags, "replica": replica}
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._latencies: dict[str, list[float]] = {}
        self._batch_sizes: dict[int, int] = {}
        self._batched = 0
        self._batch_wait_ms = 0.0
        self._most_waiting: Optional[int] = None
        self._errors: list[dict] = []
        self._shed: dict[str, int] = {}
        self._report = VersionReport(model, version, replica)
        if self._registry is not None:
            _flusher().add(self)

    def request(self, route: str, status: int, latency_ms: float) -> None:
        if self._registry is None:
            return
        key = (route, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            latencies = self._latencies.get(route)
            if latencies is None:
                latencies = self._latencies[route] = []
            latencies.append(latency_ms)

    def shed(self, protocol: str) -> None:
        """One call refused by the port's load shedding (``protocol``: rest or grpc): no latency, it took none."""
        if self._registry is None:
            return
        with self._lock:
            self._shed[protocol] = self._shed.get(protocol, 0) + 1
            self._requests[SHED_KEY] = self._requests.get(SHED_KEY, 0) + 1

    def error(self, status: int, body: bytes) -> None:
        """An answer of ``status`` >= 400 and its body, for the status page's recent errors. A 404 is not listed
        there (any scan of wrong URLs would push the real errors out); it still counts in the statuses."""
        if self._registry is None or status == 404:
            return
        entry = error_entry(status, body)
        with self._lock:
            if len(self._errors) < ERRORS_PER_SECOND:
                self._errors.append(entry)

    def batch(self, size: int, waiting: int, waited_s: float = 0.0) -> None:
        """One handler call of ``size`` requests, which waited ``waited_s`` in the batcher in all."""
        if self._registry is None:
            return
        with self._lock:
            self._batch_sizes[size] = self._batch_sizes.get(size, 0) + 1
            self._batched += size
            self._batch_wait_ms += waited_s * 1000
            if self._most_waiting is None or waiting > self._most_waiting:
                self._most_waiting = waiting

    def flush(self) -> Optional[dict]:
        """Hand what was counted since the last flush to Ray (the queue gauge: the longest queue seen); return the
        second's summary for the status board (None: nothing to tell it)."""
        with self._lock:
            requests, self._requests = self._requests, {}
            latencies, self._latencies = self._latencies, {}
            sizes, self._batch_sizes = self._batch_sizes, {}
            batched, self._batched = self._batched, 0
            wait_ms, self._batch_wait_ms = self._batch_wait_ms, 0.0
            most_waiting, self._most_waiting = self._most_waiting, None
            errors, self._errors = self._errors, []
            shed, self._shed = self._shed, {}
        summary = self._report.summary(requests, latencies, errors)
        registry = self._registry
        for (route, status), count in requests.items():
            registry["requests"].inc(count, {**self._model_tags, "route": route, "status": str(status)})
        for route, values in latencies.items():
            tags = {**self._model_tags, "route": route}
            for value in values:
                registry["latency"].observe(value, tags)
        for size, count in sizes.items():
            for _ in range(count):
                registry["batch_size"].observe(size, self._model_tags)
        for protocol, count in shed.items():
            registry["shed"].inc(count, {**self._model_tags, "protocol": protocol})
        if batched:  # Ray's counters refuse 0
            registry["batched"].inc(batched, self._model_tags)
        if wait_ms > 0:
            registry["batch_wait"].inc(wait_ms, self._model_tags)
        # set on every flush (0 = no batch waited on anyone): Ray drops a gauge that is not re-set for a while
        registry["queue"].set(most_waiting or 0, self._queue_tags)
        return summary


class GraphMetrics:
    """The node recorders of one graph in one replica: counted locally, handed to Ray once a second (as
    :class:`ModelMetrics`). ``traffic`` is ``primary`` for what the client's answer came from, ``shadow`` for
    the copies a SHADOW router sends, whose errors and latency are seen here and nowhere else."""

    def __init__(self, graph: str) -> None:
        self._registry = _registry()
        self.graph = graph
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latencies: dict[tuple[str, str], list[float]] = {}
        self.counts: dict[tuple[str, str, int], int] = {}  # every call since the replica started (tests, status)
        if self._registry is not None:
            _flusher().add(self)

    def node(self, node: str, traffic: str, status: int, latency_ms: float) -> None:
        key = (node, traffic, status)
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            if self._registry is None:
                return
            self._requests[key] = self._requests.get(key, 0) + 1
            self._latencies.setdefault((node, traffic), []).append(latency_ms)

    def flush(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, {}
            latencies, self._latencies = self._latencies, {}
        registry = self._registry
        for (node, traffic, status), count in requests.items():
            registry["node_requests"].inc(count, {"graph": self.graph, "node": node, "traffic": traffic,
                                                  "status": str(status)})
        for (node, traffic), values in latencies.items():
            tags = {"graph": self.graph, "node": node, "traffic": traffic}
            for value in values:
                registry["node_latency"].observe(value, tags)


class _Flusher:
    """One thread per process flushing every live ModelMetrics (and GraphMetrics) once a second, and sending the
    model versions' summaries to the status board in one call."""

    def __init__(self) -> None:
        self._metrics: "weakref.WeakSet" = weakref.WeakSet()
        self._board = BoardPusher()
        threading.Thread(target=self._run, name="modelpool-metrics", daemon=True).start()

    def add(self, metrics: "ModelMetrics | GraphMetrics") -> None:
        self._metrics.add(metrics)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            summaries = []
            for metrics in list(self._metrics):
                try:
                    summary = metrics.flush()
                except Exception:  # noqa: BLE001 - metrics must never take a replica down
                    continue
                if summary is not None:
                    summaries.append(summary)
            self._board.push(summaries)  # never raises


_FLUSHER: Optional[_Flusher] = None
_FLUSHER_LOCK = threading.Lock()


def _flusher() -> _Flusher:
    global _FLUSHER
    with _FLUSHER_LOCK:
        if _FLUSHER is None:
            _FLUSHER = _Flusher()
        return _FLUSHER


def record_replicas(counts: dict[tuple[str, str], int]) -> None:
    """Management's view of running replicas per (model, version); absent versions drop to 0."""
    registry = _registry()
    if registry is None:
        return
    for (model, version), count in counts.items():
        registry["replicas"].set(count, {"model": model, "version": version})


def record_front_shed(model: str, version: str, protocol: str, count: int) -> None:
    """Calls the front refused for a model version (its replicas full), as a replica counts its own refusals."""
    registry = _registry()
    if registry is None or count <= 0:
        return
    tags = {"model": model, "version": version}
    registry["shed"].inc(count, {**tags, "protocol": protocol})
    route, status = SHED_KEY
    registry["requests"].inc(count, {**tags, "route": route, "status": str(status)})


def record_batch_rows(model: str, version: str, scored: int, failed: int) -> None:
    registry = _registry()
    if registry is None:
        return
    tags = {"model": model, "version": version}
    if scored:
        registry["batch_rows"].inc(scored, {**tags, "outcome": "scored"})
    if failed:
        registry["batch_rows"].inc(failed, {**tags, "outcome": "failed"})
