"""Server settings a model replica applies itself (Seldon's Python-server table, mapped onto Serve).

Management sends these in ``user_config["serving"]``, so changing one reaches running replicas
through ``reconfigure`` without a restart. The settings Serve applies on its own (threads ->
``max_ongoing_requests``, log level and access log -> ``logging_config``, keep-alive -> HTTP
options) never reach this module.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

from modelpool.cluster.settings import DEFAULT_BODY_TIMEOUT_S


@dataclass(frozen=True)
class ServingOptions:
    """What a replica does differently under ``--single-threaded``, ``--debug``, ``--max-requests``..."""

    single_threaded: bool = False
    debug: bool = False
    payload_passthrough: bool = False
    max_requests: int = 0
    max_requests_jitter: int = 0
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    #: SHA-256 digests of the tokens model routes accept; empty: model routes are open (the default)
    inference_token_sha256: tuple[str, ...] = ()
    #: open the replica's own gRPC port and register it with the gRPC front (on when gRPC is)
    replica_port: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ServingOptions":
        """Unknown keys are ignored: a newer management may send settings an older replica lacks."""
        return cls(
            single_threaded=bool(config.get("single_threaded", False)),
            debug=bool(config.get("debug", False)),
            payload_passthrough=bool(config.get("payload_passthrough", False)),
            max_requests=max(0, int(config.get("max_requests", 0))),
            max_requests_jitter=max(0, int(config.get("max_requests_jitter", 0))),
            body_timeout_s=float(config.get("body_timeout_s", DEFAULT_BODY_TIMEOUT_S)),
            inference_token_sha256=tuple(str(d) for d in config.get("inference_token_sha256", ())),
            replica_port=bool(config.get("replica_port", False)),
        )

    @classmethod
    def live(cls, user_config: Mapping[str, Any], max_body_bytes: int) -> tuple["ServingOptions", int]:
        """The server settings and the body limit from a deployment's ``user_config``, as management writes them
        for every deployment that reads request bodies (model replicas, the generic pool, the protocol fronts);
        ``max_body_bytes`` is kept when the config names none."""
        return (cls.from_config(user_config.get("serving", {})),
                int(user_config.get("max_body_bytes", max_body_bytes)))

    def batch_limits(self, max_batch_size: int, max_delay_s: float) -> tuple[int, float]:
        """Single-threaded models see one request per call and nobody waits for company."""
        return (1, 0.0) if self.single_threaded else (max_batch_size, max_delay_s)

    def recycle_after(self, rng: random.Random) -> int:
        """This replica's request budget (0 = unlimited); jitter keeps replicas from recycling together."""
        if self.max_requests <= 0:
            return 0
        return self.max_requests + (rng.randint(0, self.max_requests_jitter) if self.max_requests_jitter else 0)


class RequestBudget:
    """Counts answered requests against ``--max-requests``; Serve's health check does the recycling.

    When the budget is spent, ``check_health`` fails, so Serve drains the replica (requests in flight
    finish) and starts a fresh one: the same effect as gunicorn's ``max_requests`` for a process
    that leaks memory, with Serve's own replacement machinery.
    """

    def __init__(self) -> None:
        self._rng = random.Random()
        self.limit = 0
        self.answered = 0
        self._options: ServingOptions | None = None

    def configure(self, options: ServingOptions) -> None:
        same = self._options is not None and (options.max_requests, options.max_requests_jitter) == (
            self._options.max_requests, self._options.max_requests_jitter)
        self._options = options
        if not same:
            self.limit = options.recycle_after(self._rng)

    def count(self) -> None:
        self.answered += 1

    @property
    def spent(self) -> bool:
        return self.limit > 0 and self.answered >= self.limit

    def check(self) -> None:
        if self.spent:
            raise RuntimeError(f"recycling this replica: it answered {self.answered} requests "
                               f"(budget {self.limit}, from --max-requests and --max-requests-jitter)")
