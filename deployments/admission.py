"""Load shedding on a replica's own port: a bounded queue, and an immediate 429 beyond it.

Serve's router does this for the requests it carries (``max_ongoing_requests`` per replica, then
``max_queued_requests`` waiting at each caller, then a 429 with ``Retry-After`` from the deployment's
``backpressure_config``). The front sends a model's V2 calls straight to its replicas' ports, past that
router, so the port keeps the same two limits itself:

- at most ``max_ongoing`` calls are inside the model's entry point (decoding, batching, computing);
- at most ``max_queued`` more wait, in arrival order, for one of them to finish (-1: no limit, Serve's
  default; 0: none wait);
- any call beyond that is refused before its body is read, at once: a queue that grows without bound
  only turns an overload into timeouts for everyone, while a refusal with ``Retry-After`` tells a
  client to come back and keeps the accepted calls' latency.

Limits change live (``configure``): a raised limit lets waiting calls in at once, a lowered one takes
effect as calls finish, never by refusing a call already waiting.
"""
from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

#: What a refused call's ``Retry-After`` says: one second, the shortest the header can say, and about the
#: time Serve's autoscaler needs to notice the load.
RETRY_AFTER_S = 1
#: The field a refusal names: the limit a user raises (at register or scale), besides adding workers.
LIMIT_FIELD = "max_queued_requests"


@dataclass(frozen=True)
class Refusal:
    """A refused call's answer, made once per configuration (a refusal must cost next to nothing)."""

    message: str
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def of(cls, message: str, headers: Mapping[str, str] = ()) -> "Refusal":
        body = json.dumps({"error": message, "field": LIMIT_FIELD}).encode()
        return cls(message, body, (
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            retry_after_header(), *((k.encode(), v.encode()) for k, v in dict(headers).items())))


def refusal_message(model: str, version: str, max_ongoing: int, max_queued: int) -> str:
    """What a refused client reads: which model, which limits were reached, and the two ways out."""
    waiting = "none may wait" if max_queued == 0 else f"{max_queued} are waiting"
    return (f"model '{model}' version '{version}' is at its limit on this replica: {max_ongoing} requests are "
            f"running and {waiting} ({LIMIT_FIELD}); retry after the Retry-After seconds, or add workers "
            f"(scale max_worker) or raise {LIMIT_FIELD}")


class Admission:
    """The gate of one replica port, shared by its REST and gRPC calls (one event loop: no locks)."""

    def __init__(self, max_ongoing: int, max_queued: int = -1, refusal: Optional[Refusal] = None,
                 on_refuse: Callable[[str], None] = lambda route: None) -> None:
        self.max_ongoing = max(1, max_ongoing)
        self.max_queued = max_queued
        self.ongoing = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self.shed = 0  # calls refused since the replica started
        self.refusal = refusal or Refusal.of("this replica is at its limit; retry after the Retry-After seconds")
        self.on_refuse = on_refuse  # the replica counts each refusal in its metrics (route: "rest" or "grpc")

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def configure(self, max_ongoing: int, max_queued: int, refusal: Optional[Refusal] = None) -> None:
        """New limits from the model's config; waiting calls that now fit go in."""
        self.max_ongoing, self.max_queued = max(1, max_ongoing), max_queued
        if refusal is not None:
            self.refusal = refusal
        self._admit_waiting()

    def refused(self, route: str) -> Refusal:
        """Count one refusal (``route``: "rest" or "grpc") and return the answer to send."""
        self.on_refuse(route)
        return self.refusal

    def full(self) -> bool:
        """True when a call arriving now would be refused."""
        if self.ongoing < self.max_ongoing and not self._waiting:
            return False
        return 0 <= self.max_queued <= len(self._waiting)

    async def enter(self) -> bool:
        """Take a place for one call: True once it may run (maybe after waiting), False when refused at once.

        A True must be paired with one :meth:`leave`. A caller cancelled while waiting (its client went away)
        gives its place up; one cancelled just after being let in passes its place on.
        """
        if self.ongoing < self.max_ongoing and not self._waiting:
            self.ongoing += 1
            return True
        if 0 <= self.max_queued <= len(self._waiting):
            self.shed += 1
            return False
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # it had been let in: the place goes to the next one waiting
            else:
                self._remove(turn)
            raise
        return True

    def leave(self) -> None:
        """One call finished: its place goes to the longest-waiting call, if any."""
        self.ongoing -= 1
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self._waiting and self.ongoing < self.max_ongoing:
            turn = self._waiting.popleft()
            if not turn.done():
                self.ongoing += 1
                turn.set_result(None)

    def _remove(self, turn: asyncio.Future) -> None:
        try:
            self._waiting.remove(turn)
        except ValueError:
            pass


def retry_after_header(seconds: Optional[int] = None) -> tuple[bytes, bytes]:
    """The ``Retry-After`` header of a refusal (integer seconds, RFC 9110's ``delay-seconds``)."""
    return b"retry-after", str(RETRY_AFTER_S if seconds is None else max(0, int(seconds))).encode()
