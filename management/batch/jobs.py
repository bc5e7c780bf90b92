"""A batch job's state in object storage: job.json, the cancel marker, where the input lives.

Shared by the API (``service``) and the scheduler that runs jobs on Ray (``scheduler``); nothing
here holds state of its own, so any process can read or resume a job.
"""
from __future__ import annotations

import time
from typing import Any

from cluster.object_store import ObjectStore, object_store_from_settings
from management.batch import layout

FINAL_STATES = ("Complete", "Failed", "Cancelled")


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
    """Read-modify-write of job.json (after submit only the scheduler writes it; cancel is a marker)."""
    job = store.read_json(layout.job_key(execution_id))
    job.update(changes, updatedAt=time.time())
    if is_cancelled(store, execution_id) and job.get("state") not in ("Complete", "Failed"):
        job["state"] = "Cancelled"
    store.write_json(layout.job_key(execution_id), job)
    return job


def input_location(store_config: dict, store: ObjectStore, uri: str):
    """(filesystem, path) of an input_uri: s3:// through the configured endpoint, objects:// in this store."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        other = ObjectStore(f"s3://{bucket}", s3_endpoint=store_config.get("s3_endpoint"), s3_region=store_config.get("s3_region"))
        return other.filesystem, other.path(key)
    return store.filesystem, store.path(uri.removeprefix("objects://"))
