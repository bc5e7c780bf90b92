"""Batch scoring engine (management/batch): inputs, partitions, scoring, results and artifacts.

Real example archives are copied into the store and referenced as ``objects://<key>``, exactly as
registered models are; store-facing tests run on a local directory and on S3 (moto).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_iris

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.archive import file_sha256
from modelpool.deployments.archive_formats import read_manifest
from modelpool.deployments.errors import RequestError
from modelpool.deployments.examples import archive_command, build_examples
from modelpool.management.batch import inputs, layout, model_cache, model_inputs, results, scoring

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

PICKY_HANDLER = textwrap.dedent('''
    import numpy as np
    from modelpool.deployments.errors import RequestError

    def predict(data):
        x = np.asarray(data, dtype=float)
        bad = np.flatnonzero((x < 0).any(axis=1))
        if bad.size:
            raise RequestError(f"negative value {x[bad[0]].min():g}; send values >= 0", status=422)
        return {"total": x.sum(axis=1), "doubled": x * 2}
''')


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example archives, plus ``picky-1.zip``: a Python handler refusing negative values."""
    folder = tmp_path_factory.mktemp("archives")
    found = {path.name: path for path in build_examples(folder)}
    source = folder / "src" / "picky.py"
    source.parent.mkdir()
    source.write_text(PICKY_HANDLER)
    found["picky-1.zip"] = archive_command("picky", "1", "picky:predict", [source], out=folder)
    return found


def make_job(store: ObjectStore, archive: Path, table: pa.Table, partition_rows: int) -> tuple[str, dict, int]:
    """Copy ``archive`` into the store, write ``table`` as the input; (execution id, job, parts)."""
    key = f"models/{archive.stem}/{file_sha256(archive)[:16]}-{archive.name}"
    if not store.exists(key):
        store.upload_file(archive, key)
    execution_id = layout.new_execution_id()
    parts = inputs.write_input(store, execution_id, table, partition_rows)
    job = {
        "source": f"objects://{key}",
        "digest": file_sha256(archive)[:16],
        "partitionRows": partition_rows,
        "inputColumns": table.column_names,
        "modelInputs": [spec.model_dump() for spec in read_manifest(archive).inputs],
    }
    store.write_json(layout.job_key(execution_id), job)
    return execution_id, job, parts


def iris_table(repeat: int = 1) -> tuple[pa.Table, np.ndarray]:
    data = load_iris()
    features = np.tile(data.data, (repeat, 1))
    return pa.table({name: features[:, j] for j, name in enumerate(IRIS_COLUMNS)}), np.tile(data.target, repeat)


def score_all(store: ObjectStore, execution_id: str, job: dict, parts: int, cache: Path,
              chunk_rows: int = 50_000) -> list[dict]:
    return [scoring.score_partition(store, execution_id, k, job, cache, chunk_rows) for k in range(parts)]


def store_fetch(store: ObjectStore):
    """The fetch callable the API passes: ``objects://key`` -> (the store's filesystem, path)."""
    def fetch(uri: str):
        if not uri.startswith("objects://"):
            raise RequestError(f"input_uri {uri!r} must start with objects://", field="input_uri")
        return store.filesystem, store.path(uri[len("objects://"):])
    return fetch


# ----------------------------------------------------------------------------------- layout


def test_keys_follow_the_documented_layout() -> None:
    eid = layout.new_execution_id()
    assert layout.check_execution_id(eid) == eid
    assert layout.job_key(eid) == f"batches/{eid}/job.json"
    assert layout.input_key(eid) == f"batches/{eid}/input.parquet"
    assert layout.part_key(eid, 7) == f"batches/{eid}/results/part-00007.parquet"
    assert layout.artifact_key(eid, 12, "report.json") == f"batches/{eid}/artifacts/12/report.json"
    assert layout.parse_part_name("part-00007.parquet") == 7
    assert layout.parse_part_name(".tmp-part-00007.parquet") is None


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789abcdef0123456789", "abc", "../" + "a" * 29,
                                 "g" * 32, "a" * 33, None])
def test_bad_execution_ids_name_no_job(bad: object) -> None:
    with pytest.raises(RequestError) as info:
        layout.check_execution_id(bad)  # type: ignore[arg-type]
    assert (info.value.status, info.value.field) == (404, "execution_id")


@pytest.mark.parametrize("bad", ["", "../x", "..", "a/b", "a\\b", ".hidden", "a\x00b", "x" * 256, "a..b"])
def test_artifact_name_escapes_are_refused(bad: str) -> None:
    with pytest.raises(RequestError) as info:
        layout.check_artifact_name(bad)
    assert (info.value.status, info.value.field) == (400, "artifact")
    assert "single file name" in info.value.message


def test_plain_artifact_names_are_accepted() -> None:
    for name in ["report.json", "a", "x" * 255, "plot-1_final.png"]:
        assert layout.check_artifact_name(name) == name


# ------------------------------------------------------------------------------------ inputs


def test_records_as_objects_keep_the_first_rows_column_order() -> None:
    table = inputs.records_to_table([{"b": 1, "a": "x", "c": True},
                                     {"a": "y", "b": 2.5, "c": False},
                                     {"b": None, "a": "z", "c": None}])
    assert table.column_names == ["b", "a", "c"]
    assert table.column("b").to_pylist() == [1.0, 2.5, None]
    assert table.column("a").to_pylist() == ["x", "y", "z"]
    assert pa.types.is_boolean(table.column("c").type)


def test_records_as_lists_become_c_columns() -> None:
    table = inputs.records_to_table([[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]])
    assert table.column_names == ["c0", "c1", "c2", "c3"]
    assert table.num_rows == 2 and table.column("c2").to_pylist() == [1.4, 5.4]


def test_records_from_a_dataframe() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]}, index=[10, 20])
    table = inputs.records_to_table(frame)
    assert table.column_names == ["x", "y"] and table.num_rows == 2


@pytest.mark.parametrize("records, field, words", [
    ([], "records", "at least one record"),
    (pd.DataFrame(), "records", "at least one record"),
    ("rows", "records", "list of rows"),
    ([[1, 2], [3, 4], [5]], "records[2]", "same number"),
    ([[1, 2], {"a": 1}], "records[1]", "same way"),
    ([{"a": 1}, [1]], "records[1]", "same way"),
    ([{"a": 1, "b": 2}, {"a": 1}], "records[1]", "missing ['b']"),
    ([{"a": 1}, {"a": 2, "z": 3}], "records[1]", "extra ['z']"),
    ([{"a": 1}] * 7 + [{"a": "seven"}], "records[7]", "of one kind"),
    ([[True], [1]], "records[1]", "of one kind"),
    ([[1], [[1, 2]]], "records[1]", "numbers, booleans, strings"),
    ([7], "records[0]", "object"),
    ([[]], "records[0]", "at least one value"),
    ([{}], "records[0]", "at least one column"),
])
def test_bad_records_name_the_row(records: object, field: str, words: str) -> None:
    with pytest.raises(RequestError) as info:
        inputs.records_to_table(records)
    assert (info.value.status, info.value.field) == (400, field)
    assert words in info.value.message


def test_input_uri_parquet_and_csv_are_read_through_fetch(object_store: ObjectStore) -> None:
    table, _ = iris_table()
    with object_store.open_output("uploads/iris.parquet") as out:
        pq.write_table(table, out)
    with object_store.open_output("uploads/iris.csv") as out:
        pacsv.write_csv(table, out)
    with object_store.open_output("uploads/iris-no-suffix") as out:
        pacsv.write_csv(table, out)
    for name in ["iris.tsv", "iris-tsv-no-suffix"]:  # TSV, by its suffix or by a first line of tabs
        with object_store.open_output(f"uploads/{name}") as out:
            pacsv.write_csv(table, out, pacsv.WriteOptions(delimiter="\t", quoting_style="none"))
    fetch = store_fetch(object_store)
    for name in ["iris.parquet", "iris.csv", "iris-no-suffix", "iris.tsv", "iris-tsv-no-suffix"]:
        read = inputs.read_input_uri(f"objects://uploads/{name}", fetch)
        assert read.column_names == IRIS_COLUMNS and read.num_rows == 150
        assert read.column("petal_width").to_pylist() == table.column("petal_width").to_pylist()


def test_unreadable_input_uris_are_400s_naming_the_uri(object_store: ObjectStore) -> None:
    object_store.write_bytes("uploads/broken.parquet", b"not parquet at all")
    object_store.write_bytes("uploads/header-only.csv", b"a,b\n")
    fetch = store_fetch(object_store)
    cases = {
        "objects://uploads/missing.parquet": "does not exist",
        "objects://uploads/missing.csv": "does not exist",
        "objects://uploads/broken.parquet": "cannot read",
        "objects://uploads/header-only.csv": "no rows",
        "http://example.com/x.csv": "must start with objects://",
    }
    for uri, words in cases.items():
        with pytest.raises(RequestError) as info:
            inputs.read_input_uri(uri, fetch)
        assert (info.value.status, info.value.field) == (400, "input_uri"), uri
        assert words in info.value.message and (uri in info.value.message), info.value.message


def test_fetch_failures_become_input_uri_errors() -> None:
    def fetch(uri: str):
        raise PermissionError("access denied")
    with pytest.raises(RequestError) as info:
        inputs.read_input_uri("s3://bucket/x.parquet", fetch)
    assert info.value.field == "input_uri" and "access denied" in info.value.message


# ------------------------------------------------------------------------------ partitioning


def test_partition_size_gives_each_task_several_partitions() -> None:
    assert inputs.partition_rows_for(1_000_000, 4) == 62_500  # 16 partitions for 4 tasks
    assert inputs.partition_rows_for(100, 4) == 1_000  # never tiny: one partition
    assert inputs.partition_rows_for(100_000_000, 2) == 200_000  # never huge
    assert inputs.partition_rows_for(10_000, 1, min_rows=10, max_rows=50) == 50
    with pytest.raises(ValueError):
        inputs.partition_rows_for(10, 0)


def test_write_input_makes_one_row_group_per_partition(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    eid = layout.new_execution_id()
    table = pa.table({"x": np.arange(2_345, dtype=np.float64)})
    assert inputs.write_input(store, eid, table, 1_000) == 3
    metadata = pq.ParquetFile(store.open_input(layout.input_key(eid))).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [1_000, 1_000, 345]


# ----------------------------------------------------------------------------------- scoring


def test_iris_rows_are_scored_accurately_once_each(object_store: ObjectStore, archives: dict,
                                                   tmp_path: Path) -> None:
    table, target = iris_table(repeat=4)  # 600 rows
    eid, job, parts = make_job(object_store, archives["iris-1.zip"], table, partition_rows=250)
    assert parts == 3
    summaries = score_all(object_store, eid, job, parts, tmp_path / "cache", chunk_rows=100)
    assert [s["rows"] for s in summaries] == [250, 250, 100]
    assert all(s["failed"] == 0 for s in summaries)
    # a retried task rewrites its part whole: still exactly one copy of each row
    scoring.score_partition(object_store, eid, 1, job, tmp_path / "cache", chunk_rows=100)
    rows = results.read_results(object_store, eid)
    assert [row["index"] for row in rows] == list(range(600))
    predictions = np.array([row["outputs"]["predict"] for row in rows])
    assert (predictions == target).mean() > 0.9
    assert all(row["status"] == "Success" and "error" not in row for row in rows)
    assert results.completed_parts(object_store, eid) == [0, 1, 2]
    assert results.counts(object_store, eid) == {"completed": 600, "failed": 0, "rows": 600, "parts": 3}
    assert results.read_results(object_store, eid, offset=240, limit=20)[0]["index"] == 240
    assert [r["index"] for r in results.read_results(object_store, eid, offset=590, limit=50)] == \
        list(range(590, 600))


def test_the_model_is_loaded_once_per_process(tmp_path: Path, archives: dict) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    table, _ = iris_table()
    eid, job, parts = make_job(store, archives["iris-1.zip"], table, partition_rows=50)
    model_cache.clear_model_cache()
    first = model_cache.cached_model(store, job["source"], job["digest"], tmp_path / "cache")
    score_all(store, eid, job, parts, tmp_path / "cache")
    assert model_cache.cached_model(store, job["source"], job["digest"], tmp_path / "cache") is first
    assert first.context.artifact_root is None  # reset after every chunk


def test_rows_the_model_rejects_fail_alone_with_its_message(object_store: ObjectStore, archives: dict,
                                                            tmp_path: Path) -> None:
    values = np.arange(1_000, dtype=np.float64).reshape(500, 2) + 1
    bad = [3, 4, 250, 499]
    values[bad, 1] = -7
    table = pa.table({"a": values[:, 0], "b": values[:, 1]})
    eid, job, parts = make_job(object_store, archives["picky-1.zip"], table, partition_rows=300)
    summaries = score_all(object_store, eid, job, parts, tmp_path / "cache", chunk_rows=64)
    assert sum(s["failed"] for s in summaries) == 4 and sum(s["completed"] for s in summaries) == 496
    rows = results.read_results(object_store, eid)
    assert [r["index"] for r in rows] == list(range(500))
    failed = [r for r in rows if r["status"] == "Failed"]
    assert [r["index"] for r in failed] == bad
    assert all(r["error"] == "negative value -7; send values >= 0" for r in failed)
    ok = rows[5]
    assert ok["outputs"] == {"total": values[5].sum(), "doubled": list(values[5] * 2)}
    assert results.counts(object_store, eid) == {"completed": 496, "failed": 4, "rows": 500, "parts": 2}
    schema = pq.read_schema(object_store.open_input(layout.part_key(eid, 0)))
    assert schema.field("index").type == pa.int64()
    assert schema.field("doubled").type == pa.list_(pa.float64(), 2)


def test_every_row_of_a_bad_chunk_can_fail(tmp_path: Path, archives: dict) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    table = pa.table({"a": [-1.0] * 40, "b": [1.0] * 40})
    eid, job, _ = make_job(store, archives["picky-1.zip"], table, partition_rows=40)
    summary = scoring.score_partition(store, eid, 0, job, tmp_path / "cache")
    assert summary == {"partition": 0, "completed": 0, "failed": 40, "rows": 40}
    rows = results.read_results(store, eid)
    assert {r["status"] for r in rows} == {"Failed"} and rows[0]["outputs"] == {}


def test_iris_report_artifacts_are_listed_and_read_per_row(object_store: ObjectStore, archives: dict,
                                                           tmp_path: Path) -> None:
    table, target = iris_table()
    eid, job, parts = make_job(object_store, archives["iris_report-1.zip"], table, partition_rows=60)
    score_all(object_store, eid, job, parts, tmp_path / "cache", chunk_rows=25)
    for index in [0, 59, 60, 77, 149]:
        assert results.list_artifacts(object_store, eid, index) == ["report.json"]
        report = json.loads(results.read_artifact(object_store, eid, index, "report.json"))
        assert report["features"] == list(table.slice(index, 1).to_pylist()[0].values())
        assert report["class"] == results.row_result(object_store, eid, index, 150, 60)["outputs"]["predict"]
    assert list((tmp_path / "cache" / "batch-tmp").iterdir()) == []  # temp dirs removed
    with pytest.raises(RequestError) as info:
        results.read_artifact(object_store, eid, 3, "plot.png")
    assert (info.value.status, info.value.field) == (404, "artifact")
    assert "report.json" in info.value.message
    with pytest.raises(RequestError) as info:
        results.read_artifact(object_store, eid, 3, "../../job.json")
    assert (info.value.status, info.value.field) == (400, "artifact")


def test_only_flat_plain_artifact_files_are_uploaded(tmp_path: Path, archives: dict) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    source = tmp_path / "src" / "sneaky.py"
    source.parent.mkdir()
    source.write_text(textwrap.dedent('''
        import os
        import numpy as np
        from modelpool.deployments.handlers import Handler

        class Sneaky(Handler):
            def predict(self, data):
                for i in range(len(data)):
                    d = self.context.artifact_dir(i)
                    (d / "ok.txt").write_text(str(i))
                    (d / ".hidden").write_text("x")
                    (d / "nested").mkdir()
                    (d / "nested" / "deep.txt").write_text("x")
                    os.symlink("/etc/passwd", d / "link")
                return np.zeros(len(data))
    '''))
    archive = archive_command("sneaky", "1", "sneaky:Sneaky", [source], out=tmp_path)
    eid, job, _ = make_job(store, archive, pa.table({"x": [1.0, 2.0, 3.0]}), partition_rows=3)
    scoring.score_partition(store, eid, 0, job, tmp_path / "cache")
    assert store.list(f"batches/{eid}/artifacts") == [f"batches/{eid}/artifacts/{i}/ok.txt" for i in range(3)]
    assert results.read_artifact(store, eid, 2, "ok.txt") == b"2"


def test_row_result_reads_one_row_or_says_why_not(object_store: ObjectStore, archives: dict,
                                                  tmp_path: Path) -> None:
    table, target = iris_table()
    eid, job, parts = make_job(object_store, archives["iris-1.zip"], table, partition_rows=40)
    scoring.score_partition(object_store, eid, 1, job, tmp_path / "cache")  # rows 40..79 only
    row = results.row_result(object_store, eid, 55, 150, 40)
    assert row == {"index": 55, "status": "Success", "outputs": {"predict": int(target[55])}}
    for index in [-1, 150, 10_000]:
        with pytest.raises(RequestError) as info:
            results.row_result(object_store, eid, index, 150, 40)
        assert (info.value.status, info.value.field) == (404, "index")
    with pytest.raises(RequestError) as info:
        results.row_result(object_store, eid, 5, 150, 40)
    assert info.value.status == 404 and "not scored yet" in info.value.message
    assert results.completed_parts(object_store, eid) == [1]
    assert results.counts(object_store, eid) == {"completed": 40, "failed": 0, "rows": 40, "parts": 1}
    assert [r["index"] for r in results.read_results(object_store, eid)] == list(range(40, 80))


def test_several_declared_inputs_are_fed_by_column_name() -> None:
    table = pa.table({"b": [1, 2], "a": [0.5, 1.5], "extra": ["x", "y"]})
    specs = [{"name": "a", "datatype": "FP32", "shape": [-1]}, {"name": "b", "datatype": "INT64", "shape": [-1]}]
    built = model_inputs.build_inputs(table, ["b", "a", "extra"], specs)
    assert list(built) == ["a", "b"] and built["a"].dtype == np.float32 and built["b"].dtype == np.int64
    single = model_inputs.build_inputs(table, ["b", "a"], [])
    assert list(single) == ["input-0"] and single["input-0"].tolist() == [[1.0, 0.5], [2.0, 1.5]]
    mixed = model_inputs.build_inputs(table, ["a", "extra"], [])
    assert mixed["input-0"].dtype == object and mixed["input-0"][1].tolist() == [1.5, "y"]
    with pytest.raises(RequestError) as info:
        model_inputs.build_inputs(table, ["b"], [specs[0], {"name": "c", "datatype": "FP64", "shape": [-1]}])
    assert info.value.field == "inputs" and "'c'" in info.value.message


def test_declared_integer_inputs_never_truncate_floats() -> None:
    table = pa.table({"a": [1.5, 2.0], "b": [1, 2]})
    spec = [{"name": "x", "datatype": "INT64", "shape": [-1, 2]}]
    assert model_inputs.build_inputs(table, ["a", "b"], spec)["x"].tolist() == [[1.5, 1.0], [2.0, 2.0]]
    assert model_inputs.build_inputs(table, ["b"], spec)["x"].dtype == np.int64


def test_read_rows_spans_row_groups_and_reads_only_what_it_needs(tmp_path):
    """A user's Parquet is scored in place: any row range, whatever the file's row groups."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from modelpool.management.batch.scoring import read_rows

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"a": list(range(100)), "b": [float(i) for i in range(100)]}), path, row_group_size=30)
    filesystem = pafs.LocalFileSystem()
    middle = read_rows(filesystem, str(path), 25, 65, ["b"])
    assert middle.column_names == ["b"]
    assert middle.column("b").to_pylist() == [float(i) for i in range(25, 65)]
    assert read_rows(filesystem, str(path), 90, 130, ["a"]).column("a").to_pylist() == list(range(90, 100))
    assert read_rows(filesystem, str(path), 200, 210, ["a"]).num_rows == 0
