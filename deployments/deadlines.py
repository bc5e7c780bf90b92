"""Deadlines inside a request's task: one sweeper per event loop instead of a timer per request.

Two bound each request: ``--body-timeout-s`` (a client that sends its headers and then trickles the
body would otherwise hold a replica slot as long as it likes) and the model's ``response_timeout``
(the whole call; Serve's own request timeout is switched off by any client that sends
``x-request-timeout-seconds: 0``). ``asyncio.timeout`` would arm and cancel a timer for each (about
5-7 us here, a few percent of a small model's whole request), so instead each ``within`` registers
its deadline on its task (about 1 us) and one task per event loop wakes every ``SWEEP_EVERY_S``
and cancels the tasks with a deadline passed: a deadline is kept to within that.

Deadlines nest (the body read runs inside the call): each knows whether it was its own that
passed, so the inner one raises ``TimeoutError`` only for itself and lets an outer one's
cancellation through to it.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from typing import Awaitable, TypeVar

T = TypeVar("T")
SWEEP_EVERY_S = 0.25


class _Deadline:
    __slots__ = ("at", "passed")

    def __init__(self, at: float) -> None:
        self.at = at
        self.passed = False


class _LoopDeadlines:
    """The deadlines in force on one event loop; only that loop's sweeper cancels its tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.by_task: dict[asyncio.Task, list[_Deadline]] = {}
        self.sweeper = loop.create_task(self._sweep())
        self.sweeper.add_done_callback(lambda _: _loops.pop(loop, None))  # a closed loop is not kept alive

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            for task, deadlines in list(self.by_task.items()):
                if any(d.passed for d in deadlines):
                    continue  # already cancelled once: its owner is unwinding
                due = next((d for d in deadlines if d.at <= now), None)
                if due is not None:
                    due.passed = True
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
    deadline = _Deadline(time.monotonic() + timeout_s)
    state.by_task.setdefault(task, []).append(deadline)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if not deadline.passed:
            raise  # cancelled by someone else, or by an outer deadline: not ours to swallow
        raise asyncio.TimeoutError from None
    finally:
        deadlines = state.by_task.get(task, [])
        if deadline in deadlines:
            deadlines.remove(deadline)
        if not deadlines:
            state.by_task.pop(task, None)
        if deadline.passed and hasattr(task, "uncancel"):
            task.uncancel()  # Python 3.11+: so later awaits and deadlines of the task work
