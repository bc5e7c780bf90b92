"""Batch jobs' Ray layer in this process: the real scheduler and scoring workers, their actors run on threads.

``modelpool.management.batch`` reaches Ray through few calls, all in ``scheduler.py`` and ``workers.py``:
creating the scheduler actor (by name, ``get_if_exists``) and the worker actors, calling their methods with
``.remote()``, and ``ray.get`` / ``wait`` / ``cancel`` / ``kill`` on what those calls return (plus
``ray.nodes`` and the runtime context, for placement). :class:`InProcessActors` stands in for exactly
those, as ``InProcessServe`` (management_app.py) does for Serve: each actor is an instance of the real
class (``BatchScheduler``, ``BatchWorker``) whose calls run on its own threads (``max_concurrency`` of
them, as in a threaded Ray actor) and answer futures. So the real BatchService, job records, input
tables, the scheduler's job loop, the scoring of rows by the model's real handler, results parts and
artifacts all run here, against the test's local object store, and a job moves Pending -> Running ->
Complete while the client polls.

:class:`Gate` lets a test hold scoring (every worker ``score`` call waits at it) to read a job while
it runs, then let it finish; a call cancelled while it waits never runs, as Ray cancels a queued task.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from typing import Any, Optional

import pytest
from ray.exceptions import RayActorError, TaskCancelledError

from modelpool.management.batch import model_cache, scheduler, scoring, workers

#: the actor methods that score rows: they pass the gate first
SCORING_METHODS = ("score",)


class Gate:
    """Open unless a test holds it; a scoring call waits here until it opens or is cancelled."""

    def __init__(self) -> None:
        self._open = True
        self._changed = threading.Condition()
        self.waiting = 0  # scoring calls held here now

    def hold(self) -> None:
        with self._changed:
            self._open = False

    def release(self) -> None:
        with self._changed:
            self._open = True
            self._changed.notify_all()

    def passes(self, ref: "Ref") -> bool:
        """Wait until the gate is open (True) or ``ref`` was cancelled (False)."""
        with self._changed:
            self.waiting += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._open or ref.cancelled)
            self.waiting -= 1
            self._changed.notify_all()
            return not ref.cancelled

    def wait_until_held(self, calls: int = 1, timeout_s: float = 10.0) -> None:
        """Until ``calls`` scoring calls wait here: their job is Running, none of its rows scored."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.waiting >= calls, timeout_s):
                raise TimeoutError(f"{self.waiting} scoring calls reached the gate in {timeout_s}s, wanted {calls}")

    def wait_until_none_held(self, timeout_s: float = 10.0) -> None:
        """Until no scoring call waits here (e.g. the scheduler cancelled the ones that did)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.waiting == 0, timeout_s):
                raise TimeoutError(f"{self.waiting} scoring calls still wait at the gate after {timeout_s}s")

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


class Ref:
    """An ObjectRef stand-in: one ``.remote()`` call's future, and whether ``ray.cancel`` reached it first."""

    def __init__(self) -> None:
        self.future: Future = Future()
        self.cancelled = False


class Actor:
    """One actor: an instance of the real class, its calls run on ``max_concurrency`` threads of its own."""

    def __init__(self, runtime: "InProcessActors", instance: Any, max_concurrency: int, label: str) -> None:
        self._runtime = runtime
        self.instance = instance
        self._calls = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"actor-{label}")
        self.dead = False

    def __getattr__(self, method: str) -> "ActorMethod":
        if method.startswith("_"):
            raise AttributeError(method)
        return ActorMethod(self, method)

    def call(self, method: str, args: tuple, kwargs: dict) -> Ref:
        ref = Ref()
        if self.dead:
            ref.future.set_exception(RayActorError())
            return ref

        def run() -> None:
            if method in SCORING_METHODS and not self._runtime.gate.passes(ref):
                ref.future.set_exception(TaskCancelledError())
                return
            try:
                ref.future.set_result(getattr(self.instance, method)(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - ray.get raises what the method raised
                ref.future.set_exception(exc)

        self._calls.submit(run)
        return ref

    def stop(self) -> None:
        self.dead = True
        self._calls.shutdown(wait=True, cancel_futures=True)


class ActorMethod:
    def __init__(self, actor: Actor, name: str) -> None:
        self._actor, self._name = actor, name

    def remote(self, *args: Any, **kwargs: Any) -> Ref:
        return self._actor.call(self._name, args, kwargs)


class ActorClass:
    """A ``@ray.remote`` class: ``.options(...).remote(...)`` builds the real class here; a ``name`` with
    ``get_if_exists`` finds the actor already made under that name (the scheduler's lookup)."""

    def __init__(self, runtime: "InProcessActors", remote_class: Any, options: Optional[dict] = None) -> None:
        self._runtime = runtime
        self._remote_class = remote_class
        self._options = options or {}

    def options(self, **options: Any) -> "ActorClass":
        return ActorClass(self._runtime, self._remote_class, options)

    def remote(self, *args: Any, **kwargs: Any) -> Actor:
        concurrency = self._options.get("max_concurrency") or self._remote_class._default_options.get("max_concurrency")
        return self._runtime.create(self._remote_class.__ray_actor_class__, self._options, int(concurrency or 1),
                                    args, kwargs)


class InProcessActors:
    """The ``ray`` that scheduler.py and workers.py see, and their two actor classes, in this process."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.actors: list[Actor] = []
        self.named: dict[tuple[Optional[str], str], Actor] = {}
        self._lock = threading.RLock()  # an actor's constructor may create actors (the scheduler its workers)

    def install(self, monkeypatch: pytest.MonkeyPatch, local_ray: Any) -> None:
        """``local_ray`` answers the placement calls (nodes, this node's id) for one local node."""
        self.nodes = local_ray.nodes
        self.get_runtime_context = local_ray.get_runtime_context
        monkeypatch.setattr(scheduler, "BatchScheduler", ActorClass(self, scheduler.BatchScheduler))
        monkeypatch.setattr(workers, "BatchWorker", ActorClass(self, workers.BatchWorker))
        monkeypatch.setattr(scheduler, "ray", self)
        monkeypatch.setattr(workers, "ray", self)

    # ------------------------------------------------------------------ actors
    def create(self, cls: type, options: dict, max_concurrency: int, args: tuple, kwargs: dict) -> Actor:
        name = options.get("name")
        key = (options.get("namespace"), name) if name else None
        with self._lock:  # Ray creates a named actor once; get_if_exists answers the one there
            if key in self.named:
                if options.get("get_if_exists"):
                    return self.named[key]
                raise ValueError(f"an actor named {name!r} already exists")
            actor = Actor(self, cls(*args, **kwargs), max_concurrency, name or cls.__name__)
            self.actors.append(actor)
            if key:
                self.named[key] = actor
            return actor

    # ------------------------------------------------------------------ the ray calls
    @staticmethod
    def get(refs: Any, timeout: Optional[float] = None) -> Any:
        if isinstance(refs, list):
            return [ref.future.result(timeout) for ref in refs]
        return refs.future.result(timeout)

    @staticmethod
    def wait(refs: list[Ref], num_returns: int = 1, timeout: Optional[float] = None) -> tuple[list[Ref], list[Ref]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = [ref for ref in refs if ref.future.done()]
            left = None if deadline is None else deadline - time.monotonic()
            if len(ready) >= num_returns or (left is not None and left <= 0):
                break
            wait_for_futures([ref.future for ref in refs if not ref.future.done()], timeout=left,
                             return_when=FIRST_COMPLETED)
        ready = ready[:num_returns]
        return ready, [ref for ref in refs if ref not in ready]

    def cancel(self, ref: Ref, **_: Any) -> None:
        """A call still waiting to run never runs; one running goes on (a threaded actor's task is not interrupted)."""
        ref.cancelled = True
        self.gate.wake()

    @staticmethod
    def kill(actor: Actor, no_restart: bool = True) -> None:
        actor.dead = True

    # ------------------------------------------------------------------ teardown
    def stop(self, timeout_s: float = 30.0) -> None:
        """Let held jobs finish, wait for every job thread, stop every actor's threads, forget loaded models."""
        self.gate.release()
        deadline = time.monotonic() + timeout_s
        for actor in self.actors:
            running = getattr(actor.instance, "_running", None)  # the scheduler's jobs in flight
            while running and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not running, f"batch jobs still running at teardown: {sorted(running)}"
        for thread in threading.enumerate():
            if thread.name.startswith("batch-"):
                thread.join(max(0.0, deadline - time.monotonic()))
        for actor in self.actors:
            actor.stop()
        model_cache.clear_model_cache()
