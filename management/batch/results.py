"""Reading a job's results back: parts, counts, single rows and artifacts.

Parts are complete when they exist (each is written atomically), so everything here reads what
is there without coordination with running tasks. Reads touch as little as possible: counts read
one column, a single row reads one part's one row group.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modelpool.cluster.object_store import ObjectNotFound, ObjectStore
from modelpool.deployments.errors import RequestError
from modelpool.management.batch.layout import (
    artifact_key,
    artifacts_prefix,
    check_artifact_name,
    check_row_index,
    parse_part_name,
    part_key,
    results_prefix,
)
from modelpool.management.batch.scoring import FAILED, RESERVED_COLUMNS, SUCCESS


def completed_parts(store: ObjectStore, execution_id: str) -> list[int]:
    """Partitions whose results part has been written, ascending."""
    prefix = results_prefix(execution_id)
    parts = (parse_part_name(name) for name in store.list_children(prefix))
    return sorted(p for p in parts if p is not None)


def read_results(store: ObjectStore, execution_id: str, *, offset: int = 0,
                 limit: Optional[int] = None) -> list[dict]:
    """Every row written so far, by index: ``{"index", "status", "error"?, "outputs"}``.

    ``offset``/``limit`` page through the rows present (parts wholly before the page are skipped
    from their footers, so paging through millions of rows stays cheap).
    """
    if offset < 0 or (limit is not None and limit < 0):
        raise RequestError("offset and limit must be >= 0", field="offset" if offset < 0 else "limit")
    rows: list[dict] = []
    skip = offset
    for partition in completed_parts(store, execution_id):
        if limit is not None and len(rows) >= limit:
            break
        with store.open_input(part_key(execution_id, partition)) as source:
            parquet = pq.ParquetFile(source)
            count = parquet.metadata.num_rows
            if skip >= count:
                skip -= count
                continue
            table = parquet.read().slice(skip)
        skip = 0
        if limit is not None:
            table = table.slice(0, limit - len(rows))
        rows.extend(_rows(table))
    return rows


def counts(store: ObjectStore, execution_id: str) -> dict:
    """``{"completed", "failed", "rows", "parts"}`` over the parts written so far.

    ``completed`` counts rows scored successfully, ``failed`` rows the model rejected, ``rows``
    both. Only the status column is read.
    """
    completed = failed = 0
    parts = completed_parts(store, execution_id)
    for partition in parts:
        with store.open_input(part_key(execution_id, partition)) as source:
            status = pq.read_table(source, columns=["status"]).column("status")
        failures = pc.sum(pc.equal(status, FAILED)).as_py() or 0
        failed += failures
        completed += len(status) - failures
    return {"completed": completed, "failed": failed, "rows": completed + failed, "parts": len(parts)}


def row_result(store: ObjectStore, execution_id: str, index: int, total_rows: int,
               partition_rows: int) -> dict:
    """One row's result, reading only the part (and row group) that holds it."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < total_rows:
        raise RequestError(f"row {index!r} does not exist; this job has rows 0 to {total_rows - 1}",
                           status=404, field="index")
    partition = index // partition_rows
    offset = index - partition * partition_rows
    try:
        source = store.open_input(part_key(execution_id, partition))
    except ObjectNotFound:
        raise RequestError(f"row {index} is not scored yet (its partition {partition} of "
                           f"{math.ceil(total_rows / partition_rows)} is still pending); ask again later",
                           status=404, field="index") from None
    with source:
        table = _read_row(pq.ParquetFile(source), offset)
    if table.num_rows != 1 or table.column("index")[0].as_py() != index:
        raise RuntimeError(f"results part {partition} of {execution_id} does not hold row {index} at "
                           f"position {offset}; the part was written with another partition size")
    return _rows(table)[0]


def _read_row(parquet: pq.ParquetFile, offset: int) -> pa.Table:
    metadata = parquet.metadata
    start = 0
    for group in range(metadata.num_row_groups):
        size = metadata.row_group(group).num_rows
        if offset < start + size:
            return parquet.read_row_group(group).slice(offset - start, 1)
        start += size
    return pa.table({"index": pa.array([], pa.int64())})


def _rows(table: pa.Table) -> list[dict]:
    """Rows as plain JSON values; a failed row has ``error`` and no outputs."""
    names = [n for n in table.column_names if n not in RESERVED_COLUMNS]
    indexes = table.column("index").to_pylist()
    statuses = table.column("status").to_pylist()
    errors = table.column("error").to_pylist()
    outputs = [table.column(n).to_pylist() for n in names]
    rows: list[dict] = []
    for i, (index, status, error) in enumerate(zip(indexes, statuses, errors)):
        row: dict[str, Any] = {"index": index, "status": status}
        if status == SUCCESS:
            row["outputs"] = {name: values[i] for name, values in zip(names, outputs)}
        else:
            row["error"] = error
            row["outputs"] = {}
        rows.append(row)
    return rows


def list_artifacts(store: ObjectStore, execution_id: str, index: int) -> list[str]:
    """Names of the files a row's scoring wrote (empty when it wrote none or is not scored yet)."""
    return store.list_children(artifacts_prefix(execution_id, check_row_index(index)))


def read_artifact(store: ObjectStore, execution_id: str, index: int, name: str) -> bytes:
    """One artifact's bytes; a bad name is a 400, a missing artifact a 404."""
    check_artifact_name(name)
    try:
        return store.read_bytes(artifact_key(execution_id, check_row_index(index), name))
    except ObjectNotFound:
        available = list_artifacts(store, execution_id, index)
        raise RequestError(f"row {index} has no artifact {name!r} (it has {available or 'none'})",
                           status=404, field="artifact") from None
