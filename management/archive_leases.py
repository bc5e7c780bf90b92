"""Archive leases: a batch job keeps the model archive it scores with until the job ends.

A job is accepted against one registered model version and records its archive (``source``). If the
model is unregistered while the job runs, deleting the archive at once would fail every partition
still to be scored on a node that has not cached it: an accepted job lost. So a job takes a lease
(an empty object ``leases/<archive digest>/<execution id>``) when it is accepted and gives it back when
it reaches a final state; unregister deletes the archive only when no lease is held, and the last job
to end deletes an archive whose model is gone. Leases live in object storage beside the jobs, so
they survive restarts of the management replica and of the scheduler.

Every step is idempotent and the order makes the race harmless: unregister removes the registry
record before it looks for leases, and a job removes its lease before it looks at the registry, so
whichever looks second sees the other's change and deletes the archive (deleting twice is fine).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.archive_fetch import STORE_SCHEME

logger = logging.getLogger(__name__)

PREFIX = "leases"


def _folder(source: str) -> str:
    return f"{PREFIX}/{hashlib.sha256(source.encode()).hexdigest()[:32]}"


def take(store: ObjectStore, source: str, execution_id: str) -> None:
    """Hold ``source`` for the job (before the job is written: a job never exists without its lease)."""
    if source.startswith(STORE_SCHEME):
        store.write_bytes(f"{_folder(source)}/{execution_id}", b"")


def holders(store: ObjectStore, source: str) -> list[str]:
    """Execution ids of the jobs that hold ``source``."""
    return store.list_children(_folder(source)) if source.startswith(STORE_SCHEME) else []


def delete_archive_unless_held(store: ObjectStore, source: str) -> list[str]:
    """Delete a model's stored archive unless a job holds it; the holders (empty when deleted)."""
    if not source.startswith(STORE_SCHEME):
        return []
    held_by = holders(store, source)
    if not held_by:
        store.delete(source[len(STORE_SCHEME):])
    return held_by


def release(store: ObjectStore, source: str, execution_id: str, still_registered: Callable[[], bool]) -> None:
    """The job has ended: give its lease back, and delete the archive if its model is gone and no job holds it."""
    if not source.startswith(STORE_SCHEME):
        return
    store.delete(f"{_folder(source)}/{execution_id}")
    if not still_registered() and not delete_archive_unless_held(store, source):
        logger.info("deleted archive %s: its model was unregistered while batch %s ran", source, execution_id)
