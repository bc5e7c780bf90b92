"""What a batch job's results read as in Python: Machine Learning Server's shapes over modelpool's JSON.

ML Server's SDK answers ``batch.results()`` with a result object (``.state``, the item counts,
``.execution(index)`` for one row) and ``execution(index)`` with the row's outputs as an array.
:class:`BatchResults` and :class:`RowResult` are those shapes, built from the server's JSON
(``GET /batches/{id}`` and ``.../results/{index}``) with no request of their own, so the sync
and the asyncio client share them.

Code written when these calls answered plain dicts keeps working for reads: ``answer["results"]``,
``answer.get("state")``, ``row["outputs"]``, ``row.get("error")``; ``to_dict()`` gives the JSON.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional


class RowResult(list):
    """One row's result: its output values in the model's output order (an array, as ML Server answers).

    ``index``, ``status`` (``Success`` or ``Failed``), ``outputs`` (name -> value, like the SDK's
    ServiceResponse), ``error`` (the model's message for a failed row, whose array is empty),
    ``output(name)``.
    """

    def __init__(self, row: dict) -> None:
        self.outputs: dict[str, Any] = dict(row.get("outputs") or {})
        super().__init__(self.outputs.values())
        self.index: Optional[int] = row.get("index")
        self.status: Optional[str] = row.get("status")
        self.error: Optional[str] = row.get("error")
        self._row = row

    def output(self, name: str) -> Any:
        """One output's value by name (ML Server's ``ServiceResponse.output``)."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(f"row {self.index} has no output {name!r}; it has {list(self.outputs)}") from None

    def __getitem__(self, key: Any) -> Any:
        """Positions and slices as a list; a string key reads the row's JSON (``row["outputs"]``)."""
        if isinstance(key, str):
            return self._row[key]
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        """A key of the row's JSON, as on the dict this call answered before."""
        return self._row.get(key, default)

    def to_dict(self) -> dict:
        """The row as the server sent it: ``{"index", "status", "outputs", "error"?}``."""
        return dict(self._row)


class BatchResults:
    """A batch execution's state and the rows read so far (ML Server's BatchResponse); iterating gives the rows.

    ``state``, ``execution_id``, ``total_rows`` (None until an ``input_uri`` job has read its
    input), ``completed_rows`` (rows finished, scored or failed, so it reaches ``total_rows``),
    ``failed_rows``, ``results`` (:class:`RowResult` in index order; empty when rows were not
    asked for or not ready yet). ``total_item_count`` and ``completed_item_count`` are the SDK's
    names for the two counts.
    """

    def __init__(self, answer: dict) -> None:
        self._answer = answer
        self.execution_id: Optional[str] = answer.get("executionId")
        self.state: Optional[str] = answer.get("state")
        self.total_rows: Optional[int] = answer.get("totalItems")
        self.failed_rows: int = int(answer.get("failedItems") or 0)
        self.completed_rows: int = int(answer.get("completedItems") or 0) + self.failed_rows
        self.results: list[RowResult] = [RowResult(row) for row in answer.get("results") or []]
        self._by_index = {row.index: row for row in self.results}

    @property
    def total_item_count(self) -> Optional[int]:
        return self.total_rows

    @property
    def completed_item_count(self) -> int:
        return self.completed_rows

    def execution(self, index: int) -> RowResult:
        """Row ``index`` of these results (no request); IndexError when it is not among them."""
        try:
            return self._by_index[int(index)]
        except KeyError:
            raise IndexError(f"row {index} is not among these results ({len(self.results)} rows, state "
                             f"{self.state}); read results() again once it is scored, or "
                             f"execution({index}) on the batch") from None

    def __iter__(self) -> Iterator[RowResult]:
        return iter(self.results)

    def __getitem__(self, key: str) -> Any:
        """A key of the server's JSON (``answer["state"]``, ``answer["results"]``), as on the dict answered before."""
        if key == "results" and "results" in self._answer:
            return self.results
        return self._answer[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> dict:
        """The server's JSON: state and counts, and ``results`` (rows as dicts) when rows were read."""
        answer = dict(self._answer)
        if "results" in answer:
            answer["results"] = [row.to_dict() for row in self.results]
        return answer

    def __repr__(self) -> str:
        return (f"BatchResults(execution_id={self.execution_id!r}, state={self.state!r}, "
                f"completed_rows={self.completed_rows}, total_rows={self.total_rows}, rows_read={len(self.results)})")

    def __str__(self) -> str:
        total = "?" if self.total_rows is None else self.total_rows
        return (f"batch {self.execution_id}: {self.state}, {self.completed_rows}/{total} rows done "
                f"({self.failed_rows} failed), {len(self.results)} rows read")


#: Machine Learning Server's name for the result object.
BatchResponse = BatchResults
