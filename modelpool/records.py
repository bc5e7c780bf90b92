"""The records a batch job scores, from whatever the caller has: Machine Learning Server's inputs and more.

ML Server's SDK takes a pandas DataFrame, a dict of columns (``{"hp": [...], "wt": [...]}``) or a
list of records, and its documentation speaks of CSV and TSV data too. :func:`batch_records` takes
all of these (and numpy arrays) and returns what ``POST /batches`` carries: a list of records,
objects when the columns have names, lists when they do not. Pure: no HTTP, so the sync and the
asyncio client (and the CLI's ``--csv``) read records alike, and the tests run in milliseconds.

CSV and TSV come as a path (``"cars.tsv"``, a :class:`pathlib.Path`) or an open text file
(``io.StringIO(text)``). The separator is the file's suffix (``.tsv``/``.tab``: tab, ``.csv``:
comma), otherwise the first line's (a tab and no comma: TSV). The first line is a header when any
of its cells is not a number; cells that are numbers become numbers, empty cells null.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import IO, Any, Optional, Union

import numpy as np

TAB_SUFFIXES = (".tsv", ".tab")
COMMA_SUFFIXES = (".csv",)

#: What :func:`batch_records` takes: a DataFrame, a dict of columns, a list of rows, an array,
#: or CSV/TSV as a path or an open text file.
Records = Any


def is_frame(data: Any) -> bool:
    """A pandas DataFrame (duck-typed: the client does not import pandas)."""
    return hasattr(data, "to_dict") and hasattr(data, "columns")


def batch_records(records: Records) -> list:
    """Records as ``POST /batches`` takes them; a DataFrame's or a header's column names are kept.

    Raises ValueError (unusable data: ragged columns, an empty file) or TypeError (a kind of input
    it does not know), naming what to send instead; OSError when a CSV/TSV path cannot be read.
    """
    if is_frame(records):
        return records.to_dict("records")
    if isinstance(records, np.ndarray):
        return records.tolist()
    if isinstance(records, dict):
        return _column_records(records)
    if isinstance(records, (str, os.PathLike)) or hasattr(records, "read"):
        header, rows = read_delimited(records)
        return [dict(zip(header, row)) for row in rows] if header else rows
    if isinstance(records, (list, tuple)):
        return list(records)
    raise TypeError(f"records of type {type(records).__name__} are not supported; pass a pandas DataFrame, a dict of "
                    "columns, a list of rows, a numpy array, or a CSV/TSV file (a path or an open text file)")


def _column_records(columns: dict) -> list[dict]:
    """``{"hp": [110, 93], "wt": [2.62, 2.32]}`` -> one object per row (the SDK's dict input)."""
    if not columns:
        raise ValueError("records is an empty dict; pass columns as {name: [values, ...]}")
    lengths = {str(name): len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns have different lengths {lengths}; every column needs one value per record")
    names = list(columns)
    values = [v.tolist() if isinstance(v, np.ndarray) else list(v) for v in columns.values()]
    return [dict(zip(names, row)) for row in zip(*values)]


# ------------------------------------------------------------------------------------------ CSV/TSV
def cell(text: str) -> Any:
    """A CSV cell as a number when it is one, empty as null, anything else as text."""
    if text.strip() == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def delimiter_for(name: Optional[str], first_line: str) -> str:
    """Tab for .tsv/.tab, comma for .csv; otherwise tab only when the first line has a tab and no comma."""
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in TAB_SUFFIXES:
        return "\t"
    if suffix in COMMA_SUFFIXES:
        return ","
    return "\t" if "\t" in first_line and "," not in first_line else ","


def read_delimited(source: Union[str, os.PathLike, IO[str]]) -> tuple[Optional[list[str]], list[list[Any]]]:
    """(header or None, rows) of a CSV or TSV path or open text file.

    OSError when the path cannot be read; ValueError when there are no rows.
    """
    if hasattr(source, "read"):
        text, label = source.read(), "the CSV/TSV data"
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else None  # a file opened from a descriptor is named by a number
    else:
        name = label = os.fspath(source)
        with open(name, newline="", encoding="utf-8") as handle:
            text = handle.read()
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    text = text.lstrip("\ufeff")  # a byte-order mark (spreadsheets write one) is not part of the first cell
    first_line = text.split("\n", 1)[0]
    lines = [line for line in csv.reader(io.StringIO(text), delimiter=delimiter_for(name, first_line)) if line]
    if not lines:
        raise ValueError(f"{label} has no rows")
    header = lines[0] if any(isinstance(cell(c), str) or cell(c) is None for c in lines[0]) else None
    rows = [[cell(c) for c in line] for line in (lines[1:] if header else lines)]
    if not rows:
        raise ValueError(f"{label} has a header but no rows")
    return header, rows
