"""Asynchronous batch scoring end to end: records, input_uri, partial results, artifacts, cancel, faults."""
from __future__ import annotations

import json
import time

import numpy as np
import psutil
import pytest
from sklearn.datasets import load_iris

pytestmark = pytest.mark.integration

IRIS = load_iris()
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SLOW_HANDLER = """
import time
import numpy as np

def predict(data):
    time.sleep(1.0)
    return np.asarray(data, dtype=float).sum(axis=1)
"""


def iris_records(n=150):
    return [dict(zip(COLUMNS, map(float, row))) for row in IRIS.data[:n]]


def wait_state(admin, url, states=("Complete", "Failed", "Cancelled"), timeout_s=180):
    """Poll the state; once final, return it with every result row (following the pages)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = admin.get(url).json()
        if body["state"] in states:
            body["results"], offset = [], 0
            while offset is not None:
                page = admin.get(url, params={"show_partial_results": "true", "offset": offset, "limit": 1000}).json()
                body["results"] += page["results"]
                offset = page["nextOffset"]
            return body
        time.sleep(0.5)
    raise AssertionError(f"batch still {admin.get(url).json()} after {timeout_s}s")


@pytest.fixture(scope="module")
def slow_model(cluster):
    """A Python-handler model that takes a second per call, to catch a job mid-run."""
    import tempfile
    from pathlib import Path

    from modelpool.cluster.settings import load_settings
    from modelpool.deployments.examples import archive_command

    import requests

    settings = load_settings({}, cluster.env)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "slow.py"
        source.write_text(SLOW_HANDLER)
        archive_command(name="slow", version="1", handler="slow:predict", files=[source],
                        out=settings.model_store_path / "slow-1.zip")
    response = requests.post(f"{cluster.url}/models", params={"url": "slow-1.zip"}, headers=cluster.auth)
    assert response.status_code in (200, 409), response.text  # no workers: 200, as TorchServe answers
    return "slow"


def test_records_are_scored_in_order_with_results_and_one_row(cluster, admin):
    started = admin.post(f"{cluster.url}/batches", json={"service": "iris", "version": "1", "records": iris_records(),
                                                        "parallel_count": 2})
    assert started.status_code == 202, started.text
    execution = started.json()["executionId"]
    assert started.json()["state"] == "Pending"
    url = f"{cluster.url}/batches/{execution}"
    done = wait_state(admin, url)
    assert done["state"] == "Complete", done
    assert (done["totalItems"], done["completedItems"], done["failedItems"]) == (150, 150, 0)
    rows = done["results"]
    assert [r["index"] for r in rows] == list(range(150))
    predictions = np.array([r["outputs"]["predict"] for r in rows])
    assert (predictions == IRIS.target).mean() > 0.9
    one = admin.get(f"{url}/results/7").json()
    assert one["index"] == 7 and one["outputs"]["predict"] == rows[7]["outputs"]["predict"]
    assert execution in admin.get(f"{cluster.url}/batches", params={"service": "iris", "version": "1"}).json()
    assert execution not in admin.get(f"{cluster.url}/batches", params={"service": "diabetes"}).json()


def test_per_row_artifacts_are_listed_read_and_downloaded(cluster, admin):
    started = admin.post(f"{cluster.url}/batches", json={"service": "iris_report", "records": iris_records(20)})
    url = f"{cluster.url}/batches/{started.json()['executionId']}"
    assert wait_state(admin, url)["state"] == "Complete"
    assert admin.get(f"{url}/results/3/artifacts").json() == ["report.json"]
    artifact = admin.get(f"{url}/results/3/artifacts/report.json")
    assert artifact.status_code == 200
    assert "attachment" in artifact.headers["content-disposition"]
    report = json.loads(artifact.content)
    assert report["class_name"] in IRIS.target_names
    assert admin.get(f"{url}/results/3/artifacts/..%2Fjob.json").status_code in (400, 404)
    assert admin.get(f"{url}/results/3/artifacts/.hidden").json()["field"] == "artifact"
    assert admin.get(f"{url}/results/20").status_code == 404
    assert admin.get(f"{url}/results/-1").status_code == 404
    assert admin.get(f"{url}/results/x").status_code == 400


@pytest.mark.parametrize("body, status, field", [
    ({"service": "nosuch", "records": [[1, 2, 3, 4]]}, 404, "service"),
    ({"service": "iris", "records": []}, 400, "records"),
    ({"service": "iris"}, 400, "records"),
    ({"service": "iris", "records": [[1, 2, 3, 4]], "parallel_count": 0}, 400, "parallel_count"),
    ({"service": "iris", "input_uri": "objects://inputs/missing.parquet"}, 400, "input_uri"),
    ({"service": "iris", "input_uri": "/etc/passwd"}, 400, "input_uri"),
])
def test_bad_batch_requests_are_4xx_naming_the_field(cluster, admin, body, status, field):
    response = admin.post(f"{cluster.url}/batches", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert admin.get(f"{cluster.url}/batches/{'0' * 32}").status_code == 404
    assert admin.get(f"{cluster.url}/batches/not-an-id").status_code == 404


def test_input_uri_parquet_in_object_storage(cluster, admin):
    import pandas as pd

    from modelpool.cluster.object_store import object_store_from_settings
    from modelpool.cluster.settings import load_settings

    settings = load_settings({}, cluster.env)
    store = object_store_from_settings(settings.object_store_uri)
    frame = pd.DataFrame(IRIS.data, columns=COLUMNS)
    with store.open_output("inputs/iris.parquet") as sink:
        frame.to_parquet(sink)
    started = admin.post(f"{cluster.url}/batches", json={"service": "iris", "version": "1",
                                                        "input_uri": "objects://inputs/iris.parquet"})
    assert started.status_code == 202, started.text
    done = wait_state(admin, f"{cluster.url}/batches/{started.json()['executionId']}")
    assert done["state"] == "Complete" and done["completedItems"] == 150


def test_cancel_mid_run_keeps_the_rows_already_scored(cluster, admin, slow_model):
    records = [[1.0, 2.0]] * 6000  # 6 partitions of 1,000 rows, one task at a time, ~1 s each
    started = admin.post(f"{cluster.url}/batches", json={"service": slow_model, "records": records, "parallel_count": 1})
    url = f"{cluster.url}/batches/{started.json()['executionId']}"
    deadline = time.monotonic() + 120
    while admin.get(url).json()["completedItems"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    cancelled = admin.delete(url)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "Cancelled"
    time.sleep(3)
    body = admin.get(url, params={"show_partial_results": "true", "limit": 10000}).json()
    assert body["state"] == "Cancelled"
    assert 0 < body["completedItems"] < 6000
    assert len(body["results"]) == body["completedItems"]
    assert admin.get(f"{url}/results/0").json()["outputs"]["predict"] == 3.0
    assert admin.post(f"{url}/cancel").json()["state"] == "Cancelled"  # repeated: harmless


def test_a_batch_sent_again_with_its_idempotency_key_is_the_same_job(cluster, admin):
    import uuid

    body = {"service": "iris", "version": "1", "records": iris_records(10)}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = admin.post(f"{cluster.url}/batches", json=body, headers=key)
    again = admin.post(f"{cluster.url}/batches", json=body, headers=key)
    other = admin.post(f"{cluster.url}/batches", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert first.status_code == again.status_code == other.status_code == 202, (first.text, again.text, other.text)
    assert again.json()["executionId"] == first.json()["executionId"] != other.json()["executionId"]
    listed = admin.get(f"{cluster.url}/batches", params={"service": "iris", "version": "1"}).json()
    assert listed.count(first.json()["executionId"]) == 1
    assert wait_state(admin, f"{cluster.url}/batches/{first.json()['executionId']}")["completedItems"] == 10


def test_a_model_unregistered_mid_job_keeps_its_archive_until_the_job_ends(cluster, admin, tmp_path):
    """An accepted job is not lost to an unregister: its archive stays in object storage until the job ends."""
    from modelpool.cluster.object_store import object_store_from_settings
    from modelpool.cluster.settings import load_settings
    from modelpool.management import archive_leases as leases
    from tests.integration.handler_models import register_handler_model

    settings = load_settings({}, cluster.env)
    store = object_store_from_settings(settings.object_store_uri, settings.s3_endpoint, settings.s3_region)
    # 2 s per partition (4 of them, one at a time): the job must outlast the unregister below, which with 1 s
    # partitions it did not once in a full suite
    slower = SLOW_HANDLER.replace("time.sleep(1.0)", "time.sleep(2.0)")
    assert register_handler_model(cluster, admin, tmp_path, "leased", slower).status_code == 200
    archives = store.list("models/leased/1")
    assert len(archives) == 1, archives
    started = admin.post(f"{cluster.url}/batches", json={"service": "leased", "records": [[1.0, 2.0]] * 4000,
                                                        "parallel_count": 1})  # 4 partitions
    url = f"{cluster.url}/batches/{started.json()['executionId']}"
    deadline = time.monotonic() + 120
    while admin.get(url).json()["completedItems"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert admin.delete(f"{cluster.url}/models/leased/1").status_code == 200
    assert admin.get(f"{cluster.url}/models/leased").status_code == 404
    assert admin.get(url).json()["state"] == "Running"
    assert store.list("models/leased/1") == archives, "the running job's archive was deleted"
    done = wait_state(admin, url)
    assert (done["state"], done["completedItems"], done["failedItems"]) == ("Complete", 4000, 0)
    assert store.list("models/leased/1") == [], "the last job to end deletes the unregistered model's archive"
    assert leases.holders(store, f"objects://{archives[0]}") == []


def _scoring_workers():
    return [p for p in psutil.process_iter(["cmdline"]) if "ray::BatchWorker" in " ".join(p.info.get("cmdline") or [])]


def test_a_worker_killed_mid_job_still_scores_every_row_exactly_once(cluster, admin, slow_model):
    records = [[float(i), 1.0] for i in range(4000)]
    started = admin.post(f"{cluster.url}/batches", json={"service": slow_model, "records": records, "parallel_count": 2})
    url = f"{cluster.url}/batches/{started.json()['executionId']}"
    deadline = time.monotonic() + 60
    killed = 0
    while not killed and time.monotonic() < deadline:
        if admin.get(url).json()["state"] == "Running":
            for process in _scoring_workers():
                process.kill()
                killed += 1
        time.sleep(0.2)
    assert killed, "never saw a scoring worker to kill"
    done = wait_state(admin, url, timeout_s=240)
    assert done["state"] == "Complete", done
    indexes = [r["index"] for r in done["results"]]
    assert indexes == list(range(4000)), "a row is missing or scored twice"
    assert [r["outputs"]["predict"] for r in done["results"][:3]] == [1.0, 2.0, 3.0]


def test_a_killed_scheduler_resumes_from_the_parts_written(ray_client, admin, slow_model):
    import ray

    cluster = ray_client
    records = [[float(i), 0.0] for i in range(5000)]
    started = admin.post(f"{cluster.url}/batches", json={"service": slow_model, "records": records, "parallel_count": 1})
    execution = started.json()["executionId"]
    url = f"{cluster.url}/batches/{execution}"
    deadline = time.monotonic() + 120
    while admin.get(url).json()["completedItems"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    from modelpool.cluster.settings import load_settings
    from modelpool.management.batch.scheduler import NAMESPACE, scheduler_name

    name = scheduler_name(load_settings({}, cluster.env).object_store_config)
    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)
    done = wait_state(admin, url, timeout_s=240)
    assert done["state"] == "Complete", done
    assert [r["index"] for r in done["results"]] == list(range(5000))


def test_the_whole_workflow_on_an_s3_object_store(ray_client, s3_server, tmp_path):
    """The same engine with its registry, model copy, input, results and artifacts on a real S3 endpoint."""
    import uuid

    from modelpool.cluster.object_store import ObjectStore
    from modelpool.cluster.settings import load_settings
    from modelpool.deployments.archive_formats import read_manifest
    from modelpool.management.batch.service import BatchService
    from modelpool.management.registry import ModelRecord, Registry

    cluster = ray_client
    prefix = f"s3://{s3_server.bucket}/workflow-{uuid.uuid4().hex[:8]}"
    settings = load_settings({"object_store": prefix, "s3_endpoint": s3_server.endpoint}, cluster.env)
    store = ObjectStore(prefix, s3_endpoint=s3_server.endpoint)
    archive = settings.model_store_path / "iris_report-1.zip"
    store.upload_file(archive, "models/iris_report/1/archive.zip")
    registry = Registry(store)
    manifest = read_manifest(archive)
    registry.put_model(ModelRecord(name="iris_report", version="1", url="iris_report-1.zip",
                                   source="objects://models/iris_report/1/archive.zip", digest="s3test",
                                   handler=manifest.handler, runtime="python", batch_size=64, max_batch_delay_ms=5,
                                   initial_workers=0, min_workers=0, max_workers=0, response_timeout_s=120,
                                   manifest=manifest.model_dump()))
    batches = BatchService(settings, store, registry)
    execution = batches.submit({"service": "iris_report", "records": iris_records(30), "parallel_count": 2})["executionId"]
    deadline = time.monotonic() + 180
    while batches.state(execution, False)["state"] not in ("Complete", "Failed") and time.monotonic() < deadline:
        time.sleep(0.5)
    state = batches.state(execution, True)
    assert state["state"] == "Complete", state
    assert state["nextOffset"] is None
    assert [r["index"] for r in state["results"]] == list(range(30))
    assert batches.artifacts(execution, 29) == ["report.json"]
    assert json.loads(batches.artifact(execution, 29, "report.json"))["class_name"] in IRIS.target_names
    assert store.exists(f"batches/{execution}/results/part-00000.parquet")
