"""A replica's own port (``ReplicaPort`` with modelpool's REST entry) serving a handler on an event loop of its own.

The front's tests and ``bench_front_shedding`` put a real front before real ports without Ray: the port runs on a
thread's loop, as it runs on a Serve replica's, and the caller's thread stays free to drive the load.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from modelpool.deployments.replica_port import ReplicaPort
from modelpool.deployments.rest_entry import RestApp


class PortOnItsLoop:
    """``answer`` served below ``root_path`` for the app ``app`` on 127.0.0.1; ``address`` is where."""

    def __init__(self, answer: Callable[[Request], Awaitable[Response]], root_path: str, app: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = ReplicaPort({}, {}, rest=RestApp(answer, root_path, app, log_context=lambda *_: None))
        self.address = asyncio.run_coroutine_threadsafe(self.port.start("127.0.0.1"), self.loop).result(10)

    def close(self, drain_s: float = 1.0) -> None:
        """Drained first: a call still running ends before the port closes."""
        asyncio.run_coroutine_threadsafe(self.port.stop(drain_s), self.loop).result(10 + drain_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
