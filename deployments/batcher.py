"""An adaptive request batcher for one replica.

Serve's ``@serve.batch`` always waits ``batch_wait_timeout_s`` for a batch to fill, which costs the
full delay on every request at low load (7 ms measured here). This batcher never waits on a clock
for requests that are already in the replica's event loop: a request that finds the batcher idle
leads a batch. It yields to the loop once, so every request the loop is working on in that same
turn (parsing, decoding) can reach the batcher and queue behind it, then runs the batch itself, in
its own coroutine, with no worker task to wake. Under load each turn of the loop becomes one batch,
so batches grow with the load by themselves.

At c=1 nobody joins: after ``PROBE_EVERY`` batches of one in a row, a leader yields only every
``PROBE_EVERY``-th time, and the first batch someone joins makes every leader yield again. (In a
Serve replica a yield lets the request's own helper tasks run first: tens of microseconds at c=1 on
a busy machine, against 2-5 us for running alone at once.) This replaced "run alone when idle for 0.3 ms",
which failed under load whenever the replica's loop spent more than 0.3 ms of HTTP work per request
(a busy machine): every request looked idle and ran alone, and batches at c=64 fell to 1.

Requests that arrive while a batch runs queue for a worker task, which runs them as the next batch.
The worker waits up to ``max_delay_s`` only while requests have entered the replica but not yet
joined the queue (their bodies are still being read or decoded).

It runs one batch at a time: the model is CPU-bound, so concurrent batches would only fight for the
same cores. Items in a batch are grouped by a caller-given key (e.g. input names and shapes), since
requests whose tensors cannot be concatenated cannot share a model call.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Hashable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[List[T]], Awaitable[Sequence[Any]]]

PROBE_EVERY = 32


@dataclass
class _Pending(Generic[T]):
    item: T
    key: Hashable
    future: asyncio.Future
    queued_at: float  # monotonic time of ``submit``, for the wait metric


@dataclass
class BatchStats:
    """What the batcher did, for metrics and for tests that check batching behaviour."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict = field(default_factory=dict)
    waited_s: float = 0.0  # summed over items: time from ``submit`` to their batch's start
    last_wait_s: float = 0.0  # the batch starting now (read by the batch function for metrics)

    def record(self, size: int, waited_s: float = 0.0) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1
        self.waited_s += waited_s
        self.last_wait_s = waited_s


class AdaptiveBatcher(Generic[T]):
    """Collects concurrent calls into batches for ``batch_fn``.

    ``batch_fn`` receives a list of items sharing one key and returns one result per item, or an
    exception instance in an item's place to fail that item alone.
    """

    def __init__(self, batch_fn: BatchFn, max_batch_size: int = 64, max_delay_s: float = 0.005) -> None:
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._queue: List[_Pending[T]] = []
        self._arrived: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._incoming = 0
        self._worker: Optional[asyncio.Task] = None
        self._busy = False  # a batch is running or forming (on the worker or led by a caller)
        self._lone_streak = 0  # batches of one in a row: how long nobody has joined a batch
        self.stats = BatchStats()

    def configure(self, max_batch_size: int, max_delay_s: float) -> None:
        """Change batch size and delay live; the next batch uses them."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s

    @property
    def waiting(self) -> int:
        """Requests queued or on their way in (for the queue-length metric)."""
        return len(self._queue) + self._incoming

    def incoming(self) -> "_IncomingToken":
        """Mark a request that will join the queue soon (its body is still being read)."""
        return _IncomingToken(self)

    async def submit(self, item: T, key: Hashable = None) -> Any:
        """Queue ``item`` and wait for its result."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # asyncio primitives belong to one loop: bind to the caller's
            self._loop, self._arrived, self._worker = loop, asyncio.Event(), None
        if not self._busy and not self._queue and self._incoming == 0:
            return await self._lead(item, key, time.monotonic())
        pending = _Pending(item, key, loop.create_future(), time.monotonic())
        self._queue.append(pending)
        self._wake_worker()
        return await pending.future

    async def _lead(self, item: T, key: Hashable, queued_at: float) -> Any:
        """Run a batch in the caller's coroutine: its own item and whatever queued during one yield.

        The other items' callers may outlive this one: if it is cancelled while the batch function
        is suspended (a model on its thread), their items go back to the queue for the worker.
        """
        self._busy = True
        if self.max_batch_size > 1 and (self._lone_streak < PROBE_EVERY or self._lone_streak % PROBE_EVERY == 0):
            try:
                await asyncio.sleep(0)  # let the requests this loop turn is handling reach the queue
            except BaseException:
                self._release()
                raise
        if self._incoming > 0 and self.max_delay_s > 0:  # a body is still being read: the worker waits for it
            self._busy = False
            own = _Pending(item, key, self._loop.create_future(), queued_at)
            self._queue.insert(0, own)
            self._wake_worker()
            return await own.future
        others = self._take_batch(key, self.max_batch_size - 1) if self._queue else []
        others = [p for p in others if not p.future.done()]  # a caller cancelled while queued needs no result
        self._record(1 + len(others), queued_at, others)
        try:
            results = await self._batch_fn([item, *(p.item for p in others)] if others else [item])
            if len(results) != 1 + len(others):
                raise RuntimeError(f"batch function returned {len(results)} results for {1 + len(others)} items")
        except Exception as exc:  # the batch failed as a whole: every caller gets the cause
            results = [exc] * (1 + len(others))
        except BaseException:
            self._queue[0:0] = [p for p in others if not p.future.done()]
            raise
        finally:
            self._release()
        for pending, result in zip(others, results[1:]):
            _deliver(pending, result)
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0]

    def _record(self, size: int, first_queued_at: float, rest: List[_Pending[T]]) -> None:
        """Count a batch starting now, with its items' waits; a batch of one extends the lone streak."""
        started = time.monotonic()
        waited = started - first_queued_at
        for pending in rest:
            waited += started - pending.queued_at
        self.stats.record(size, waited)
        self._lone_streak = self._lone_streak + 1 if size == 1 else 0

    def _release(self) -> None:
        """A led batch ended (or never started): whoever queued meanwhile goes to the worker."""
        self._busy = False
        if self._queue:
            self._wake_worker()

    def _wake_worker(self) -> None:
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = self._loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue or self._busy:
                    self._arrived.clear()
                    await self._arrived.wait()
                await self._gather()
                batch = self._take_batch(self._queue[0].key, self.max_batch_size)
                self._record(len(batch), batch[0].queued_at, batch[1:])
                self._busy = True
                try:
                    await self._execute(batch)
                finally:
                    self._busy = False
        except BaseException as exc:  # never leave a caller waiting on a dead worker
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError(f"batcher stopped: {exc!r}"))
            self._queue = []
            raise

    async def _gather(self) -> None:
        """Wait for more items only while requests are on their way in and the delay allows."""
        deadline = time.monotonic() + self.max_delay_s
        while len(self._queue) < self.max_batch_size and self._incoming > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self, key: Hashable, most: int) -> List[_Pending[T]]:
        """Up to ``most`` queued items of ``key``, in arrival order; the rest stay queued."""
        batch: List[_Pending[T]] = []
        rest: List[_Pending[T]] = []
        for pending in self._queue:
            if pending.key == key and len(batch) < most:
                batch.append(pending)
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    async def _execute(self, batch: List[_Pending[T]]) -> None:
        live = [p for p in batch if not p.future.done()]  # a cancelled caller needs no result
        if not live:
            return
        try:
            results = await self._batch_fn([p.item for p in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except Exception as exc:  # the batch failed as a whole: fail each caller with the cause
            results = [exc] * len(live)
        for pending, result in zip(live, results):
            _deliver(pending, result)


def _deliver(pending: _Pending, result: Any) -> None:
    """Hand a result (or an exception in its place) to a caller that is still waiting."""
    if pending.future.done():  # the caller was cancelled
        return
    if isinstance(result, BaseException):
        pending.future.set_exception(result)
    else:
        pending.future.set_result(result)


class _IncomingToken:
    """Context manager counting a request between arrival and its ``submit``."""

    __slots__ = ("_batcher", "_open")

    def __init__(self, batcher: AdaptiveBatcher) -> None:
        self._batcher = batcher
        self._open = False

    def __enter__(self) -> "_IncomingToken":
        self._batcher._incoming += 1
        self._open = True
        return self

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._incoming -= 1

    def __exit__(self, *exc: object) -> None:
        self.release()
