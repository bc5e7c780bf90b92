"""What batch scoring does to go fast, checked where a user sees it: results parts, job progress, input types.

- a results part is encoded column by column (integers delta-encoded, floats plain, strings with a
  dictionary) and reads back with the same values and types;
- the handler's inputs are built chunk by chunk, with types decided once for the whole partition, so a
  null in the last chunk changes the dtype of every chunk exactly as it did when the partition was built
  whole;
- the scheduler hands a freed worker its next partition before it writes the job's progress;
- the scheduler's start-up preloads of registered models stop once a job runs (its cores are the job's).
"""
from __future__ import annotations

import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.examples import archive_command
from modelpool.management.batch import layout, model_cache, results, scheduler, scoring
from modelpool.management.batch.model_inputs import build_inputs, input_rows
from modelpool.management.params import RegisterParams
from tests.unit import in_process_actors
from tests.unit.management_app import (RunningManagement, gate_fixture, management_fixture,  # noqa: F401
                                       model_store)  # (fixtures)

MANY_OUTPUTS = textwrap.dedent('''
    import numpy as np

    def predict(x):
        x = np.asarray(x, dtype=float)
        return {"label": (x[:, 0] > 2).astype(np.int64), "score": x[:, 0] / 3, "name": np.where(x[:, 0] > 2, "big", "small"),
                "flag": x[:, 0] > 1, "pair": np.stack([x[:, 0], -x[:, 0]], axis=1), "dtype": np.array([str(np.asarray(x).dtype)] * len(x))}
''')

DTYPE_SEEN = textwrap.dedent('''
    import numpy as np

    def predict(x):
        return {"dtype": np.array([str(x.dtype)] * len(x))}
''')


def handler_job(store: ObjectStore, tmp_path: Path, name: str, source: str, table: pa.Table,
                model_inputs: list[dict] | None = None) -> tuple[str, dict]:
    """A Python handler's archive in the store and ``table`` as a job's one-partition input; (execution id, job)."""
    code = tmp_path / f"{name}.py"
    code.write_text(source)
    archive = archive_command(name, "1", f"{name}:predict", [code], out=tmp_path)
    store.upload_file(archive, f"models/{name}-1.zip")
    path = tmp_path / f"{name}-input.parquet"
    pq.write_table(table, path)
    store.upload_file(path, f"inputs/{name}.parquet")
    job = {"source": f"objects://models/{name}-1.zip", "digest": name, "partitionRows": table.num_rows,
           "inputColumns": table.column_names, "modelInputs": model_inputs or [],
           "inputParquet": f"objects://inputs/{name}.parquet"}
    execution_id = layout.new_execution_id()
    store.write_json(layout.job_key(execution_id), job)
    return execution_id, job


def locate_in(store: ObjectStore):
    return lambda uri: (store.filesystem, store.path(uri.removeprefix("objects://")))


# ------------------------------------------------------------------------------- results parts
def test_part_encodings_follow_each_columns_type() -> None:
    schema = pa.schema([("index", pa.int64()), ("status", pa.string()), ("error", pa.string()), ("label", pa.int32()),
                        ("score", pa.float64()), ("flag", pa.bool_()), ("pair", pa.list_(pa.float64(), 2))])
    assert scoring.part_encodings(schema) == {
        "use_dictionary": ["status", "error", "flag"],
        "column_encoding": {"index": "DELTA_BINARY_PACKED", "label": "DELTA_BINARY_PACKED"},
    }
    only_floats = pa.schema([("score", pa.float32())])
    assert scoring.part_encodings(only_floats) == {"use_dictionary": [], "column_encoding": None}


def test_a_part_reads_back_with_the_handlers_values_and_types(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    values = np.linspace(0.0, 4.0, 3_000)
    execution_id, job = handler_job(store, tmp_path, "many", MANY_OUTPUTS, pa.table({"x": values}))
    answer = scoring.score_partition(store, execution_id, 0, job, tmp_path / "cache", chunk_rows=1_000,
                                     locate=locate_in(store))
    assert answer == {"partition": 0, "completed": 3_000, "failed": 0, "rows": 3_000}

    with store.open_input(layout.part_key(execution_id, 0)) as source:
        parquet = pq.ParquetFile(source)
        encodings = {parquet.metadata.row_group(0).column(i).path_in_schema: parquet.metadata.row_group(0).column(i).encodings
                     for i in range(parquet.metadata.num_columns)}
        table = parquet.read()
    assert "DELTA_BINARY_PACKED" in encodings["index"] and "DELTA_BINARY_PACKED" in encodings["label"]
    assert "RLE_DICTIONARY" in encodings["status"] and "RLE_DICTIONARY" in encodings["name"]
    assert "RLE_DICTIONARY" not in encodings["score"] and "RLE_DICTIONARY" not in encodings["pair.list.element"]
    assert table.schema.field("label").type == pa.int64() and table.schema.field("score").type == pa.float64()
    assert table.schema.field("name").type == pa.string() and table.schema.field("flag").type == pa.bool_()
    assert table.schema.field("pair").type == pa.list_(pa.float64(), 2)
    assert table.column("index").to_pylist() == list(range(3_000))
    assert table.column("label").to_pylist() == (values > 2).astype(int).tolist()
    assert table.column("score").to_pylist() == (values / 3).tolist()
    assert table.column("name").to_pylist() == np.where(values > 2, "big", "small").tolist()
    assert table.column("pair").to_pylist()[-1] == [4.0, -4.0]
    assert results.row_result(store, execution_id, 2_999, 3_000, 3_000)["outputs"]["label"] == 1
    assert results.counts(store, execution_id) == {"completed": 3_000, "failed": 0, "rows": 3_000, "parts": 1}


def test_repeated_strings_are_the_arrays_arrow_would_build() -> None:
    for text, rows in (("Success", 50_000), ("négatif: −7", 3), ("", 4), ("Failed", 0)):
        built = scoring.repeated(text, rows)
        built.validate(full=True)
        assert built.type == pa.string() and built.to_pylist() == [text] * rows


# ------------------------------------------------------------------------------ handler inputs
def test_chunks_get_the_types_the_whole_partition_would(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "store"))
    declared = [{"name": "input-0", "datatype": "INT64", "shape": [-1, 2]}]
    integers = pa.table({"a": pa.array(range(2_500), pa.int64()), "b": pa.array(range(2_500), pa.int64())})
    with_null = integers.set_column(1, "b", pa.array(list(range(2_499)) + [None], pa.int64()))  # in the last chunk only
    for table, expected in ((integers, "int64"), (with_null, "float64")):
        execution_id, job = handler_job(store, tmp_path, "seen", DTYPE_SEEN, table, declared)
        scoring.score_partition(store, execution_id, 0, job, tmp_path / "cache", chunk_rows=1_000, locate=locate_in(store))
        seen = {row["outputs"]["dtype"] for row in results.read_results(store, execution_id)}
        assert seen == {expected}
        assert build_inputs(table, ["a", "b"], declared)["input-0"].dtype == np.dtype(expected)


def test_rows_built_apart_equal_the_whole() -> None:
    table = pa.table({"a": [1.0, 2.0, None, 4.0, 5.0], "b": ["x", "y", "z", "w", "v"], "c": [1, 2, 3, 4, 5]})
    specs = [{"name": "a", "datatype": "FP32", "shape": [-1]}, {"name": "c", "datatype": "INT64", "shape": [-1]}]
    for columns, model_inputs in ((["a", "c"], []), (["a", "b"], []), (["a", "c"], specs)):
        whole = build_inputs(table, columns, model_inputs)
        rows = input_rows(table, columns, model_inputs)
        for start, stop in ((0, 2), (2, 5), (4, 5)):
            part = rows(start, stop)
            assert part.keys() == whole.keys()
            for name, array in part.items():
                assert array.dtype == whole[name].dtype
                assert repr(array.tolist()) == repr(whole[name][start:stop].tolist())  # nan == nan here


# ----------------------------------------------------------------------------------- scheduler
def test_a_freed_worker_gets_its_next_partition_before_the_progress_is_written(management: RunningManagement,
                                                                               tmp_path: Path, monkeypatch) -> None:
    management.manager.register(_iris_params())
    path = tmp_path / "four-groups.parquet"
    rng = np.random.default_rng(3)
    features = rng.uniform(1, 7, (4_000, 4))
    pq.write_table(pa.table({f"f{j}": features[:, j] for j in range(4)}), path, row_group_size=1_000)
    management.manager.store.upload_file(path, "inputs/four-groups.parquet")

    events: list[tuple[str, int]] = []
    real_call, real_update = in_process_actors.Actor.call, scheduler.update_job

    def call(actor, method, args, kwargs):
        if method == "score":
            events.append(("submit", args[2]))
        return real_call(actor, method, args, kwargs)

    def update(store, execution_id, **changes):
        if "completed_items" in changes and "state" not in changes:
            events.append(("progress", changes["completed_items"]))
        return real_update(store, execution_id, **changes)

    monkeypatch.setattr(in_process_actors.Actor, "call", call)
    monkeypatch.setattr(scheduler, "update_job", update)
    execution_id = management.batches.submit({"service": "iris", "version": "1", "parallel_count": 1,
                                              "input_uri": "objects://inputs/four-groups.parquet"})["executionId"]
    state = _finished(management, execution_id)
    assert (state["state"], state["completedItems"], state["totalItems"]) == ("Complete", 4_000, 4_000)
    assert state["firstPartAt"] is not None
    progress = [(i, done) for i, (kind, done) in enumerate(events) if kind == "progress"]
    assert [done for _, done in progress] == [1_000, 2_000, 3_000]  # the last one is written with Complete
    for position, done in progress:  # the partition after the ones done was already on its way
        submitted = [k for kind, k in events[:position] if kind == "submit"]
        assert submitted == list(range(done // 1_000 + 1))


def test_a_one_partition_job_records_when_its_part_landed(management: RunningManagement) -> None:
    management.manager.register(_iris_params())
    execution_id = management.batches.submit({"service": "iris", "version": "1",
                                              "records": [[5.1, 3.5, 1.4, 0.2]] * 10})["executionId"]
    state = _finished(management, execution_id)
    assert (state["state"], state["completedItems"]) == ("Complete", 10)
    assert state["createdAt"] <= state["firstPartAt"] <= state["finishedAt"]


def _iris_params() -> RegisterParams:
    return RegisterParams(url="iris-1.zip", model_name="iris")


def _finished(management: RunningManagement, execution_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (state := management.batches.state(execution_id, False))["state"] not in ("Complete", "Failed", "Cancelled"):
        assert time.monotonic() < deadline, f"batch {execution_id} still {state['state']} after {timeout_s}s"
        time.sleep(0.01)
    return state


def test_start_up_preloads_stop_for_a_running_job(management: RunningManagement, gate, monkeypatch) -> None:
    """A job waiting when the scheduler starts has its model loaded, and no other registered model takes the cores."""
    manager = management.manager
    for archive, name in (("iris-1.zip", "iris"), ("iris-2.zip", "iris"), ("diabetes-1.zip", "diabetes")):
        manager.register(RegisterParams(url=archive, model_name=name))
    models = {key: _model(manager.registry.get_model(*key)) for key in (("iris", "1"), ("iris", "2"), ("diabetes", "1"))}
    monkeypatch.setattr(management.batches, "_start", lambda execution_id: None)  # accepted before any scheduler runs
    execution_id = management.batches.submit({"service": "iris", "version": "1",
                                              "records": [[5.1, 3.5, 1.4, 0.2]] * 10})["executionId"]
    gate.hold()
    management.batches.resume_unfinished()  # the scheduler starts, and finds the job (its start resumes it)
    gate.wait_until_held()
    assert management.batches.wait_warm(timeout_s=20)  # its start-up preloads ended
    assert model_cache.is_cached(models["iris", "1"])  # the job's own model (loaded on accept)
    assert not model_cache.is_cached(models["iris", "2"]) and not model_cache.is_cached(models["diabetes", "1"])
    gate.release()
    assert _finished(management, execution_id)["state"] == "Complete"


def _model(record) -> dict:
    return {"source": record.source, "digest": record.digest, "handler": record.handler}
