"""Which child of a SPLIT router a request goes to: by weight, and by routing key when there is one.

A canary (``iris`` v1 90%, v2 10%) must hold its proportions over many requests, and a caller that sends
a routing key (a header naming a user or a session) must see the same version every time, across graph
replicas and restarts. So a key is hashed (BLAKE2b, not Python's ``hash``, which changes per process) to
a point in [0, 1) and the weights cut that interval; without a key the point is random. Changing the
weights moves only the keys whose point crosses a boundary.

Pure and tiny: the graph's replica calls :func:`pick` per request (tests/unit/test_traffic.py).
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from typing import Callable, Optional, Sequence

_SCALE = float(1 << 64)


def key_point(key: str) -> float:
    """A stable point in [0, 1) for a routing key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / _SCALE


class Split:
    """Weights (>= 0, adding up to more than 0) cut [0, 1) into one interval per child."""

    def __init__(self, weights: Sequence[float]) -> None:
        total = float(sum(weights))
        if total <= 0 or any(weight < 0 for weight in weights):
            raise ValueError(f"weights must be >= 0 and add up to more than 0: {list(weights)}")
        self.weights = list(weights)
        self.bounds = [edge / total for edge in itertools.accumulate(weights)][:-1]

    def pick(self, key: Optional[str] = None, draw: Callable[[], float] = random.random) -> int:
        """The child's index for this request: the key's when given, else a random draw."""
        # bisect_right: a point on an edge goes right, so an empty interval (equal edges) is never chosen
        return bisect.bisect_right(self.bounds, key_point(key) if key else draw())
