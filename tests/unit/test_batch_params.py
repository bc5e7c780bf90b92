"""The typed batch body (POST /batches) and the typed job record (job.json): the same 400s as when they were
checked by hand, and job.json files written before the record existed still read and write back whole."""
from __future__ import annotations

import pytest

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.errors import RequestError
from modelpool.management.batch import jobs, layout
from modelpool.management.batch.params import DEFAULT_PARALLEL_COUNT, BatchParams

EXACTLY_ONE = ("send exactly one of records (a list of rows) or input_uri (Parquet, CSV or TSV in object storage)")


@pytest.mark.parametrize("body, field, message", [
    ([{"service": "iris"}], "body", 'send a JSON object: {"service", "version", "records" | "input_uri", '
                                    '"parallel_count"}'),
    ({"records": [[1]]}, "service", "service is required: the registered model's name"),
    ({"service": "", "records": [[1]]}, "service", "service is required: the registered model's name"),
    ({"service": "iris", "version": 1, "records": [[1]]}, "version", "version must be a string"),
    ({"service": "iris", "records": [[1]], "parallel_count": 0}, "parallel_count",
     "parallel_count must be an integer from 1 to 1000 (Ray tasks scoring at once)"),
    ({"service": "iris", "records": [[1]], "parallel_count": True}, "parallel_count",
     "parallel_count must be an integer from 1 to 1000 (Ray tasks scoring at once)"),
    ({"service": "iris"}, "records", EXACTLY_ONE),
    ({"service": "iris", "records": [[1]], "input_uri": "objects://x"}, "records", EXACTLY_ONE),
    ({"service": "iris", "records": None}, "records", "records must be a list of rows (objects or lists)"),
    ({"service": "iris", "input_uri": "/etc/passwd"}, "input_uri",
     "input_uri must be s3://bucket/key or objects://key (a key of the configured object store)"),
    ({"service": "iris", "input_uri": 5}, "input_uri",
     "input_uri must be s3://bucket/key or objects://key (a key of the configured object store)"),
])
def test_bad_bodies_are_400s_naming_the_field(body, field, message):
    with pytest.raises(RequestError) as refused:
        BatchParams.parse(body)
    assert (refused.value.status, refused.value.field, refused.value.message) == (400, field, message)


def test_a_good_body_takes_the_defaults_and_ignores_unknown_keys():
    params = BatchParams.parse({"service": "iris", "records": [[1, 2]], "comment": "ignored"})
    assert (params.service, params.version, params.parallel_count, params.records, params.input_uri) == (
        "iris", None, DEFAULT_PARALLEL_COUNT, [[1, 2]], None)
    assert BatchParams.parse({"service": "iris", "version": "2", "input_uri": "s3://b/k.csv",
                              "parallel_count": 3}).input_uri == "s3://b/k.csv"


def test_a_job_json_written_before_the_record_reads_and_writes_back_whole(tmp_path):
    store = ObjectStore(str(tmp_path / "objects"))
    execution_id = layout.new_execution_id()
    old = {"executionId": execution_id, "service": "iris", "version": "1", "state": "Running", "parallelCount": 2,
           "source": "objects://models/iris/1/a.zip", "totalItems": 10, "partitionRows": 5, "partitions": 2,
           "inputColumns": ["x"], "createdAt": 1.0, "aKeyOfALaterRelease": {"kept": True}}
    store.write_json(layout.job_key(execution_id), old)

    job = jobs.read_job(store, execution_id)
    assert (job.state, job.total_items, job.completed_items, job.error) == ("Running", 10, 0, None)

    updated = jobs.update_job(store, execution_id, completed_items=4)
    stored = store.read_json(layout.job_key(execution_id))
    assert {key: stored[key] for key in old} == old  # every key it had, the unknown one too, as it was
    assert (stored["completedItems"], stored["updatedAt"] > 0, updated.completed_items) == (4, True, 4)

    store.write_bytes(jobs.cancel_key(execution_id), b"")
    assert jobs.read_job(store, execution_id).state == "Cancelled"
