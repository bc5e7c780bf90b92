"""A value fetched at most once per ``ttl_s``: for controller round trips that quick calls repeat.

Serve's status overviews and the controller's instance details cost milliseconds each and return
facts that change on the scale of seconds (replicas starting, apps deploying), while health probes
and describe calls may come many times a second. Callers that must see a change at once (a
synchronous scale waiting for its replicas) call the function itself, not the cache.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class TtlCache(Generic[T]):
    def __init__(self, fetch: Callable[[], T], ttl_s: float = 1.0) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: Optional[T] = None

    def get(self) -> T:
        with self._lock:  # one fetch serves every caller that arrives meanwhile
            now = time.monotonic()
            if self._value is None or now - self._at > self.ttl_s:
                self._value = self._fetch()
                self._at = time.monotonic()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
