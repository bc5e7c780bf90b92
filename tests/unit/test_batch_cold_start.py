"""A batch job from a cold start: models loaded ahead on every worker, one big row group scored by all.

The partition plan (``inputs.parquet_partition_rows``) is a pure mapping, checked in milliseconds;
the row ranges' indexes and artifacts are checked in the real scorer. The rest runs the real
BatchService, scheduler, workers and scoring in this process (in_process_actors.py) with the iris
example registered: what a user sees is the job's state, results and parts, and, for preloading,
that a worker holds the model while every partition still waits at ``gate``.
"""
from __future__ import annotations

import logging
import textwrap
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.examples import archive_command
from modelpool.management.batch import inputs, layout, model_cache, results, scheduler, scoring
from modelpool.management.batch.jobs import read_job, write_job
from modelpool.management.params import RegisterParams
from modelpool.management.registry import ModelRecord
from tests.unit.management_app import (RunningManagement, gate_fixture, management_fixture,  # noqa: F401
                                       model_store)  # (fixtures)

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = 2_500  # two partitions of 1,250 with parallel_count=2 (a partition holds at least 1,000 rows)


# ------------------------------------------------------------------------------ the partition plan
def parts_reading(group_rows: list[int], partition_rows: int) -> list[list[int]]:
    """Which row groups each partition reads (scoring.read_rows reads the groups its rows lie in)."""
    starts = np.cumsum([0, *group_rows])
    total = int(starts[-1])
    return [[g for g in range(len(group_rows)) if starts[g] < min(total, lo + partition_rows) and starts[g + 1] > lo]
            for lo in range(0, total, partition_rows)]


def test_one_row_group_is_cut_into_one_range_per_worker() -> None:
    rows = inputs.parquet_partition_rows([1_000_000], parallel_count=2)
    assert rows == 500_000
    assert parts_reading([1_000_000], rows) == [[0], [0]]
    assert inputs.parquet_partition_rows([1_000_000], parallel_count=8) == 125_000


def test_groups_of_one_size_are_each_read_by_one_partition() -> None:
    pyarrow_default = [1_048_576] * 9 + [562_816]  # 10M rows written by pq.write_table
    rows = inputs.parquet_partition_rows(pyarrow_default, parallel_count=2)
    assert rows == 1_048_576
    assert parts_reading(pyarrow_default, rows) == [[g] for g in range(10)]


def test_many_small_groups_make_partitions_of_whole_groups() -> None:
    small = [10_000] * 1_000
    rows = inputs.parquet_partition_rows(small, parallel_count=2)
    assert rows % 10_000 == 0 and rows >= 10_000
    reads = [g for part in parts_reading(small, rows) for g in part]
    assert reads == list(range(1_000)), "each group is read once, by one partition"


def test_groups_of_several_sizes_keep_partitions_no_smaller_than_a_group() -> None:
    uneven = [300_000, 50_000, 400_000, 250_000]
    rows = inputs.parquet_partition_rows(uneven, parallel_count=2)
    assert rows >= 250_000 and len(parts_reading(uneven, rows)) >= 2


def test_tiny_and_empty_inputs_make_one_partition() -> None:
    assert inputs.parquet_partition_rows([10], parallel_count=2) >= 10
    assert inputs.parquet_partition_rows([], parallel_count=2) >= 1


def test_the_newest_registered_versions_are_preloaded_as_many_as_a_worker_keeps() -> None:
    def record(name: str, at: float) -> ModelRecord:
        return ModelRecord(name=name, version="1", url=f"{name}.zip", source=f"objects://models/{name}.zip",
                           handler="h", runtime="python", batch_size=1, max_batch_delay_ms=0, initial_workers=0,
                           min_workers=0, max_workers=0, response_timeout_s=1, registered_at=at)

    records = [record(name, at) for name, at in [("a", 1), ("e", 5), ("c", 3), ("b", 2), ("d", 4)]]
    assert [r.name for r in scheduler.models_to_preload(records, limit=4)] == ["e", "d", "c", "b"]


# --------------------------------------------------------------------- row ranges, in the scorer
MARKER_HANDLER = textwrap.dedent('''
    import numpy as np
    from modelpool.deployments.handlers import Handler

    class Marker(Handler):
        """Answers each row's own id (its first column) and, for a few rows, writes it to row.txt."""

        def predict(self, data):
            ids = np.asarray(data, dtype=float)[:, 0].astype(np.int64)
            for i, row_id in enumerate(ids):
                if row_id % 500 == 0 or row_id % 1250 in (1249, 1):
                    (self.context.artifact_dir(i) / "row.txt").write_text(str(row_id))
            return {"row_id": ids}
''')


def test_ranges_of_one_row_group_give_every_row_its_own_index_and_artifacts(object_store, tmp_path):
    source = tmp_path / "marker.py"
    source.write_text(MARKER_HANDLER)
    archive = archive_command("marker", "1", "marker:Marker", [source], out=tmp_path)
    object_store.upload_file(archive, "models/marker-1.zip")
    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"row_id": np.arange(ROWS, dtype=np.float64), "x": np.ones(ROWS)}), path)
    object_store.upload_file(path, "inputs/one-group.parquet")
    partition_rows = inputs.parquet_partition_rows([ROWS], parallel_count=2)
    job = {"source": "objects://models/marker-1.zip", "digest": "marker", "partitionRows": partition_rows,
           "inputColumns": ["row_id", "x"], "modelInputs": [], "inputParquet": "objects://inputs/one-group.parquet"}
    execution_id = layout.new_execution_id()
    object_store.write_json(layout.job_key(execution_id), job)

    def locate(uri: str):
        return object_store.filesystem, object_store.path(uri.removeprefix("objects://"))

    answers = [scoring.score_partition(object_store, execution_id, k, job, tmp_path / "cache", locate=locate)
               for k in (1, 0)]  # in any order: each range is its own
    assert [a["rows"] for a in answers] == [ROWS // 2, ROWS // 2]
    rows = results.read_results(object_store, execution_id)
    assert [row["index"] for row in rows] == list(range(ROWS))
    assert [row["outputs"]["row_id"] for row in rows] == list(range(ROWS))
    marked = [i for i in range(ROWS) if i % 500 == 0 or i % 1250 in (1249, 1)]
    for index in marked:
        assert results.read_artifact(object_store, execution_id, index, "row.txt") == str(index).encode()
    assert results.list_artifacts(object_store, execution_id, ROWS // 2 + 2) == []


# ---------------------------------------------------------------------------------- in process
@pytest.fixture()
def iris(management: RunningManagement) -> dict:
    """The plain iris example registered as ``iris`` 1 (no artifacts: thousands of rows stay quick); its model."""
    management.manager.register(RegisterParams(url="iris-1.zip", model_name="iris"))
    record = management.manager.registry.get_model("iris", "1")
    return {"source": record.source, "digest": record.digest, "handler": record.handler}


def one_group_input(management: RunningManagement, tmp_path: Path) -> tuple[str, np.ndarray]:
    """ROWS iris-like rows written with pyarrow's defaults (one row group), in the store; (uri, features)."""
    rng = np.random.default_rng(7)
    features = rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (ROWS, 4))
    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({name: features[:, j] for j, name in enumerate(IRIS_COLUMNS)}), path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    management.manager.store.upload_file(path, "inputs/one-group.parquet")
    return "objects://inputs/one-group.parquet", features


def submit(management: RunningManagement, uri: str) -> str:
    return management.batches.submit({"service": "iris", "version": "1", "input_uri": uri,
                                      "parallel_count": 2})["executionId"]


def wait_until(condition, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s}s: {what}")
        time.sleep(0.01)


def finished(management: RunningManagement, execution_id: str) -> dict:
    wait_until(lambda: management.batches.state(execution_id, False)["state"] in ("Complete", "Failed", "Cancelled"),
               what=f"batch {execution_id} finished")
    return management.batches.state(execution_id, False)


def started_scheduler(management: RunningManagement, model: dict):
    """The store's scheduler, started as the management app starts it, with its start-up preloads done."""
    management.batches.resume_unfinished()
    for thread in threading.enumerate():
        if thread.name == "batch-preload":
            thread.join(10)
    instance = next(a for a in management.actors.actors if hasattr(a.instance, "pool")).instance
    # a worker runs its preloads in order: once one more has answered on each, the earlier ones are done
    management.actors.get([w.preload.remote(instance.store_config, model, instance.cache_dir)
                           for w in instance.pool.workers])
    return instance


def test_a_one_row_group_input_is_scored_by_both_workers_as_one_process_would(management, iris, gate, tmp_path):
    uri, features = one_group_input(management, tmp_path)
    gate.hold()
    execution_id = submit(management, uri)
    gate.wait_until_held(calls=2)  # two partitions scoring at once: one on each worker
    gate.release()
    state = finished(management, execution_id)
    assert (state["state"], state["totalItems"], state["completedItems"]) == ("Complete", ROWS, ROWS)
    store = management.manager.store
    parts = sorted(layout.parse_part_name(key.rsplit("/", 1)[1]) for key in store.list(layout.results_prefix(execution_id)))
    assert parts == [0, 1]

    rows = management.batches.state(execution_id, True, limit=ROWS)["results"]
    archive = unpack_archive(management.manager.settings.model_store_path / "iris-1.zip", tmp_path / "ref")
    model = joblib.load(archive.model_dir / archive.manifest.model_file)  # one process, all rows in one call
    assert [row["index"] for row in rows] == list(range(ROWS))
    assert [row["outputs"]["predict"] for row in rows] == model.predict(features).tolist()


def test_a_resumed_job_scores_only_the_missing_range_with_the_same_results(management, iris, tmp_path):
    uri, _ = one_group_input(management, tmp_path)
    execution_id = submit(management, uri)
    assert finished(management, execution_id)["state"] == "Complete"
    first = management.batches.state(execution_id, True, limit=ROWS)["results"]
    store = management.manager.store
    store.delete(layout.part_key(execution_id, 1))  # the scheduler died before the second range's part landed
    job = read_job(store, execution_id)
    write_job(store, job.changed(state="Running", completed_items=ROWS // 2, finished_at=None))

    assert management.batches.resume_unfinished() == 1
    state = finished(management, execution_id)
    assert (state["state"], state["completedItems"]) == ("Complete", ROWS)
    assert management.batches.state(execution_id, True, limit=ROWS)["results"] == first


def test_the_scheduler_loads_registered_models_on_its_workers_when_it_starts(management, iris):
    assert not model_cache.is_cached(iris)
    management.batches.resume_unfinished()  # what the management app does once it is up
    assert management.batches.wait_warm(timeout_s=20)  # the workers hold the registered models
    assert model_cache.is_cached(iris)


def test_an_accepted_job_has_its_model_loaded_before_its_first_partition_runs(management, iris, gate, tmp_path):
    started_scheduler(management, iris)
    model_cache.clear_model_cache()  # as on a worker that never held iris
    uri, _ = one_group_input(management, tmp_path)
    gate.hold()
    execution_id = submit(management, uri)
    gate.wait_until_held(calls=2)  # no partition has started, so none loaded it
    wait_until(lambda: model_cache.is_cached(iris), what="iris preloaded on accept")
    gate.release()
    assert finished(management, execution_id)["state"] == "Complete"


def test_a_failed_preload_fails_nothing_the_partitions_load_the_model_themselves(management, iris, gate, tmp_path,
                                                                                 monkeypatch, caplog):
    started_scheduler(management, iris)
    model_cache.clear_model_cache()
    caplog.set_level(logging.WARNING, logger=scoring.__name__)
    real_fetch = model_cache.local_archive
    reachable = threading.Event()

    def flaky_fetch(*args, **kwargs):  # the object store unreachable for a moment: the preloads' moment
        if not reachable.is_set():
            raise OSError("object store unreachable")
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(model_cache, "local_archive", flaky_fetch)
    uri, _ = one_group_input(management, tmp_path)
    gate.hold()
    execution_id = submit(management, uri)
    gate.wait_until_held(calls=2)
    wait_until(lambda: sum("preloading model" in r.getMessage() for r in caplog.records) >= 2,
               what="both workers' preloads failed")
    assert not model_cache.is_cached(iris)
    reachable.set()
    gate.release()
    state = finished(management, execution_id)
    assert (state["state"], state["completedItems"], state["failedItems"]) == ("Complete", ROWS, 0)
