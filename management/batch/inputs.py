"""Turning what a user sent (records, or a Parquet/CSV/TSV URI) into a job's input table.

The input is written once as ``input.parquet`` with exactly one row group per partition, so a
scoring task reads its rows and nothing else, whichever backend the store is on.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.errors import RequestError
from modelpool.management.batch.layout import input_key

#: ``fetch(uri) -> (filesystem, path)``: how the caller resolves (and authorizes) an input URI.
Fetch = Callable[[str], "tuple[pafs.FileSystem, str]"]

_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv",)
_TSV_SUFFIXES = (".tsv", ".tab")
_SNIFF_BYTES = 64 * 1024
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")


# --------------------------------------------------------------------------------------- records


def records_to_table(records: Any) -> pa.Table:
    """Rows as objects (``{"col": value}``) or as lists (columns ``c0..cN-1``), or a DataFrame.

    Values must be numbers, booleans, strings or null; each column takes one kind, so a model
    never sees a string where the first rows had numbers. Errors name the first bad row.
    """
    if _is_dataframe(records):
        return _frame_to_table(records)
    if not isinstance(records, (list, tuple)):
        raise RequestError(f"records must be a list of rows, got {type(records).__name__}",
                           field="records")
    if not records:
        raise RequestError("records is empty; send at least one record", field="records")
    first = records[0]
    if isinstance(first, dict):
        names, columns = _object_rows(records)
    elif isinstance(first, (list, tuple)):
        names, columns = _list_rows(records)
    else:
        raise RequestError(
            f"record 0 is a {type(first).__name__}; send each record as an object "
            '({"column": value}) or a list of values', field="records[0]",
        )
    return pa.table({name: _column_array(name, values) for name, values in zip(names, columns)})


def _object_rows(records: Sequence[Any]) -> tuple[list[str], list[list[Any]]]:
    names = list(records[0].keys())
    if not names:
        raise RequestError("record 0 has no fields; send at least one column", field="records[0]")
    for name in names:
        if not isinstance(name, str) or not name:
            raise RequestError(f"record 0 has field name {name!r}; names must be non-empty strings",
                               field="records[0]")
    expected = set(names)
    columns: list[list[Any]] = [[] for _ in names]
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise RequestError(f"record {i} is a {type(row).__name__} but record 0 is an object; "
                               "send every record the same way", field=f"records[{i}]")
        if row.keys() != expected:
            missing = [n for n in names if n not in row]
            extra = [n for n in row if n not in expected]
            raise RequestError(f"record {i} has different fields than record 0 (missing {missing}, "
                               f"extra {extra}); every record needs the fields {names}",
                               field=f"records[{i}]")
        for column, name in zip(columns, names):
            column.append(row[name])
    return names, columns


def _list_rows(records: Sequence[Any]) -> tuple[list[str], list[list[Any]]]:
    width = len(records[0])
    if width == 0:
        raise RequestError("record 0 is an empty list; send at least one value per record",
                           field="records[0]")
    for i, row in enumerate(records):
        if not isinstance(row, (list, tuple)):
            raise RequestError(f"record {i} is a {type(row).__name__} but record 0 is a list; "
                               "send every record the same way", field=f"records[{i}]")
        if len(row) != width:
            raise RequestError(f"record {i} has {len(row)} values but record 0 has {width}; "
                               "every record needs the same number of values", field=f"records[{i}]")
    names = [f"c{j}" for j in range(width)]
    columns = [list(values) for values in zip(*records)]
    return names, columns


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _column_array(name: str, values: list[Any]) -> pa.Array:
    """One column of one kind; the first row of another kind is named in the error."""
    kind = "null"
    for i, value in enumerate(values):
        this = _kind(value)
        if this not in ("null", "boolean", "number", "string"):
            raise RequestError(f"record {i} has a {this} in {name!r}; values must be numbers, "
                               "booleans, strings or null", field=f"records[{i}]")
        if this == "null" or this == kind:
            continue
        if kind != "null":
            raise RequestError(f"record {i} has a {this} in {name!r} where earlier records have a "
                               f"{kind}; every value of a column must be of one kind",
                               field=f"records[{i}]")
        kind = this
    try:
        return pa.array(values, type=pa.null() if kind == "null" else None)
    except (pa.ArrowException, OverflowError, ValueError, TypeError) as exc:
        raise RequestError(f"column {name!r} cannot be stored: {exc}", field="records") from None


def _is_dataframe(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("pandas") and type(value).__name__ == "DataFrame"


def _frame_to_table(frame: Any) -> pa.Table:
    """A pandas DataFrame (what the SDK sends records from); its index is not a column."""
    if len(frame.index) == 0 or len(frame.columns) == 0:
        raise RequestError("records is empty; send at least one record", field="records")
    frame = frame.rename(columns=str)
    if frame.columns.duplicated().any():
        raise RequestError("records has duplicate column names; rename them", field="records")
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise RequestError(f"records cannot be stored as a table: {exc}", field="records") from None


# ------------------------------------------------------------------------------------------- uri


def read_input_uri(uri: str, fetch: Fetch) -> pa.Table:
    """Read a Parquet, CSV or TSV input (by suffix; otherwise Parquet, then CSV or TSV) through ``fetch``.

    Without a suffix, a first line with a tab and no comma is read as TSV (as the clients read records).

    Any failure is the user's to fix (wrong URI, no access, not a table, no rows), so it is a 400
    on ``input_uri`` that names the URI and the reason.
    """
    try:
        filesystem, path = fetch(uri)
    except RequestError:
        raise
    except Exception as exc:
        raise _uri_error(uri, exc) from None
    fmt = _format_of(path)
    readers = {"parquet": [_read_parquet], "csv": [_read_csv], "tsv": [_read_tsv]}.get(
        fmt, [_read_parquet, _read_delimited])
    problems = []
    table = None
    for reader in readers:
        try:
            table = reader(filesystem, path)
            break
        except FileNotFoundError:
            raise RequestError(f"input_uri {uri!r} does not exist", field="input_uri") from None
        except Exception as exc:
            problems.append(exc)
    if table is None:
        raise _uri_error(uri, problems[-1] if len(problems) == 1 else
                         "it is neither Parquet nor CSV/TSV (" + "; ".join(map(_reason, problems)) + ")")
    if table.num_rows == 0 or table.num_columns == 0:
        raise RequestError(f"input_uri {uri!r} holds no rows; send a table with at least one row",
                           field="input_uri")
    return table


def _format_of(path: str) -> str:
    name = path.lower().rstrip("/")
    if name.endswith(_COMPRESSION_SUFFIXES):  # text compressed as a whole: .csv.gz, .tsv.zst
        name = name.rsplit(".", 1)[0]
    elif name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_TSV_SUFFIXES):
        return "tsv"
    return ""


def _read_parquet(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    return pq.read_table(path, filesystem=filesystem)


def _read_csv(filesystem: pafs.FileSystem, path: str, delimiter: str = ",") -> pa.Table:
    # open_input_stream detects .gz/.bz2/.zst/.lz4 compression from the name.
    with filesystem.open_input_stream(path) as stream:
        return pacsv.read_csv(stream, parse_options=pacsv.ParseOptions(delimiter=delimiter))


def _read_tsv(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    return _read_csv(filesystem, path, "\t")


def _read_delimited(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    """A file without a telling suffix: TSV when its first line has a tab and no comma, else CSV."""
    with filesystem.open_input_stream(path) as stream:
        first_line = stream.read(_SNIFF_BYTES).split(b"\n", 1)[0]
    tabs_only = b"\t" in first_line and b"," not in first_line
    return _read_tsv(filesystem, path) if tabs_only else _read_csv(filesystem, path)


def _reason(exc: Any) -> str:
    if isinstance(exc, str):
        return exc
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _uri_error(uri: str, exc: Any) -> RequestError:
    return RequestError(f"cannot read input_uri {uri!r}: {_reason(exc)}", field="input_uri")


# ---------------------------------------------------------------------------------- partitioning


def partition_rows_for(total_rows: int, parallel_count: int, min_rows: int = 1_000,
                       max_rows: int = 200_000) -> int:
    """Rows per partition: about four partitions per parallel task, so a slow task or a retry
    does not leave the others idle, but never so small that per-task overhead dominates."""
    if total_rows < 0 or parallel_count < 1 or min_rows < 1 or max_rows < min_rows:
        raise ValueError(f"need total_rows >= 0, parallel_count >= 1 and 1 <= min_rows <= max_rows, "
                         f"got {total_rows}, {parallel_count}, {min_rows}, {max_rows}")
    target = math.ceil(total_rows / (parallel_count * 4)) if total_rows else min_rows
    return max(min_rows, min(max_rows, target))


def parquet_partition_rows(group_rows: Sequence[int], parallel_count: int) -> int:
    """Rows per partition of a Parquet input scored in place, from the rows of each of its row groups.

    Fewer row groups than ``parallel_count`` (pyarrow writes up to a million rows as one group): the
    rows are cut into ``parallel_count`` ranges, so every worker takes part; each reads the group its
    range lies in and keeps its slice (reading a whole group and slicing it costs no more than
    reading part of it with ``iter_batches``: measured, 1M rows of four doubles, ~20 ms either way).
    Enough groups: partitions of whole groups, never smaller than one (so a group is not read by
    several partitions); with groups of one size (as writers make them), a partition is a whole number
    of groups, so each group is read exactly once.
    """
    rows = sum(group_rows)
    target = partition_rows_for(rows, parallel_count)
    if rows == 0:
        return target
    if len(group_rows) < parallel_count:
        return max(target, math.ceil(rows / parallel_count))
    size = group_rows[0]
    if size > 0 and all(n == size for n in group_rows[:-1]) and group_rows[-1] <= size:
        return size * max(1, target // size)
    return max(target, math.ceil(rows / len(group_rows)))


def partition_count(total_rows: int, partition_rows: int) -> int:
    return math.ceil(total_rows / partition_rows)


def write_input(store: ObjectStore, execution_id: str, table: pa.Table, partition_rows: int) -> int:
    """Write ``input.parquet`` (atomically) with one row group per partition; returns partitions.

    The row group is the unit a task reads, so partition ``k`` is exactly rows
    ``[k * partition_rows, (k + 1) * partition_rows)``.
    """
    if isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1:
        raise ValueError(f"partition_rows must be an integer >= 1, got {partition_rows!r}")
    if table.num_rows == 0:
        raise RequestError("the input has no rows; send at least one row", field="records")
    with store.open_output(input_key(execution_id)) as out:
        pq.write_table(table, out, row_group_size=partition_rows)
    return partition_count(table.num_rows, partition_rows)
