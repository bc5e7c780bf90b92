"""The adaptive batcher: no wait at low load, batches under load, live reconfiguration."""
import asyncio
import time

import pytest

from modelpool.deployments.batcher import PROBE_EVERY, AdaptiveBatcher


def run(coro):
    return asyncio.run(coro)


def recording_batcher(max_batch_size=64, max_delay_s=0.05, work_s=0.0):
    calls: list[list] = []

    async def batch_fn(items):
        calls.append(list(items))
        if work_s:
            await asyncio.sleep(work_s)
        return [item * 10 for item in items]

    return AdaptiveBatcher(batch_fn, max_batch_size, max_delay_s), calls


def test_single_request_is_not_delayed_by_the_batch_wait():
    async def main():
        batcher, calls = recording_batcher(max_delay_s=0.5)
        started = time.perf_counter()
        result = await batcher.submit(3)
        return result, time.perf_counter() - started, calls

    result, elapsed, calls = run(main())
    assert result == 30
    assert calls == [[3]]
    assert elapsed < 0.1, "a lone request must flush at once, not wait max_delay"


def test_requests_arriving_while_a_batch_computes_form_the_next_batch():
    async def main():
        batcher, calls = recording_batcher(work_s=0.05)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # first batch is computing now
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 21)]
        results = await asyncio.gather(first, *rest)
        return results, calls

    results, calls = run(main())
    assert results == [i * 10 for i in range(21)]
    assert [len(c) for c in calls] == [1, 20]


def test_batches_never_exceed_the_max_and_size_changes_live():
    async def main():
        batcher, calls = recording_batcher(max_batch_size=4, work_s=0.01)
        await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        sizes_before = [len(c) for c in calls]
        calls.clear()
        batcher.configure(max_batch_size=1, max_delay_s=0.0)
        await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        return sizes_before, [len(c) for c in calls]

    before, after = run(main())
    assert max(before) == 4 and sum(before) == 10
    assert after == [1] * 5


def test_waits_for_requests_still_on_their_way_in_up_to_the_delay():
    async def main():
        batcher, calls = recording_batcher(max_delay_s=0.2)

        async def slow_arrival(value, delay):
            with batcher.incoming() as token:
                await asyncio.sleep(delay)  # reading the body
                token.release()
                return await batcher.submit(value)

        async def prompt_arrival(value):
            await asyncio.sleep(0)  # arrives just after the slow one started reading its body
            return await batcher.submit(value)

        results = await asyncio.gather(slow_arrival(2, 0.02), prompt_arrival(1))
        return results, calls

    results, calls = run(main())
    assert results == [20, 10]
    assert calls == [[1, 2]], "the batcher should wait for a request it knows is arriving"


def test_a_lone_request_runs_in_the_callers_task_with_no_hop():
    """The c=1 fast path: no worker task is started for a request that finds the batcher idle."""
    async def main():
        seen_tasks = []

        async def batch_fn(items):
            seen_tasks.append(asyncio.current_task())
            return [i + 1 for i in items]

        batcher = AdaptiveBatcher(batch_fn, 8, 0.5)
        result = await batcher.submit(1)
        return result, seen_tasks == [asyncio.current_task()], batcher._worker

    result, ran_in_caller, worker = run(main())
    assert result == 2 and ran_in_caller
    assert worker is None


def test_the_fast_path_and_queued_batches_never_run_at_once():
    async def main():
        running, most = 0, 0

        async def batch_fn(items):
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1
            return list(items)

        batcher = AdaptiveBatcher(batch_fn, 4, 0.0)
        results = []
        for wave in range(5):
            lone = asyncio.create_task(batcher.submit(wave * 100))  # idle batcher: fast path
            await asyncio.sleep(0.002)
            crowd = [asyncio.create_task(batcher.submit(wave * 100 + i)) for i in range(1, 7)]
            results.append(await asyncio.gather(lone, *crowd))
        return results, most

    results, most = run(main())
    assert most == 1, "one batch at a time, fast path included"
    assert results == [[w * 100 + i for i in range(7)] for w in range(5)]


def test_items_with_different_keys_never_share_a_batch():
    async def main():
        batcher, calls = recording_batcher(work_s=0.02)
        first = asyncio.create_task(batcher.submit(0, key="a"))
        await asyncio.sleep(0.005)
        tasks = [asyncio.create_task(batcher.submit(i, key="a" if i % 2 else "b")) for i in range(1, 7)]
        await asyncio.gather(first, *tasks)
        return calls

    calls = run(main())
    for batch in calls:
        keys = {"a" if (i == 0 or i % 2) else "b" for i in batch}
        assert len(keys) == 1
    assert sorted(i for batch in calls for i in batch) == list(range(7))


def test_a_failed_item_fails_alone_and_the_batcher_keeps_serving():
    async def batch_fn(items):
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    async def main():
        batcher = AdaptiveBatcher(batch_fn, 8, 0.0)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)
        again = await batcher.submit(5)
        return outcomes, again

    outcomes, again = run(main())
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], ValueError) and "bad -1" in str(outcomes[1])
    assert again == 5


def test_a_raising_batch_function_fails_every_caller_with_its_error():
    async def batch_fn(items):
        raise RuntimeError("model exploded")

    async def main():
        batcher = AdaptiveBatcher(batch_fn, 8, 0.0)
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    outcomes = run(main())
    assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in outcomes)


def test_configure_refuses_nonsense():
    batcher, _ = recording_batcher()
    with pytest.raises(ValueError):
        batcher.configure(0, 0.0)
    with pytest.raises(ValueError):
        batcher.configure(4, -1)


def test_the_batcher_works_across_event_loops():
    """A replica may be driven by a new loop (tests, restarts); asyncio primitives are per loop."""
    batcher, calls = recording_batcher()
    assert run(batcher.submit(1)) == 10
    assert run(batcher.submit(2)) == 20
    assert calls == [[1], [2]]


def test_requests_right_after_a_batch_are_batched_not_run_alone():
    """Under load the next requests arrive as a batch ends; the fast path must not take them one by one."""
    async def main():
        calls = []

        async def batch_fn(items):  # a fast inline model: no await inside
            calls.append(list(items))
            return list(items)

        batcher = AdaptiveBatcher(batch_fn, 64, 0.0)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        return results, calls

    results, calls = run(main())
    assert results == list(range(10))
    assert calls == [list(range(10))], "requests the loop handles in one turn share one batch; none runs alone"


def test_a_cancelled_leader_leaves_the_requests_that_joined_its_batch_answered():
    """A caller that leads a batch may go away (client disconnect) while its model call runs on a thread."""
    async def main():
        calls = []

        async def batch_fn(items):  # a model on its thread: the batch function suspends
            calls.append(list(items))
            await asyncio.sleep(0.02)
            return [i * 10 for i in items]

        batcher = AdaptiveBatcher(batch_fn, 64, 0.0)
        leader = asyncio.create_task(batcher.submit(0))
        joined = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]  # same loop turn: they join the leader
        await asyncio.sleep(0.005)
        leader.cancel()
        results = await asyncio.wait_for(asyncio.gather(*joined), 1.0)  # a lost batch would hang them
        return results, leader.cancelled(), calls

    results, cancelled, calls = run(main())
    assert cancelled
    assert results == [10, 20]
    assert calls[0] == [0, 1, 2] and calls[-1] == [1, 2], "the joined items run again, without the cancelled one"


def test_a_leader_cancelled_before_its_batch_starts_hands_the_queue_to_the_worker():
    async def main():
        batcher, calls = recording_batcher(max_delay_s=0.0)
        leader = asyncio.create_task(batcher.submit(0))
        joined = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)  # the leader yields; the others queue behind it
        leader.cancel()
        return await asyncio.wait_for(asyncio.gather(*joined), 1.0), leader, calls

    results, leader, calls = run(main())
    assert results == [10, 20]
    assert leader.cancelled()
    assert calls == [[1, 2]]


def test_a_leader_takes_only_items_of_its_key_and_the_worker_serves_the_rest():
    async def main():
        batcher, calls = recording_batcher(max_batch_size=3)
        tasks = [asyncio.create_task(batcher.submit(i, key="a" if i % 2 == 0 else "b")) for i in range(7)]
        return await asyncio.gather(*tasks), calls

    results, calls = run(main())
    assert results == [i * 10 for i in range(7)]
    assert calls[0] == [0, 2, 4], "the leader's batch: its own key, at most max_batch_size, in arrival order"
    assert sorted(i for batch in calls for i in batch) == list(range(7))
    assert all(len(batch) <= 3 and len({i % 2 for i in batch}) == 1 for batch in calls)


def test_a_leader_waits_for_a_body_still_being_read_in_its_turn():
    """A request that starts reading its body while the leader yields still joins, within max_delay."""
    async def main():
        batcher, calls = recording_batcher(max_delay_s=0.2)

        async def slow_body(value):
            with batcher.incoming() as token:
                await asyncio.sleep(0.02)
                token.release()
                return await batcher.submit(value)

        leader = asyncio.create_task(batcher.submit(1))
        reader = asyncio.create_task(slow_body(2))
        return await asyncio.gather(leader, reader), calls

    results, calls = run(main())
    assert results == [10, 20]
    assert calls == [[1, 2]]


def test_the_batcher_reports_how_long_requests_waited_for_their_call():
    async def main():
        batcher, _ = recording_batcher(work_s=0.02)
        lone = await batcher.submit(0)
        alone_wait = batcher.stats.waited_s
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.005)  # the first batch is computing: these two wait for it
        await asyncio.gather(first, batcher.submit(2), batcher.submit(3))
        return lone, alone_wait, batcher.stats

    lone, alone_wait, stats = run(main())
    assert lone == 0
    assert alone_wait < 0.005, "a lone request waits only for one yield"
    assert stats.items == 4 and stats.batches == 3
    assert stats.last_wait_s >= 2 * 0.01, "requests 2 and 3 each waited for most of the 20 ms batch ahead"
    assert stats.waited_s >= stats.last_wait_s


def test_after_a_run_of_lone_batches_leaders_yield_only_to_probe_and_a_joiner_restores_the_yield():
    """c=1 skips the yield most of the time; the first batch someone joins makes every leader yield again."""
    async def joined_or_not(batcher, calls, value):
        calls.clear()
        other = asyncio.create_task(batcher.submit(value + 1))  # runs as soon as the loop gets a turn
        await batcher.submit(value)
        await other
        return [list(c) for c in calls]

    async def main():
        batcher, calls = recording_batcher()
        for i in range(PROBE_EVERY + 1):
            await batcher.submit(i)  # lone batches: the streak is now PROBE_EVERY + 1
        quiet = await joined_or_not(batcher, calls, 100)  # no yield: both run alone
        for i in range(PROBE_EVERY - 3):
            await batcher.submit(i)  # the streak reaches 2 * PROBE_EVERY: the next leader probes
        probe = await joined_or_not(batcher, calls, 200)
        after = await joined_or_not(batcher, calls, 300)
        return quiet, probe, after

    quiet, probe, after = run(main())
    assert quiet == [[100], [101]]
    assert probe == [[200, 201]], "the probe's yield found a joiner"
    assert after == [[300, 301]], "and leaders yield again"


def test_a_caller_cancelled_while_queued_behind_a_leader_is_left_out_of_its_batch():
    async def main():
        batcher, calls = recording_batcher()
        leader = asyncio.create_task(batcher.submit(0))
        gone = asyncio.create_task(batcher.submit(1))
        stays = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0)  # the leader yields; the other two queue behind it
        gone.cancel()
        return await asyncio.gather(leader, stays), gone, calls

    results, gone, calls = run(main())
    assert results == [0, 20]
    assert gone.cancelled()
    assert calls == [[0, 2]]
