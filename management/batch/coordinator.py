"""Runs one batch job on Ray: a detached coordinator actor fans partitions out to scoring tasks.

The coordinator keeps at most ``parallelCount`` scoring tasks in flight, records progress in the
job's ``job.json``, and stops on cancel. It owns no state that is not in object storage: if its
process dies, Ray restarts it (``max_restarts=-1``) and it resumes from the result parts already
written; a scoring task killed mid-partition is retried by Ray and rewrites its part whole, so
every row appears exactly once.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

import ray

from cluster.object_store import ObjectStore, object_store_from_settings
from management.batch import layout, results

logger = logging.getLogger(__name__)

NAMESPACE = "modelpool"
FINAL_STATES = ("Complete", "Failed", "Cancelled")
TASK_RETRIES = 3


def open_job_store(config: dict) -> ObjectStore:
    return object_store_from_settings(config["uri"], config.get("s3_endpoint"), config.get("s3_region"))


def is_cancelled(store: ObjectStore, execution_id: str) -> bool:
    return store.exists(cancel_key(execution_id))


def cancel_key(execution_id: str) -> str:
    """A marker object of its own: a cancel can never be lost to a concurrent job.json update."""
    return layout.job_key(execution_id).rsplit("/", 1)[0] + "/cancelled"


def read_job(store: ObjectStore, execution_id: str) -> dict:
    job = store.read_json(layout.job_key(execution_id))
    if job.get("state") not in FINAL_STATES and is_cancelled(store, execution_id):
        job["state"] = "Cancelled"
    return job


def update_job(store: ObjectStore, execution_id: str, **changes: Any) -> dict:
    """Read-modify-write of job.json (only the coordinator writes it after submit)."""
    job = store.read_json(layout.job_key(execution_id))
    job.update(changes, updatedAt=time.time())
    if is_cancelled(store, execution_id) and job.get("state") not in ("Complete", "Failed"):
        job["state"] = "Cancelled"
    store.write_json(layout.job_key(execution_id), job)
    return job


@ray.remote(max_retries=TASK_RETRIES)
def score_task(store_config: dict, execution_id: str, partition: int, job: dict, cache_dir: str) -> dict:
    """One partition in a worker process (the model is cached per process by the scoring module)."""
    from management.batch.scoring import score_partition

    return score_partition(open_job_store(store_config), execution_id, partition, job, Path(cache_dir))


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class BatchCoordinator:
    """One per running job, detached and named ``batch-{execution_id}``."""

    def __init__(self, store_config: dict, execution_id: str, cache_dir: str, task_num_cpus: float) -> None:
        self.store_config = store_config
        self.execution_id = execution_id
        self.cache_dir = cache_dir
        self.task_num_cpus = task_num_cpus
        self.store = open_job_store(store_config)
        self._thread = threading.Thread(target=self._run_safely, name=f"batch-{execution_id}", daemon=True)
        self._thread.start()

    def ping(self) -> str:
        return self.execution_id

    def _run_safely(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - recorded on the job for the user to read
            logger.exception("batch %s failed", self.execution_id)
            try:
                update_job(self.store, self.execution_id, state="Failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:  # noqa: BLE001
                logger.exception("could not record the failure of batch %s", self.execution_id)
        finally:
            self._exit()

    def _exit(self) -> None:
        """A finished coordinator removes itself; Ray must not restart it."""
        try:
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass

    def _run(self) -> None:
        job = read_job(self.store, self.execution_id)
        if job["state"] in FINAL_STATES:
            return
        job = update_job(self.store, self.execution_id, coordinatorStartedAt=time.time())
        job = self._prepare(job)
        partitions = int(job["partitions"])
        done = set(results.completed_parts(self.store, self.execution_id))
        pending = [k for k in range(partitions) if k not in done]
        totals = results.counts(self.store, self.execution_id)  # once, for the parts a previous run wrote
        self.completed, self.failed = totals["completed"], totals["failed"]
        job = update_job(self.store, self.execution_id, state="Running", **self._progress())
        in_flight: dict[Any, int] = {}
        task = score_task.options(num_cpus=self.task_num_cpus)
        while pending or in_flight:
            if is_cancelled(self.store, self.execution_id):
                for ref in in_flight:
                    ray.cancel(ref, force=True)
                update_job(self.store, self.execution_id, state="Cancelled", **self._progress())
                return
            while pending and len(in_flight) < int(job["parallelCount"]):
                k = pending.pop(0)
                in_flight[task.remote(self.store_config, self.execution_id, k, job, self.cache_dir)] = k
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                in_flight.pop(ref)
                scored = ray.get(ref)  # a partition that failed all its retries fails the job
                self.first_part_at = getattr(self, "first_part_at", None) or time.time()
                self.completed += scored["completed"]
                self.failed += scored["failed"]
            if ready:
                update_job(self.store, self.execution_id, firstPartAt=self.first_part_at, **self._progress())
        update_job(self.store, self.execution_id, state="Complete", finishedAt=time.time(), **self._progress())

    def _prepare(self, job: dict) -> dict:
        """Write the input table for an input_uri job (records jobs were written at submit)."""
        if job.get("partitions") is not None:
            return job
        from management.batch import inputs

        table = inputs.read_input_uri(job["inputUri"], self._fetch)
        partition_rows = inputs.partition_rows_for(table.num_rows, int(job["parallelCount"]))
        partitions = inputs.write_input(self.store, self.execution_id, table, partition_rows)
        return update_job(self.store, self.execution_id, partitions=partitions, partitionRows=partition_rows,
                          totalItems=table.num_rows, inputColumns=table.column_names, inputReadyAt=time.time())

    def _fetch(self, uri: str):
        return input_location(self.store_config, self.store, uri)

    def _progress(self) -> dict:
        """Counted from the tasks' answers: re-reading every part per completion would be quadratic."""
        return {"completedItems": self.completed, "failedItems": self.failed}


def input_location(store_config: dict, store: ObjectStore, uri: str):
    """(filesystem, path) of an input_uri: s3:// through the configured endpoint, objects:// in this store."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        other = ObjectStore(f"s3://{bucket}", s3_endpoint=store_config.get("s3_endpoint"), s3_region=store_config.get("s3_region"))
        return other.filesystem, other.path(key)
    return store.filesystem, store.path(uri.removeprefix("objects://"))


def start_coordinator(store_config: dict, execution_id: str, cache_dir: str, task_num_cpus: float) -> None:
    """Start (or find) the job's coordinator; idempotent, so resuming after a restart is the same call."""
    BatchCoordinator.options(name=f"batch-{execution_id}", namespace=NAMESPACE, lifetime="detached",
                             get_if_exists=True).remote(store_config, execution_id, cache_dir, task_num_cpus)


def coordinator_alive(execution_id: str) -> Optional[bool]:
    try:
        ray.get_actor(f"batch-{execution_id}", namespace=NAMESPACE)
        return True
    except ValueError:
        return False
