"""What the soak's finished batch jobs left in the object store, judged key by key.

What a job writes (``modelpool.management.batch``): at submit ``batches/{id}/input.parquet`` (records jobs),
``batches/{id}/job.json``, a lease ``leases/{archive digest}/{id}`` (``management.archive_leases``) and, with an
``Idempotency-Key``, ``batch-requests/{sha256(key)[:32]}``; while scoring ``results/part-NNNNN.parquet`` and
``artifacts/{row}/{file}``, each written through a temp object (``.tmp-<hex>...``, renamed into place) and a local
temp directory ``{cache}/batch-tmp/{id[:8]}-...`` per chunk; a cancel writes ``batches/{id}/cancelled``. What is
cleaned when the job ends: the lease (released by the scheduler once the state is final), the temp objects and
the local temp directories. Nothing else is ever deleted: results stay readable, as the API promises.

So, for each of the soak's own jobs that ended, every key is one of:

* **served**: read by the API after the end (job.json, the parts the job planned, artifacts of its rows, the
  cancel marker of a Cancelled job);
* **retained**: read by nothing once the job ended, and deleted by nothing either: ``input.parquet`` (only
  scoring reads it) and the idempotency record (read only when the same key is sent again; it never expires).
  Reported with their bytes, not failed: they are the design today, and the report says how much they hold;
* **stray**: should be gone or never have been: a temp object, the lease of a finished job, a part or an
  artifact outside the job's plan, a name no code writes, a local temp directory of the job.

Only local object stores are read (``HOME/objects``, the default); ``s3://`` stores are reported as not checked.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional

FINAL_STATES = ("Complete", "Failed", "Cancelled")
_TEMP = re.compile(r"^\.tmp-[0-9a-f]{32}(-|$)")     # modelpool.cluster.object_locations' temp names
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_ARTIFACT_ROW = re.compile(r"^\d+$")
EXAMPLES = 20


def request_key(idempotency_key: str) -> str:
    """Where management keeps the execution id a submit's Idempotency-Key was answered with (batch/service.py)."""
    return f"batch-requests/{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}"


def _job_key_class(rest: list[str], job: Mapping) -> str:
    """served, retained or stray, for the part of a key after ``batches/{id}/``."""
    name = rest[-1]
    if _TEMP.match(name):
        return "stray"
    if rest == ["job.json"]:
        return "served"
    if rest == ["input.parquet"]:
        return "retained"
    if rest == ["cancelled"]:
        return "served" if job.get("state") == "Cancelled" else "stray"
    if len(rest) == 2 and rest[0] == "results":
        match = _PART.match(name)
        return "served" if match and int(match.group(1)) < int(job.get("partitions") or 0) else "stray"
    if len(rest) == 3 and rest[0] == "artifacts" and _ARTIFACT_ROW.match(rest[1]):
        return "served" if int(rest[1]) < int(job.get("totalItems") or 0) else "stray"
    return "stray"


def classify(keys: Mapping[str, int], jobs: Mapping[str, Mapping], ours: Iterable[str],
             idempotency_keys: Iterable[str] = (), local_tmp: Iterable[str] = ()) -> dict:
    """Judge the keys (key -> bytes, temp objects included) of the jobs in ``ours`` that ended.

    ``jobs``: execution id -> its job.json (camelCase); ``local_tmp``: names in the cache's ``batch-tmp``.
    """
    ours = set(ours)
    ended = {i for i in ours if (jobs.get(i) or {}).get("state") in FINAL_STATES}
    requests = {request_key(k) for k in idempotency_keys}
    counts = {"served": 0, "retained": 0, "stray": 0}
    retained = {"input": [0, 0], "idempotency": [0, 0]}  # [keys, bytes]
    stray: list[str] = []

    def judged(key: str, verdict: str, size: int, kind: str = "") -> None:
        counts[verdict] += 1
        if verdict == "retained":
            retained[kind][0] += 1
            retained[kind][1] += size
        elif verdict == "stray":
            stray.append(key)

    for key, size in sorted(keys.items()):
        parts = key.split("/")
        if parts[0] == "batches" and len(parts) >= 3 and parts[1] in ended:
            verdict = _job_key_class(parts[2:], jobs[parts[1]])
            judged(key, verdict, size, "input")
        elif parts[0] == "leases" and len(parts) == 3 and parts[2] in ended:
            judged(key, "stray", size)
        elif parts[0] == "leases" and len(parts) == 3 and _TEMP.match(parts[2]):
            judged(key, "stray", size)
        elif key in requests:
            judged(key, "retained", size, "idempotency")
        elif parts[0] == "batch-requests" and _TEMP.match(parts[-1]):
            judged(key, "stray", size)
    for name in sorted(local_tmp):
        if any(name.startswith(f"{i[:8]}-") for i in ended):
            judged(f"local:batch-tmp/{name}", "stray", 0)
    return {"jobs_ended": len(ended), "jobs_unfinished": len(ours - ended), **counts,
            "retained_input": {"keys": retained["input"][0], "bytes": retained["input"][1]},
            "retained_idempotency": {"keys": retained["idempotency"][0], "bytes": retained["idempotency"][1]},
            "stray_count": len(stray), "stray": stray[:EXAMPLES]}


# ------------------------------------------------------------------------------------------ reading a local store
def list_local(root: Path) -> dict[str, int]:
    """Every file under ``root`` (temp objects included: ObjectStore.list hides them) -> its size."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            try:
                found[path.relative_to(root).as_posix()] = path.stat().st_size
            except OSError:  # renamed or deleted while walking
                continue
    return found


def read_jobs(root: Path, execution_ids: Iterable[str]) -> dict[str, dict]:
    jobs = {}
    for execution_id in execution_ids:
        try:
            jobs[execution_id] = json.loads((root / "batches" / execution_id / "job.json").read_text())
        except (OSError, ValueError):
            continue
    return jobs


def scan(objects_dir: Optional[str], cache_dir: Optional[Path], execution_ids: Iterable[str],
         idempotency_keys: Iterable[str] = ()) -> dict:
    """The leftovers of the soak's jobs in a local object store (``{"error": ...}`` when it cannot be read)."""
    if not objects_dir or "://" in objects_dir and not objects_dir.startswith("file://"):
        return {"error": f"object store {objects_dir!r} not checked: only a local directory is read", "stray_count": 0}
    root = Path(objects_dir.removeprefix("file://")).expanduser()
    if not root.is_dir():
        return {"error": f"object store {root} not found", "stray_count": 0}
    execution_ids = list(execution_ids)
    tmp = cache_dir / "batch-tmp" if cache_dir else None
    local_tmp = [p.name for p in tmp.iterdir()] if tmp and tmp.is_dir() else []
    return classify(list_local(root), read_jobs(root, execution_ids), execution_ids, idempotency_keys, local_tmp)
