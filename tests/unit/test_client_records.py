"""The client's batch records (DataFrame, columns, CSV, TSV) and its result objects, in milliseconds.

Records are checked against the server's own parser (management/batch/inputs.py), so what the client
sends is what a job accepts; results are built from answers shaped as the server writes them.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelpool.management.batch.inputs import records_to_table
from modelpool.batch_results import BatchResponse, BatchResults, RowResult
from modelpool.records import batch_records, delimiter_for, read_delimited

CARS = [{"hp": 110, "wt": 2.62}, {"hp": 93, "wt": 2.32}, {"hp": 175, "wt": 3.44}]


# ------------------------------------------------------------------------------------------ records
def test_a_dataframe_selection_keeps_its_column_names():
    mtcars = pd.DataFrame({"mpg": [21.0, 22.8, 18.7], "hp": [110, 93, 175], "wt": [2.62, 2.32, 3.44]})
    records = batch_records(mtcars[["hp", "wt"]])
    assert records == CARS
    assert records_to_table(records).column_names == ["hp", "wt"]


def test_a_dict_of_columns_becomes_one_record_per_row():
    assert batch_records({"hp": [110, 93, 175], "wt": np.array([2.62, 2.32, 3.44])}) == CARS
    with pytest.raises(ValueError, match=r"different lengths \{'hp': 3, 'wt': 2\}"):
        batch_records({"hp": [110, 93, 175], "wt": [2.62, 2.32]})
    with pytest.raises(ValueError, match="empty dict"):
        batch_records({})


def test_rows_and_arrays_pass_as_lists():
    assert batch_records(np.array([[1.0, 2.0], [3.0, 4.0]])) == [[1.0, 2.0], [3.0, 4.0]]
    assert batch_records(([1, 2], [3, 4])) == [[1, 2], [3, 4]]
    assert batch_records(CARS) == CARS and batch_records(CARS) is not CARS


@pytest.mark.parametrize("name, text", [
    ("cars.csv", "hp,wt\n110,2.62\n93,2.32\n175,3.44\n"),
    ("cars.tsv", "hp\twt\n110\t2.62\n93\t2.32\n175\t3.44\n"),
    ("cars.tab", "hp\twt\n110\t2.62\n93\t2.32\n175\t3.44\n"),
    ("cars.txt", "hp\twt\r\n110\t2.62\r\n93\t2.32\r\n175\t3.44\r\n"),  # no telling suffix: a tab, no comma
    ("cars.dat", "\ufeffhp,wt\n110,2.62\n\n93,2.32\n175,3.44"),  # a byte-order mark, a blank line, no final newline
])
def test_csv_and_tsv_files_become_records_named_by_their_header(tmp_path: Path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert batch_records(path) == CARS
    assert batch_records(str(path)) == CARS


def test_open_text_files_are_read_too():
    assert batch_records(io.StringIO("hp\twt\n110\t2.62\n93\t2.32\n175\t3.44\n")) == CARS
    assert batch_records(io.BytesIO(b"hp,wt\n110,2.62\n93,2.32\n175,3.44\n")) == CARS


def test_cells_are_numbers_text_or_null_and_a_numeric_first_line_is_data(tmp_path: Path):
    path = tmp_path / "mixed.tsv"
    path.write_text('name\thp\tnote\n"Mazda, RX4"\t110\t\nDatsun 710\t93\tsmall\n')
    header, rows = read_delimited(path)
    assert header == ["name", "hp", "note"]
    assert rows == [["Mazda, RX4", 110, None], ["Datsun 710", 93, "small"]]
    table = records_to_table(batch_records(path))  # what the server makes of it: one kind per column
    assert table.column("hp").to_pylist() == [110, 93] and table.column("note").to_pylist() == [None, "small"]

    bare = tmp_path / "bare.csv"
    bare.write_text("5.1,3.5\n6.3,3.3\n")
    assert batch_records(bare) == [[5.1, 3.5], [6.3, 3.3]]


def test_the_separator_comes_from_the_suffix_before_the_first_line():
    assert delimiter_for("x.TSV", "a,b") == "\t"
    assert delimiter_for("x.csv", "a\tb") == ","
    assert delimiter_for(None, "a\tb") == "\t"
    assert delimiter_for(None, "a\tb,c") == ","
    assert delimiter_for("x", "a b") == ","


def test_unusable_csv_input_says_what_is_wrong(tmp_path: Path):
    empty, header_only = tmp_path / "empty.csv", tmp_path / "header.tsv"
    empty.write_text("\n\n")
    header_only.write_text("hp\twt\n")
    with pytest.raises(ValueError, match="empty.csv has no rows"):
        batch_records(empty)
    with pytest.raises(ValueError, match="header.tsv has a header but no rows"):
        batch_records(header_only)
    with pytest.raises(FileNotFoundError):
        batch_records(tmp_path / "missing.csv")
    with pytest.raises(TypeError, match="a pandas DataFrame, a dict of columns, a list of rows"):
        batch_records({1, 2, 3})


# ------------------------------------------------------------------------------------------ results
def answer(**changes) -> dict:
    """A results page as ``GET /batches/{id}?show_partial_results=true`` answers it."""
    page = {
        "executionId": "ab" * 16, "service": "TxService", "version": "1.0", "state": "Complete",
        "totalItems": 3, "completedItems": 2, "failedItems": 1, "parallelCount": 10,
        "results": [
            {"index": 0, "status": "Success", "outputs": {"answer": 0.59, "confidence": 0.9}},
            {"index": 1, "status": "Failed", "error": "ValueError: hp must be positive", "outputs": {}},
            {"index": 2, "status": "Success", "outputs": {"answer": 0.69, "confidence": 0.8}},
        ],
        "nextOffset": None,
    }
    page.update(changes)
    return page


def test_results_carry_the_state_and_counts_by_both_names():
    results = BatchResults(answer())
    assert (results.state, results.execution_id) == ("Complete", "ab" * 16)
    assert (results.total_rows, results.completed_rows, results.failed_rows) == (3, 3, 1)  # failed rows are done too
    assert (results.total_item_count, results.completed_item_count) == (3, 3)
    assert BatchResponse is BatchResults
    assert str(results) == f"batch {'ab' * 16}: Complete, 3/3 rows done (1 failed), 3 rows read"
    assert "state='Complete'" in repr(results)


def test_results_iterate_their_rows_and_each_row_is_its_outputs_as_an_array():
    results = BatchResults(answer())
    assert [row.index for row in results] == [0, 1, 2]
    assert [list(row) for row in results] == [[0.59, 0.9], [], [0.69, 0.8]]  # in the model's output order
    for i in range(results.completed_item_count):  # ML Server's example loop reaches every row
        assert results.execution(i) is results.results[i]
    first, failed = results.execution(0), results.execution(1)
    assert isinstance(first, RowResult) and first == [0.59, 0.9] and first[-1] == 0.9 and first[:1] == [0.59]
    assert first.outputs["answer"] == 0.59 and first.output("confidence") == 0.9
    assert (first.status, first.error) == ("Success", None)
    assert (failed.status, failed.error, failed.outputs) == ("Failed", "ValueError: hp must be positive", {})
    with pytest.raises(KeyError, match=r"row 0 has no output 'predict'; it has \['answer', 'confidence'\]"):
        first.output("predict")


def test_a_row_not_read_yet_is_an_index_error_saying_what_to_do():
    partial = BatchResults(answer(state="Running", results=[answer()["results"][2]]))
    assert partial.execution(2).index == 2  # rows are found by index, not by position
    with pytest.raises(IndexError, match=r"row 0 is not among these results \(1 rows, state Running\)"):
        partial.execution(0)


def test_results_still_read_as_the_dict_they_were():
    sent = answer()
    results = BatchResults(sent)
    assert results["state"] == "Complete" and results.get("totalItems") == 3 and results.get("missing", 7) == 7
    assert [row["index"] for row in results["results"]] == [0, 1, 2]
    assert results["results"][1].get("error") == "ValueError: hp must be positive"
    assert results.to_dict() == sent


def test_a_state_without_rows_has_empty_results_and_no_results_key():
    status = {key: value for key, value in answer(state="Running", totalItems=None).items()
              if key not in ("results", "nextOffset")}
    results = BatchResults(status)
    assert (results.results, list(results), results.total_rows) == ([], [], None)  # an input_uri job not read yet
    assert results.get("results") is None and "results" not in results.to_dict()
    assert str(results).endswith("3/? rows done (1 failed), 0 rows read")
