"""A batch job's state in object storage: job.json (its typed record), the cancel marker, where the input lives.

Shared by the API (``service``) and the scheduler that runs jobs on Ray (``scheduler``); nothing
here holds state of its own, so any process can read or resume a job.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from modelpool.cluster.object_store import ObjectStore, object_store_from_settings
from modelpool.management.batch import layout

FINAL_STATES = ("Complete", "Failed", "Cancelled")
JobState = Literal["Pending", "Running", "Complete", "Failed", "Cancelled"]


class JobRecord(BaseModel):
    """job.json: what a job scores, with what, and how far it got. Stored in camelCase (``executionId``).

    Written at submit and then only by the scheduler. Every field but the job's identity has a default
    and unknown keys are kept, so job.json files written before a field existed (or after, by a newer
    release) still read and write back whole.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    execution_id: str
    service: str
    version: str
    state: JobState = "Pending"
    parallel_count: int
    # the model version's archive, as registered when the job was accepted
    source: Optional[str] = None
    digest: Optional[str] = None
    handler: Optional[str] = None
    model_inputs: list[dict[str, Any]] = []
    requested_outputs: Optional[list[str]] = None
    # the input: records written at submit (partitions known), or an input_uri planned by the scheduler
    input_uri: Optional[str] = None
    input_parquet: Optional[str] = None  # a Parquet input_uri scored in place
    input_columns: Optional[list[str]] = None
    total_items: Optional[int] = None
    partitions: Optional[int] = None
    partition_rows: Optional[int] = None
    # progress, and where the time went: start-up, input, first part, the rest
    completed_items: int = 0
    failed_items: int = 0
    error: Optional[str] = None
    created_at: Optional[float] = None
    updated_at: Optional[float] = None
    coordinator_started_at: Optional[float] = None
    input_ready_at: Optional[float] = None
    first_part_at: Optional[float] = None
    finished_at: Optional[float] = None
    # the submitting request's W3C trace context (--tracing): each partition's span joins that trace
    traceparent: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """job.json's content (camelCase keys), also what a scoring worker is handed."""
        return self.model_dump(mode="json", by_alias=True)

    def changed(self, **changes: Any) -> "JobRecord":
        """A copy with ``changes`` (field names) applied and validated."""
        return JobRecord.model_validate({**self.model_dump(), **changes})


def open_job_store(config: dict) -> ObjectStore:
    return object_store_from_settings(config["uri"], config.get("s3_endpoint"), config.get("s3_region"))


def is_cancelled(store: ObjectStore, execution_id: str) -> bool:
    return store.exists(cancel_key(execution_id))


def cancel_key(execution_id: str) -> str:
    """A marker object of its own: a cancel can never be lost to a concurrent job.json update."""
    return layout.job_key(execution_id).rsplit("/", 1)[0] + "/cancelled"


def write_job(store: ObjectStore, job: JobRecord) -> None:
    store.write_json(layout.job_key(job.execution_id), job.to_json())


def read_job(store: ObjectStore, execution_id: str) -> JobRecord:
    """The job as stored; Cancelled once its cancel marker is there. A job.json that is no job: ValueError."""
    job = JobRecord.model_validate(store.read_json(layout.job_key(execution_id)))
    if job.state not in FINAL_STATES and is_cancelled(store, execution_id):
        job.state = "Cancelled"
    return job


def update_job(store: ObjectStore, execution_id: str, **changes: Any) -> JobRecord:
    """Read-modify-write of job.json (after submit only the scheduler writes it; cancel is a marker).

    ``changes`` are :class:`JobRecord` field names (``state="Running"``, ``completed_items=...``). An ended
    job keeps its state, and one that was unfinished when its cancel marker appeared is Cancelled, even when
    a partition that was already scoring completes it afterwards: the cancel was answered Cancelled, and
    every later read agrees.
    """
    stored = JobRecord.model_validate(store.read_json(layout.job_key(execution_id)))
    job = stored.changed(**changes, updated_at=time.time())
    if stored.state in FINAL_STATES:
        job.state = stored.state  # an ended job stays as it ended
    elif is_cancelled(store, execution_id):
        job.state = "Cancelled"
    write_job(store, job)
    return job


def input_location(store_config: dict, store: ObjectStore, uri: str):
    """(filesystem, path) of an input_uri: s3:// through the configured endpoint, objects:// in this store."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        other = ObjectStore(f"s3://{bucket}", s3_endpoint=store_config.get("s3_endpoint"), s3_region=store_config.get("s3_region"))
        return other.filesystem, other.path(key)
    return store.filesystem, store.path(uri.removeprefix("objects://"))
