"""The batch API's core (no HTTP): submit, list, state, results, artifacts, cancel.

A job is accepted only after its description (and, for records, its input table) is in object
storage; the scheduler then runs it on Ray. Everything a user reads comes from object storage, so
the answers survive restarts of the management replica, the scheduler, or the whole cluster.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from typing import Any, Optional

from modelpool.cluster.object_store import ObjectNotFound, ObjectStore
from modelpool.cluster.settings import Settings
from modelpool.deployments.errors import RequestError
from modelpool.deployments.redact import public_message
from modelpool.management import archive_leases
from modelpool.management.batch import inputs, jobs, layout, results, scheduler
from modelpool.management.batch.graph_scoring import graph_source
from modelpool.management.batch.jobs import JobRecord
from modelpool.management.batch.params import BatchParams
from modelpool.management.params import check_idempotency_key
from modelpool.management.registry import Registry

DEFAULT_RESULTS_PAGE = 1_000   # results travel in pages: a job may hold millions of rows
MAX_RESULTS_PAGE = 100_000
KEY_LOCK_STRIPES = 64
#: job.json keys a state answer always carries, and the timings it carries once they are known
_STATE_KEYS = ("service", "version", "state", "totalItems", "completedItems", "failedItems", "parallelCount",
               "createdAt", "updatedAt")
_TIMING_KEYS = ("coordinatorStartedAt", "inputReadyAt", "firstPartAt", "finishedAt")


def _request_key(idempotency_key: str) -> str:
    """Where the execution id a key was first answered with is kept (hashed: a key is the caller's text)."""
    return f"batch-requests/{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}"


#: W3C trace context's ``traceparent`` (version 00): the only shape a job keeps to hand its partitions
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class BatchService:
    def __init__(self, settings: Settings, store: ObjectStore, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        # A key's check and its job's creation happen as one; striped, so submits with other keys
        # (the clients send one with every submit) do not wait for a big upload.
        self._key_locks = [threading.Lock() for _ in range(KEY_LOCK_STRIPES)]

    # ------------------------------------------------------------------ submit
    def submit(self, body: Any, idempotency_key: Optional[str] = None, traceparent: Optional[str] = None) -> dict:
        """Accept a job; with an ``Idempotency-Key`` already used, answer with that job instead of a second one.

        A submit whose answer is lost (a dropped connection, a management replica killed after the
        job was written) can then be sent again without scoring everything twice.
        """
        check_idempotency_key(idempotency_key)
        if idempotency_key is None:
            return self._submit(body, traceparent)
        request_key = _request_key(idempotency_key)
        with self._key_locks[int(request_key[-8:], 16) % KEY_LOCK_STRIPES]:
            earlier = self._accepted_with(request_key)
            if earlier is not None:
                return {"executionId": earlier, "state": self._job(earlier).state}
            answer = self._submit(body, traceparent)
            self.store.write_bytes(request_key, answer["executionId"].encode())
            return answer

    def _accepted_with(self, request_key: str) -> Optional[str]:
        try:
            return self.store.read_bytes(request_key).decode()
        except ObjectNotFound:
            return None

    def _submit(self, body: Any, traceparent: Optional[str] = None) -> dict:
        params = BatchParams.parse(body)
        graph = self.registry.get_graph(params.service) if params.version is None else None
        record = None if graph is not None else self._service(params.service, params.version)
        execution_id = uuid.uuid4().hex
        now = time.time()
        if record is None:  # a graph: its replicas score the chunks (graph_scoring), no archive to hold
            job = JobRecord(execution_id=execution_id, service=params.service, version="", source=graph_source(
                params.service), digest="", parallel_count=params.parallel_count, state="Pending", created_at=now,
                updated_at=now)
        else:
            job = JobRecord(execution_id=execution_id, service=record.name, version=record.version,
                            source=record.source, digest=record.digest, handler=record.handler,
                            model_inputs=record.manifest.get("inputs", []), parallel_count=params.parallel_count,
                            state="Pending", created_at=now, updated_at=now)
        if traceparent is not None and TRACEPARENT.fullmatch(traceparent):  # W3C: an invalid one is ignored
            job = job.changed(traceparent=traceparent)
        if params.records is not None:
            table = inputs.records_to_table(params.records)
            rows = inputs.partition_rows_for(table.num_rows, params.parallel_count)
            job = job.changed(total_items=table.num_rows, partition_rows=rows, input_columns=table.column_names,
                              partitions=inputs.write_input(self.store, execution_id, table, rows))
        else:
            self._check_readable(params.input_uri)
            job = job.changed(input_uri=params.input_uri)
        if record is not None:
            self._hold_archive(record, execution_id)
        jobs.write_job(self.store, job)
        self._start(execution_id)
        return {"executionId": execution_id, "state": "Pending"}

    def _hold_archive(self, record, execution_id: str) -> None:
        """Lease the model's archive for the job; the model unregistered meanwhile is a 404, as before."""
        archive_leases.take(self.store, record.source, execution_id)
        current = self.registry.get_model(record.name, record.version)
        if current is None or current.source != record.source:
            archive_leases.release(self.store, record.source, execution_id, still_registered=lambda: False)
            raise RequestError(f"service '{record.name}' version '{record.version}' was unregistered while the batch "
                               "was being accepted", status=404, field="service")

    def _check_readable(self, uri: str) -> None:
        """A missing input is a 400 now, not a Failed job later (the scheduler reads the rows)."""
        import pyarrow.fs as pafs

        try:
            filesystem, path = jobs.input_location(self.settings.object_store_config, self.store, uri)
            info = filesystem.get_file_info(path)
        except (OSError, ValueError) as exc:
            raise RequestError(f"cannot read input_uri {uri}: {exc}", field="input_uri") from None
        if info.type != pafs.FileType.File:
            raise RequestError(f"cannot read input_uri {uri}: no such object; upload the Parquet, CSV or TSV file first",
                               field="input_uri")

    def _start(self, execution_id: str) -> None:
        scheduler.start_job(self.settings.object_store_config, str(self.settings.cache_path),
                            self.settings.batch_workers, execution_id)

    def resume_unfinished(self) -> int:
        """After a restart: the scheduler (started now if needed) picks up every unfinished job."""
        return scheduler.resume_jobs(self.settings.object_store_config, str(self.settings.cache_path),
                                     self.settings.batch_workers)

    def wait_warm(self, timeout_s: float = scheduler.WARM_UP_TIMEOUT_S) -> bool:
        """Wait (bounded) until the batch workers hold the registered models, so that a fresh cluster's
        first job pays no model load; False when they did not in time (jobs then load them themselves)."""
        return scheduler.wait_warm(self.settings.object_store_config, str(self.settings.cache_path),
                                   self.settings.batch_workers, timeout_s)

    # ------------------------------------------------------------------ read
    def list(self, service: Optional[str], version: Optional[str]) -> list[str]:
        matching = [j for j in self._jobs() if (service is None or j.service == service)
                    and (version is None or j.version == version)]
        return [j.execution_id for j in sorted(matching, key=lambda j: j.created_at or 0)]

    def state(self, execution_id: str, show_partial_results: bool, offset: int = 0,
              limit: int = DEFAULT_RESULTS_PAGE) -> dict:
        job = self._job(execution_id)
        stored = job.to_json()
        answer = {"executionId": execution_id, **{key: stored[key] for key in _STATE_KEYS}}
        for key in _TIMING_KEYS:
            if stored[key]:
                answer[key] = stored[key]  # where the time went: start-up, input, first part, the rest
        if job.error:
            answer["error"] = self._public(job.error)
        if show_partial_results:
            if not 1 <= limit <= MAX_RESULTS_PAGE:
                raise RequestError(f"limit must be from 1 to {MAX_RESULTS_PAGE} rows per page", field="limit")
            page = [self._public_row(row) for row in results.read_results(self.store, execution_id, offset=offset,
                                                                          limit=limit)]
            answer["results"] = page
            answer["nextOffset"] = offset + len(page) if len(page) == limit else None
        return answer

    def result(self, execution_id: str, index: int) -> dict:
        job = self._job(execution_id)
        if job.total_items is None:
            raise RequestError("the job's input is still being read; try again shortly", status=404, field="index")
        return self._public_row(results.row_result(self.store, execution_id, index, job.total_items,
                                                   int(job.partition_rows)))

    def artifacts(self, execution_id: str, index: int) -> list[str]:
        self.result(execution_id, index)  # 404 for rows out of range or not scored yet
        return results.list_artifacts(self.store, execution_id, index)

    def artifact(self, execution_id: str, index: int, name: str) -> bytes:
        layout.check_artifact_name(name)
        self.result(execution_id, index)
        return results.read_artifact(self.store, execution_id, index, name)

    # ------------------------------------------------------------------ cancel
    def cancel(self, execution_id: str) -> dict:
        job = self._job(execution_id)
        if job.state not in jobs.FINAL_STATES:
            self.store.write_bytes(jobs.cancel_key(execution_id), b"")
            job = self._job(execution_id)
        return {"executionId": execution_id, "state": job.state}

    # ------------------------------------------------------------------ helpers
    def _public(self, message: str) -> str:
        """A job's or a row's error as stored (a handler's exception text), without server paths unless --debug."""
        return message if self.settings.debug else public_message(message)

    def _public_row(self, row: dict) -> dict:
        return {**row, "error": self._public(row["error"])} if row.get("error") else row

    def _job(self, execution_id: str) -> JobRecord:
        layout.check_execution_id(execution_id)
        try:
            return jobs.read_job(self.store, execution_id)
        except ObjectNotFound:
            raise RequestError(f"no batch execution '{execution_id}'", status=404, field="execution_id") from None

    def _jobs(self) -> list[JobRecord]:
        found = []
        for child in self.store.list_children("batches"):
            try:
                found.append(jobs.read_job(self.store, child.rstrip("/")))
            except (ObjectNotFound, ValueError):
                continue
        return found

    def _service(self, name: str, version: Optional[str]):
        """The registered version a batch names (the default one when ``version`` is None), else a 404."""
        version = version or self.registry.get_default(name)
        record = self.registry.get_model(name, version) if version else None
        if record is None:
            raise RequestError(f"unknown service '{name}'" + (f" version '{version}'" if version else "") +
                               "; name a registered model, or a graph (without a version)", status=404,
                               field="service")
        return record
