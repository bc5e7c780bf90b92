"""An adaptive request batcher for one replica.

Serve's ``@serve.batch`` always waits ``batch_wait_timeout_s`` for a batch to fill, which costs the
full delay on every request at low load (7 ms measured here). This batcher flushes at once when no
other request is on its way into the replica, and waits up to ``max_delay_s`` only while requests
have entered the replica but not yet joined the queue (their bodies are being read or decoded).
Under load, requests that arrive while a batch is computing form the next batch, so batches grow
with load by themselves.

A lone request on a batcher that has been idle for a while (nothing queued, nothing on its way in,
no batch running, none finished in the last ``FAST_PATH_IDLE_S``) takes a fast path: the caller runs
its batch of one itself, with no queue, future or task hop (about 35 us of a 200 us replica call).
The idle time matters: under load the next request reaches the replica microseconds after a batch
ends, and without the task hop it would never yield to the requests behind it, so batching would
stop exactly when it pays. At low load a request arrives at least a network round trip after the
previous answer left.

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

FAST_PATH_IDLE_S = 0.0003


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
        self._busy = False  # a batch is running (on the worker or on a caller's fast path)
        self._idle_since = 0.0  # monotonic time the last batch ended
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
        if (not self._busy and not self._queue and self._incoming == 0
                and time.monotonic() - self._idle_since > FAST_PATH_IDLE_S):
            return await self._run_alone(item)
        pending = _Pending(item, key, loop.create_future(), time.monotonic())
        self._queue.append(pending)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return await pending.future

    async def _run_alone(self, item: T) -> Any:
        """The fast path: run a batch of one in the caller's coroutine; queued work waits for it."""
        self._busy = True
        try:
            self.stats.record(1)
            results = await self._batch_fn([item])
        finally:
            self._busy = False
            self._idle_since = time.monotonic()
            if self._queue:
                self._arrived.set()  # wake the worker for whoever queued meanwhile
        if len(results) != 1:
            raise RuntimeError(f"batch function returned {len(results)} results for 1 item")
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0]

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue or self._busy:
                    self._arrived.clear()
                    await self._arrived.wait()
                await self._gather()
                batch = self._take_batch()
                started = time.monotonic()
                self.stats.record(len(batch), sum(started - p.queued_at for p in batch))
                self._busy = True
                try:
                    await self._execute(batch)
                finally:
                    self._busy = False
                    self._idle_since = time.monotonic()
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

    def _take_batch(self) -> List[_Pending[T]]:
        key = self._queue[0].key
        batch: List[_Pending[T]] = []
        rest: List[_Pending[T]] = []
        for pending in self._queue:
            if pending.key == key and len(batch) < self.max_batch_size:
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
            if pending.future.done():
                continue
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
