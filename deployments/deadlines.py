"""Deadlines for reading request bodies: one sweeper per event loop instead of a timer per request.

A client that sends its headers and then trickles the body (or nothing) holds a replica slot for
as long as it likes; ``--body-timeout-s`` bounds that. ``asyncio.timeout`` would arm and cancel a
timer for every request (about 7 us here, a few percent of a small model's whole request), so
instead each read registers its task and deadline (about 1 us) and one task per event loop wakes
every ``SWEEP_EVERY_S`` and cancels the reads that are overdue: a deadline is kept to within that.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from typing import Awaitable, TypeVar

T = TypeVar("T")
SWEEP_EVERY_S = 0.25


class _LoopDeadlines:
    """The reads in progress on one event loop; only that loop's sweeper touches its tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.deadlines: dict[asyncio.Task, float] = {}
        self.expired: set[asyncio.Task] = set()
        self.sweeper = loop.create_task(self._sweep())
        self.sweeper.add_done_callback(lambda _: _loops.pop(loop, None))  # a closed loop is not kept alive

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            for task, deadline in list(self.deadlines.items()):
                if deadline <= now and task not in self.expired:
                    self.expired.add(task)
                    task.cancel()


_loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDeadlines]" = weakref.WeakKeyDictionary()


async def within(timeout_s: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` in the current task; ``asyncio.TimeoutError`` once ``timeout_s`` has passed."""
    task = asyncio.current_task()
    if task is None:  # not inside a task (nothing to cancel): no deadline rather than no answer
        return await awaitable
    loop = task.get_loop()
    state = _loops.get(loop)
    if state is None or state.sweeper.done():
        state = _loops[loop] = _LoopDeadlines(loop)
    state.deadlines[task] = time.monotonic() + timeout_s
    try:
        return await awaitable
    except asyncio.CancelledError:
        if task not in state.expired:
            raise  # cancelled by someone else: not ours to swallow
        raise asyncio.TimeoutError from None
    finally:
        state.deadlines.pop(task, None)
        if task in state.expired:  # our cancellation is handled here (even if the read swallowed it)
            state.expired.discard(task)
            if hasattr(task, "uncancel"):  # Python 3.11+: so later awaits and timeouts of the task work
                task.uncancel()
