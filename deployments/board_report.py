"""A replica's side of the status board: each second's summary of a model version, and sending them.

The request path only counts into ``ModelMetrics``' dicts, as before: the summary is built on the
metrics thread, once a second, from the same counts and latencies the Prometheus export reads (the
latencies become a :mod:`latency_histogram`), and :class:`BoardPusher` sends every model of the process
in one fire-and-forget actor call. Nothing here may slow or fail a request: the board is looked up lazily
(again at most every :data:`LOOKUP_EVERY_S` while it does not exist), a call still running holds the next
seconds back instead of queueing more, and every failure is swallowed.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Optional

from modelpool.deployments import latency_histogram

#: A model that has answered before says it is alive at least this often, even when idle.
HEARTBEAT_S = 10.0
LOOKUP_EVERY_S = 10.0
MESSAGE_CHARS = 300
#: Errors of one model version kept per second (a burst of failures must not flood the board).
ERRORS_PER_SECOND = 20
#: Summaries older than this are not worth sending any more (the board shows one minute).
STALE_AFTER_S = 60.0


def error_entry(status: int, body: bytes, now: Optional[float] = None) -> dict[str, Any]:
    """One error as the page lists it: when, the status, the answer's own message (``{"error": ...}``, cut to
    :data:`MESSAGE_CHARS`) and the request id, so it can be found in the replica's log."""
    message: Any = None
    try:
        parsed = json.loads(body) if body else None
        message = parsed.get("error") if isinstance(parsed, dict) else None
    except (ValueError, TypeError, RecursionError):
        pass
    if not isinstance(message, str):
        message = bytes(body or b"").decode("utf-8", "replace")
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS - 1] + "…"
    return {"time": time.time() if now is None else now, "status": int(status), "message": message,
            "requestId": request_id()}


def request_id() -> str:
    """The request id Serve's context holds for this call (the REST entry sets it on the replica's own port too)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:  # noqa: BLE001 - outside a replica
        return ""


class VersionReport:
    """What one model version in one replica tells the board each second; a heartbeat when it has nothing."""

    def __init__(self, model: str, version: str, replica: str) -> None:
        self.model, self.version, self.replica = model, version, replica
        self._reported_at: Optional[float] = None  # monotonic; None until the first answer was reported

    def summary(self, requests: Mapping[tuple[str, int], int], latencies: Mapping[str, list[float]],
                errors: list[dict], now: Optional[float] = None, monotonic: Optional[float] = None) -> Optional[dict]:
        """The second's summary from ``ModelMetrics``' counts ((route, status) -> n, route -> latencies), or a
        heartbeat, or None (nothing to say: never answered, or said so less than :data:`HEARTBEAT_S` ago)."""
        monotonic = time.monotonic() if monotonic is None else monotonic
        statuses: dict[int, int] = {}
        for (_, status), count in requests.items():
            statuses[status] = statuses.get(status, 0) + count
        if not statuses and not errors:
            if self._reported_at is None or monotonic - self._reported_at < HEARTBEAT_S:
                return None
        self._reported_at = monotonic
        counts: latency_histogram.Histogram = {}
        for values in latencies.values():
            latency_histogram.add(counts, latency_histogram.histogram(values))
        return {"model": self.model, "version": self.version, "replica": self.replica,
                "second": int(time.time() if now is None else now), "statuses": statuses, "histogram": counts,
                "errors": errors}


def _settled(ref: Any) -> Optional[bool]:
    """None while an actor call runs; True once it ended, False when the actor is gone (look it up again)."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    ready, _ = ray.wait([ref], timeout=0)
    if not ready:
        return None
    try:
        ray.get(ref, timeout=0)  # fetched, so Ray does not log the error of a call nobody read
    except ActorUnavailableError:  # restarting: the same handle works once it is back
        return True
    except RayActorError:
        return False
    except Exception:  # noqa: BLE001 - any other failure of one push: the next second tries again
        return True
    return True


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return ""


def _find_board() -> Optional[Any]:
    from modelpool.deployments.status_board import find_board

    return find_board()


class BoardPusher:
    """Sends a process's summaries to the board: one call a second at most, never raising, never blocking.

    ``lookup`` finds the board (None when there is none), ``settled`` tells how a sent call ended (see
    :func:`_settled`); both are Ray's unless a test gives its own.
    """

    def __init__(self, lookup: Callable[[], Optional[Any]] = _find_board,
                 settled: Callable[[Any], Optional[bool]] = _settled,
                 node: Callable[[], str] = _node_id, clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup, self._settled, self._node, self._clock = lookup, settled, node, clock
        self._board: Any = None
        self._looked_at: Optional[float] = None
        self._node_id: Optional[str] = None
        self._in_flight: Any = None
        self._pending: list[dict] = []

    def push(self, summaries: list[dict]) -> None:
        try:
            self._push(summaries)
        except Exception:  # noqa: BLE001 - the status page must never cost a replica anything
            self._in_flight, self._board = None, None  # found again, at most every LOOKUP_EVERY_S

    def _push(self, summaries: list[dict]) -> None:
        self._pending.extend(summaries)
        if not self._pending:
            return
        oldest = time.time() - STALE_AFTER_S
        self._pending = [summary for summary in self._pending if summary["second"] >= oldest]
        if self._in_flight is not None:
            outcome = self._settled(self._in_flight)
            if outcome is None:
                return  # the last call still runs: these seconds go with the next one
            self._in_flight = None
            if outcome is False:
                self._board = None
        board = self._find()
        if board is None or not self._pending:
            return
        if self._node_id is None:
            self._node_id = self._node()
        self._in_flight = board.push.remote(self._node_id, self._pending)
        self._pending = []

    def _find(self) -> Optional[Any]:
        if self._board is not None:
            return self._board
        now = self._clock()
        if self._looked_at is not None and now - self._looked_at < LOOKUP_EVERY_S:
            return None
        self._looked_at = now
        self._board = self._lookup()
        return self._board
