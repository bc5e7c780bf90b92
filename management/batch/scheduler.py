"""Runs batch jobs on Ray: one long-lived scheduler actor and a pool of warm scoring workers.

The scheduler (a detached actor named ``batch-scheduler``) runs each job in a thread of its own,
keeping at most ``parallelCount`` partitions in flight on a pool of ``BatchWorker`` actors. The
workers stay up between jobs with their imports done and their models loaded (a cold worker
costs ~2.5 s before its first row), and reserve no CPUs so they never starve serving replicas;
``--batch-workers`` bounds how many run at once.

Models are loaded ahead of the partitions that use them, on every worker at once: a job's model as
soon as the job starts running (accepted, or resumed), and the newest registered versions when the
scheduler starts (a fresh cluster's first job then finds them loaded), one at a time until a job runs.
A preload is only a head start: one that fails fails nothing, the partition loads the model itself and
reports the error.

Nothing is lost and nothing is scored twice: the scheduler keeps no state that is not in object
storage, so when its process dies Ray restarts it and it resumes every unfinished job from the
result parts already written; a worker killed mid-partition is restarted by Ray and the call is
retried, rewriting that part whole; a worker whose node died is replaced by the pool
(``workers.py``) and its partition is scored again.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from typing import Any

import ray

from modelpool.management import archive_leases
from modelpool.management.batch import results
from modelpool.management.batch.jobs import (FINAL_STATES, JobRecord, input_location, is_cancelled, open_job_store, read_job,
                                   update_job)
from modelpool.management.batch.workers import RETRIES, WORKER_LOST, WorkerPool
from modelpool.management.registry import ModelRecord, Registry

logger = logging.getLogger(__name__)

NAMESPACE = "modelpool"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # every Ray head has 1 of it
SCHEDULER_NAME = "batch-scheduler"
WARM_UP_TIMEOUT_S = 30.0   # start-up preloads waited for at most this long (a model that loads slowly is left to load)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=64)
class BatchScheduler:
    def __init__(self, store_config: dict, cache_dir: str, workers: int) -> None:
        self.store_config = store_config
        self.cache_dir = cache_dir
        self.store = open_job_store(store_config)
        self.pool = WorkerPool(max(1, workers))
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._warm = threading.Event()   # set once the start-up preloads ended (loaded, failed or timed out)
        self.resume()
        threading.Thread(target=self._preload_registered, name="batch-preload", daemon=True).start()

    def ping(self) -> int:
        return len(self.pool)

    def preload(self, model: dict) -> int:
        """Every worker loads ``model`` (``source``, ``digest``, ``handler``) now; how many were asked."""
        if not model.get("source"):
            return 0
        return len(self.pool.preload(self.store_config, _model_of(model), self.cache_dir))

    def warmed(self, timeout_s: float) -> bool:
        """Whether the start-up preloads have ended, waiting up to ``timeout_s`` (what readiness waits for)."""
        return self._warm.wait(timeout_s)

    def _preload_registered(self) -> None:
        """At start: the newest registered versions, as many as a worker keeps loaded, on every worker.

        One model at a time, and no more once a job runs: the job has its own model loaded (``_JobRun.run``),
        and loading models it does not use would take the cores its first partitions need (on a fresh
        2-core cluster, three more models per worker loaded while the first job scored).
        """
        from modelpool.management.batch.model_cache import MAX_CACHED_MODELS  # its imports: not in the API's process

        deadline = time.monotonic() + WARM_UP_TIMEOUT_S
        try:
            for record in models_to_preload(Registry(self.store).list_models(), MAX_CACHED_MODELS):
                if self._jobs_running():
                    break
                calls = self.pool.preload(self.store_config, _model_of(record.model_dump()), self.cache_dir)
                ray.wait(calls, num_returns=len(calls), timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - a head start only: jobs load their models anyway
            logger.exception("could not preload the registered models on the batch workers")
        finally:
            self._warm.set()

    def _jobs_running(self) -> bool:
        with self._lock:
            return bool(self._running)

    def resume(self) -> int:
        """Start every job in object storage that is not finished (after a restart, or on request)."""
        started = 0
        for child in self.store.list_children("batches"):
            execution_id = child.rstrip("/")
            try:
                if read_job(self.store, execution_id).state not in FINAL_STATES:
                    started += self.submit(execution_id)
            except Exception:  # noqa: BLE001 - an unreadable job must not stop the others
                logger.exception("cannot resume batch %s", execution_id)
        return started

    def submit(self, execution_id: str) -> int:
        with self._lock:
            if execution_id in self._running:
                return 0
            self._running.add(execution_id)
        threading.Thread(target=self._run_safely, args=(execution_id,), name=f"batch-{execution_id}", daemon=True).start()
        return 1

    def _run_safely(self, execution_id: str) -> None:
        try:
            _JobRun(self, execution_id).run()
        except Exception as exc:  # noqa: BLE001 - recorded on the job for the user to read
            logger.exception("batch %s failed", execution_id)
            try:
                update_job(self.store, execution_id, state="Failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:  # noqa: BLE001
                logger.exception("could not record the failure of batch %s", execution_id)
        finally:
            self._release_archive(execution_id)
            with self._lock:
                self._running.discard(execution_id)

    def _release_archive(self, execution_id: str) -> None:
        """A job that ended gives back its hold on the model archive (see ``modelpool.management.archive_leases``)."""
        try:
            job = read_job(self.store, execution_id)
            if job.state not in FINAL_STATES or not job.source:
                return  # still to run (this scheduler stopped mid-job): the one that resumes it releases

            def still_registered() -> bool:
                record = Registry(self.store).get_model(job.service, job.version)
                return record is not None and record.source == job.source

            archive_leases.release(self.store, job.source, execution_id, still_registered)
        except Exception:  # noqa: BLE001 - a lease left behind only keeps an archive longer
            logger.exception("could not release the model archive of batch %s", execution_id)


class _JobRun:
    """One job: prepare the input, then keep up to parallelCount partitions on idle workers."""

    def __init__(self, scheduler: BatchScheduler, execution_id: str) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.execution_id = execution_id
        self.completed = 0
        self.failed = 0
        self.first_part_at: float | None = None

    def run(self) -> None:
        job = read_job(self.store, self.execution_id)
        if job.state in FINAL_STATES:
            return
        self.scheduler.preload(job.to_json())  # loading while the input is planned, not on the first partition
        job = update_job(self.store, self.execution_id, coordinator_started_at=time.time())
        job = self._prepare(job)
        done = set(results.completed_parts(self.store, self.execution_id))
        pending = [k for k in range(int(job.partitions)) if k not in done]
        totals = results.counts(self.store, self.execution_id)  # once, for the parts a previous run wrote
        self.completed, self.failed = totals["completed"], totals["failed"]
        job = update_job(self.store, self.execution_id, state="Running", **self._progress())
        in_flight: dict[Any, tuple[Any, int]] = {}   # call -> (worker, partition)
        losses: Counter = Counter()                  # partition -> workers lost while scoring it
        pool = self.scheduler.pool
        progress_due = False
        try:
            while pending or in_flight:
                if is_cancelled(self.store, self.execution_id):
                    self._stop(in_flight)
                    return
                while pending and len(in_flight) < job.parallel_count:
                    worker = pool.take()
                    if worker is None:
                        break
                    k = pending.pop(0)
                    ref = worker.score.remote(self.scheduler.store_config, self.execution_id, k, job.to_json(),
                                              self.scheduler.cache_dir)
                    in_flight[ref] = (worker, k)
                if progress_due:  # written once the freed workers have their next partitions: they never wait for it
                    update_job(self.store, self.execution_id, **self._progress())
                    progress_due = False
                if not in_flight:
                    time.sleep(0.05)
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                for ref in ready:
                    worker, k = in_flight.pop(ref)
                    try:
                        scored = ray.get(ref)  # a partition that failed all its retries fails the job
                    except WORKER_LOST:
                        losses[k] += 1
                        if losses[k] > RETRIES:
                            pool.give_back(worker)
                            raise
                        logger.warning("batch %s: the worker scoring partition %d was lost; scoring it again",
                                       self.execution_id, k)
                        pool.replace(worker)
                        pending.insert(0, k)
                        continue
                    except BaseException:
                        pool.give_back(worker)
                        raise
                    pool.give_back(worker)
                    progress_due = True
                    self.first_part_at = self.first_part_at or time.time()
                    self.completed += scored["completed"]
                    self.failed += scored["failed"]
        finally:
            for worker, _k in in_flight.values():  # cancelled or failed: the workers go back to the pool
                pool.give_back(worker)
        update_job(self.store, self.execution_id, state="Complete", finished_at=time.time(), **self._progress())

    def _stop(self, in_flight: dict) -> None:
        """Cancel: queued partitions never start; one already scoring may finish and stays readable.

        Its part can land after the cancel, so the totals are read from the parts once it settled.
        """
        for ref in in_flight:
            ray.cancel(ref)
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=60)
        totals = results.counts(self.store, self.execution_id)
        update_job(self.store, self.execution_id, state="Cancelled",
                   completed_items=totals["completed"], failed_items=totals["failed"])

    def _prepare(self, job: JobRecord) -> JobRecord:
        """Plan the partitions of an input_uri job (records jobs were written at submit).

        A Parquet input is scored in place, each worker reading only the row groups its rows sit
        in; anything else (CSV) is converted once into the job's own Parquet input.
        """
        if job.partitions is not None:
            return job
        from modelpool.management.batch import inputs

        def fetch(uri: str):
            return input_location(self.scheduler.store_config, self.store, uri)

        parquet = _parquet_shape(*fetch(job.input_uri))
        if parquet is not None:
            rows, columns, group_rows = parquet
            partition_rows = inputs.parquet_partition_rows(group_rows, job.parallel_count)
            return update_job(self.store, self.execution_id, partitions=max(1, -(-rows // partition_rows)),
                              partition_rows=partition_rows, total_items=rows, input_columns=columns,
                              input_parquet=job.input_uri, input_ready_at=time.time())

        table = inputs.read_input_uri(job.input_uri, fetch)
        partition_rows = inputs.partition_rows_for(table.num_rows, job.parallel_count)
        partitions = inputs.write_input(self.store, self.execution_id, table, partition_rows)
        return update_job(self.store, self.execution_id, partitions=partitions, partition_rows=partition_rows,
                          total_items=table.num_rows, input_columns=table.column_names, input_ready_at=time.time())

    def _progress(self) -> dict:
        """Counted from the workers' answers: re-reading every part per completion would be quadratic."""
        progress = {"completed_items": self.completed, "failed_items": self.failed}
        if self.first_part_at is not None:  # a resumed job keeps the time its first run recorded
            progress["first_part_at"] = self.first_part_at
        return progress


def _model_of(job_or_record: dict) -> dict:
    """What a worker needs to load a model, from a job (camelCase) or a registry record."""
    return {key: job_or_record.get(key) for key in ("source", "digest", "handler")}


def models_to_preload(records: list[ModelRecord], limit: int) -> list[ModelRecord]:
    """The ``limit`` most recently registered versions, newest first (a worker keeps ``limit`` loaded)."""
    return sorted(records, key=lambda record: record.registered_at, reverse=True)[:limit]


def _parquet_shape(filesystem, path: str):
    """(rows, columns, rows of each row group) from a Parquet footer, or None when the file is not Parquet."""
    import pyarrow.parquet as pq

    try:
        with filesystem.open_input_file(path) as source:
            metadata = pq.ParquetFile(source).metadata
            return (metadata.num_rows, list(metadata.schema.to_arrow_schema().names),
                    [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)])
    except Exception:  # noqa: BLE001 - not Parquet (or unreadable): the general reader decides and explains
        return None


def scheduler_name(store_config: dict) -> str:
    """One scheduler per object store: jobs live in a store, and so does the scheduler's memory."""
    identity = f"{store_config.get('uri')}|{store_config.get('s3_endpoint') or ''}"
    return f"{SCHEDULER_NAME}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def scheduler_handle(store_config: dict, cache_dir: str, workers: int):
    """The store's scheduler, started if it is not running (idempotent: any replica may call it).

    It runs on the head node (as Ray Train's state actor does, through the head's own resource):
    the head is the one node whose loss ends the cluster anyway. Left to Ray, it went wherever its
    caller was, and a worker node's death took it and its workers down mid-job (it resumes, but
    the tests saw the workers it had placed vanish with it).
    """
    return BatchScheduler.options(name=scheduler_name(store_config), namespace=NAMESPACE, lifetime="detached",
                                  get_if_exists=True, resources={HEAD_NODE_RESOURCE: 0.001}
                                  ).remote(store_config, cache_dir, workers)


def start_job(store_config: dict, cache_dir: str, workers: int, execution_id: str) -> None:
    ray.get(scheduler_handle(store_config, cache_dir, workers).submit.remote(execution_id))


def wait_warm(store_config: dict, cache_dir: str, workers: int, timeout_s: float) -> bool:
    """Wait until the store's scheduler has loaded the registered models on its workers (at most ``timeout_s``)."""
    return ray.get(scheduler_handle(store_config, cache_dir, workers).warmed.remote(timeout_s))


def resume_jobs(store_config: dict, cache_dir: str, workers: int) -> int:
    """Have the store's scheduler pick up every unfinished job; how many it started."""
    return ray.get(scheduler_handle(store_config, cache_dir, workers).resume.remote())
