"""The batch scoring workers: warm actors pinned to the cluster's nodes, and the pool jobs draw them from.

Workers are dealt round the alive nodes and pinned there with a *hard* node affinity, so a job's
partitions are scored on every machine and a node's death costs only the partitions in flight on
it. Ray's soft affinity does not do this: measured on a two-node cluster here, a soft affinity to a
healthy, idle node put about half of the zero-CPU workers on the other node, and "SPREAD" is no
better for actors that reserve no CPU. A pinned worker whose node dies cannot come back (Ray answers
``ActorUnschedulableError``); the pool then starts a replacement on the alive node with the fewest
workers, and the partition it was scoring is scored again (parts are written whole, so never twice).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError, RayError

from modelpool.deployments import tracing
from modelpool.deployments.metrics import record_batch_rows
from modelpool.management.batch.jobs import input_location, open_job_store

logger = logging.getLogger(__name__)

RETRIES = 3
PLACEMENT_WAIT_S = 60.0   # a pinned worker not up by then is started unpinned instead (its node is not schedulable)
WORKER_LOST = (RayActorError, ActorUnschedulableError)   # what a call to a dead, unrestartable worker raises
PRELOAD_GROUP = "preload"   # a worker's thread for loading models ahead of their partitions


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=RETRIES, concurrency_groups={PRELOAD_GROUP: 1})
class BatchWorker:
    """Scores partitions; keeps its imports and (per process) its loaded models between calls.

    Partitions run one at a time; preloads run on a thread of their own (``PRELOAD_GROUP``), so a
    partition never queues behind the load of a model it does not use, and one that needs a model
    being preloaded waits for that load instead of doing it again (``model_cache.cached_model``).
    """

    def __init__(self) -> None:
        from modelpool.management.batch import model_cache, scoring  # the expensive imports, once per worker

        self._scoring = scoring
        self._model_cache = model_cache
        record_batch_rows("", "", 0, 0)  # counts nothing; creates this process's metrics now, not after a first partition
        tracing.configure()  # --tracing: each partition is a span of the job's trace

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    @ray.method(concurrency_group=PRELOAD_GROUP)
    def preload(self, store_config: dict, model: dict, cache_dir: str) -> bool:
        """Load ``model`` (``source``, ``digest``, ``handler``) now; False when it cannot (nothing fails)."""
        return self._model_cache.preload(open_job_store(store_config), model, Path(cache_dir))

    def score(self, store_config: dict, execution_id: str, partition: int, job: dict, cache_dir: str) -> dict:
        store = open_job_store(store_config)
        with tracing.root_span(f"batch job {execution_id} partition {partition}", job.get("traceparent"), {
                "modelpool.batch.execution_id": execution_id, "modelpool.batch.partition": partition,
                "modelpool.model": job.get("service", ""), "modelpool.version": job.get("version", "")}) as span:
            result = self._scoring.score_partition(store, execution_id, partition, job, Path(cache_dir),
                                                   locate=lambda uri: input_location(store_config, store, uri))
            if span is not None:
                span.set_attributes({"modelpool.batch.rows": result["rows"], "modelpool.batch.completed": result["completed"],
                                     "modelpool.batch.failed": result["failed"]})
        record_batch_rows(job.get("service", ""), job.get("version", ""), result["completed"], result["failed"])
        return result


def alive_nodes() -> list[str]:
    return sorted(node["NodeID"] for node in ray.nodes() if node.get("Alive"))


def deal(count: int, nodes: list[str]) -> list[str]:
    """Which node each of ``count`` workers goes to: round the nodes, so they differ by one at most."""
    return [nodes[i % len(nodes)] for i in range(count)]


def least_loaded(nodes: list[str], placed: list[Optional[str]]) -> str:
    """The node with the fewest of ``placed`` on it (ties: the first), for a replacement worker."""
    load = Counter(placed)
    return min(nodes, key=lambda node: load[node])


def _start_pinned(node: Optional[str]) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if node is None:
        return BatchWorker.remote()
    return BatchWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote()


def start_on(nodes: list[Optional[str]]) -> tuple[list[Any], list[Optional[str]]]:
    """One worker pinned to each of ``nodes`` (None: anywhere), each waited for until it is up.

    A worker not up within PLACEMENT_WAIT_S (its node is not schedulable) is killed and started unpinned,
    so a job never waits on a node that will not take it. Returns the workers and where they run.
    """
    workers = [_start_pinned(node) for node in nodes]
    where = [worker.node_id.remote() for worker in workers]
    ready, _ = ray.wait(where, num_returns=len(where), timeout=PLACEMENT_WAIT_S)
    placed: list[Optional[str]] = []
    for i, ref in enumerate(where):
        if ref in ready:
            try:
                placed.append(ray.get(ref))
                continue
            except RayError as exc:  # its node died between listing and placing (ActorUnschedulableError)
                logger.warning("batch worker pinned to node %s could not start (%s); starting it unpinned", nodes[i],
                               type(exc).__name__)
        else:
            logger.warning("batch worker pinned to node %s is not up after %.0f s; starting it unpinned", nodes[i],
                           PLACEMENT_WAIT_S)
        ray.kill(workers[i], no_restart=True)
        workers[i] = _start_pinned(None)
        placed.append(None)
    return workers, placed


class WorkerPool:
    """The warm workers, shared by the scheduler's job threads: take one, give it back, or report it lost."""

    def __init__(self, count: int) -> None:
        nodes = alive_nodes()
        wanted: list[Optional[str]] = deal(count, nodes) if len(nodes) > 1 else [None] * count
        self.workers, self.nodes = start_on(wanted)
        self._idle: "queue.Queue[Any]" = queue.Queue()
        for worker in self.workers:
            self._idle.put(worker)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.workers)

    def take(self, timeout_s: float = 0.05) -> Optional[Any]:
        try:
            return self._idle.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def give_back(self, worker: Any) -> None:
        self._idle.put(worker)

    def preload(self, store_config: dict, model: dict, cache_dir: str) -> list[Any]:
        """Every worker, busy or idle, loads ``model`` at once (their calls, for whoever wants to wait)."""
        return [worker.preload.remote(store_config, model, cache_dir) for worker in list(self.workers)]

    def replace(self, lost: Any) -> None:
        """``lost`` cannot be called any more (its node died): a new worker takes its place in the pool."""
        with self._lock:
            index = next((i for i, worker in enumerate(self.workers) if worker == lost), None)
            if index is None:
                return
            others = self.nodes[:index] + self.nodes[index + 1:]
            nodes = alive_nodes()
            target = least_loaded(nodes, others) if len(nodes) > 1 else None
            try:
                ray.kill(lost, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone, which is why it is replaced
                pass
            (worker,), (node,) = start_on([target])
            self.workers[index], self.nodes[index] = worker, node
            logger.warning("batch worker %d was lost; replaced on node %s", index, node)
        self._idle.put(worker)
