"""Object-store keys of a batch job, and the checks on user-supplied parts of them.

Every key of a job is built here so the layout (``batches/{execution_id}/...``) is written down
once; execution ids and artifact names come from URLs, so they are checked before they become
part of a key.
"""
from __future__ import annotations

import re
import uuid

from modelpool.deployments.errors import RequestError

BATCHES_PREFIX = "batches"
MAX_ARTIFACT_NAME = 255

_EXECUTION_ID = re.compile(r"^[0-9a-f]{32}$")
_PART_NAME = re.compile(r"^part-(\d{5,})\.parquet$")


def new_execution_id() -> str:
    """A fresh id (uuid4 hex): unguessable, and exactly what :func:`check_execution_id` accepts."""
    return uuid.uuid4().hex


def check_execution_id(execution_id: str) -> str:
    """Return ``execution_id`` if it can be one of ours; otherwise it names no job (404)."""
    if not isinstance(execution_id, str) or not _EXECUTION_ID.fullmatch(execution_id):
        raise RequestError(
            f"no batch execution {execution_id!r}: execution ids are 32 lowercase hex characters "
            "as returned when the job was started",
            status=404, field="execution_id",
        )
    return execution_id


def check_artifact_name(name: str) -> str:
    """Return ``name`` if it is one plain file name (it becomes the last segment of a key)."""
    problem = _artifact_name_problem(name)
    if problem:
        raise RequestError(
            f"artifact name {name!r} is not allowed ({problem}); use a single file name of 1-"
            f"{MAX_ARTIFACT_NAME} characters without '/', '\\', '..' or NUL, not starting with '.'",
            field="artifact",
        )
    return name


def _artifact_name_problem(name: object) -> str:
    if not isinstance(name, str) or not name:
        return "empty"
    if len(name) > MAX_ARTIFACT_NAME:
        return f"longer than {MAX_ARTIFACT_NAME} characters"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if "\x00" in name:
        return "it contains NUL"
    if ".." in name:
        return "it contains '..'"
    if name.startswith("."):
        return "it starts with '.'"
    return ""


def is_artifact_name(name: str) -> bool:
    """True when :func:`check_artifact_name` would accept ``name`` (for skipping, not refusing)."""
    return not _artifact_name_problem(name)


def check_row_index(index: int) -> int:
    """A row index from a URL: a non-negative integer, else no such row (404)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise RequestError(f"row index {index!r} must be an integer >= 0", status=404, field="index")
    return index


# ------------------------------------------------------------------------------------------ keys


def job_prefix(execution_id: str) -> str:
    """Everything of one job (delete it to drop the job)."""
    return f"{BATCHES_PREFIX}/{check_execution_id(execution_id)}"


def job_key(execution_id: str) -> str:
    return f"{job_prefix(execution_id)}/job.json"


def input_key(execution_id: str) -> str:
    return f"{job_prefix(execution_id)}/input.parquet"


def results_prefix(execution_id: str) -> str:
    return f"{job_prefix(execution_id)}/results"


def part_name(partition: int) -> str:
    return f"part-{partition:05d}.parquet"


def part_key(execution_id: str, partition: int) -> str:
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"partition must be an integer >= 0, got {partition!r}")
    return f"{results_prefix(execution_id)}/{part_name(partition)}"


def parse_part_name(name: str) -> int | None:
    """The partition number of a results part's file name, None for anything else."""
    match = _PART_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def artifacts_prefix(execution_id: str, index: int) -> str:
    return f"{job_prefix(execution_id)}/artifacts/{check_row_index(index)}"


def artifact_key(execution_id: str, index: int, name: str) -> str:
    return f"{artifacts_prefix(execution_id, index)}/{check_artifact_name(name)}"
