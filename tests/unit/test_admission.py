"""A replica port's gate: who runs, who waits in order, who is refused at once, and live limit changes."""
from __future__ import annotations

import asyncio

import pytest

from modelpool.deployments.admission import Admission, retry_after_header


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_calls_run_up_to_the_limit_then_wait_then_are_refused():
    async def scenario():
        gate = Admission(max_ongoing=2, max_queued=1)
        assert await gate.enter() and await gate.enter()
        waiting = asyncio.ensure_future(gate.enter())
        await _settle()
        assert not waiting.done() and gate.queued == 1 and gate.full()
        assert await gate.enter() is False, "the queue is full: refused at once, not queued"
        assert gate.shed == 1
        gate.leave()
        assert await waiting is True and gate.ongoing == 2 and gate.queued == 0

    asyncio.run(scenario())


def test_waiting_calls_go_in_in_arrival_order():
    async def scenario():
        gate = Admission(max_ongoing=1, max_queued=-1)
        await gate.enter()
        order: list[int] = []

        async def call(n: int) -> None:
            await gate.enter()
            order.append(n)

        tasks = [asyncio.ensure_future(call(n)) for n in range(5)]
        await _settle()
        assert gate.queued == 5, "-1: no limit, nobody refused"
        for _ in range(5):
            gate.leave()
            await _settle()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_no_queue_refuses_the_first_call_past_the_limit():
    async def scenario():
        gate = Admission(max_ongoing=1, max_queued=0)
        assert await gate.enter()
        return await gate.enter(), gate.shed

    assert asyncio.run(scenario()) == (False, 1)


def test_a_cancelled_waiter_gives_its_place_up():
    async def scenario():
        gate = Admission(max_ongoing=1, max_queued=1)
        await gate.enter()
        first = asyncio.ensure_future(gate.enter())
        await _settle()
        first.cancel()
        await _settle()
        assert gate.queued == 0, "the client went away: its place is free"
        second = asyncio.ensure_future(gate.enter())
        await _settle()
        gate.leave()
        assert await second is True and gate.ongoing == 1

    asyncio.run(scenario())


def test_a_call_cancelled_as_it_is_let_in_passes_its_place_on():
    async def scenario():
        gate = Admission(max_ongoing=1, max_queued=2)
        await gate.enter()
        first = asyncio.ensure_future(gate.enter())
        second = asyncio.ensure_future(gate.enter())
        await _settle()
        gate.leave()  # first is let in ...
        first.cancel()  # ... and cancelled before it ran
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is True
        assert gate.ongoing == 1 and gate.queued == 0

    asyncio.run(scenario())


def test_raising_the_limit_lets_waiting_calls_in_and_lowering_it_refuses_nobody_already_waiting():
    async def scenario():
        gate = Admission(max_ongoing=1, max_queued=4)
        await gate.enter()
        waiters = [asyncio.ensure_future(gate.enter()) for _ in range(3)]
        await _settle()
        gate.configure(max_ongoing=3, max_queued=4)
        await _settle()
        assert sum(w.done() for w in waiters) == 2 and gate.ongoing == 3
        gate.configure(max_ongoing=1, max_queued=0)
        assert not waiters[2].done(), "still waiting, not refused"
        assert gate.full() and await gate.enter() is False
        for _ in range(3):
            gate.leave()
        await _settle()
        assert waiters[2].done() and gate.ongoing == 1

    asyncio.run(scenario())


def test_retry_after_is_whole_seconds():
    assert retry_after_header() == (b"retry-after", b"1")
    assert retry_after_header(5) == (b"retry-after", b"5")
    assert retry_after_header(-3) == (b"retry-after", b"0")
