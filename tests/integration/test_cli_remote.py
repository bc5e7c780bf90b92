"""The remote CLI commands against the real cluster: models, pools, services and a batch, as a user types them.

``cluster.cli`` runs ``python -m modelpool.cli`` with the cluster's environment (MODELPOOL_HOME included,
so the management token is found without --token).
"""
from __future__ import annotations

import csv
import json

import pytest
from sklearn.datasets import load_iris

pytestmark = pytest.mark.integration

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
NAME = "cli_remote"


def remote(cluster, *args: str, check: bool = True):
    result = cluster.cli(*args, "--url", cluster.url, check=False)
    if check:
        assert result.returncode == 0, f"modelpool {' '.join(args)}: {result.stderr}"
    return result


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def test_models_list_and_describe(cluster):
    rows = table_rows(remote(cluster, "models", "list").stdout)
    assert rows[0] == ["NAME", "VERSION", "DEFAULT", "WORKERS(min/max)", "STATUS", "URL"]
    versions = {(r[0], r[1]): r for r in rows[1:]}
    assert {("iris", "1"), ("iris", "2"), ("diabetes", "1"), ("iris_report", "1")} <= set(versions)
    assert versions[("iris", "2")][2] == "yes" and versions[("iris", "1")][2] == "no"

    described = json.loads(remote(cluster, "models", "describe", "iris", "1", "--json").stdout)
    assert [(d["modelName"], d["modelVersion"]) for d in described] == [("iris", "1")]
    assert described[0]["isDefault"] is False

    no_url = cluster.cli("services", "list", "--json", check=False)  # the URL `modelpool start` saved
    assert no_url.returncode == 0, no_url.stderr
    assert ("iris", "1") in {(s["name"], s["version"]) for s in json.loads(no_url.stdout)}


def test_register_scale_pool_and_unregister(cluster):
    registered = remote(cluster, "models", "register", "iris-2.zip", "--model-name", NAME, "--synchronous")
    assert registered.stdout.strip() == (f'Model "{NAME}" Version: 2 registered with 0 initial workers. '
                                         "Use scale workers API to add workers for the model.")
    try:
        scaled = remote(cluster, "models", "scale", NAME, "2", "--min-worker", "1", "--max-worker", "2", "--wait",
                        "--json")
        described = json.loads(scaled.stdout)[0]
        assert (described["minWorkers"], described["maxWorkers"]) == (1, 2)
        assert sum(w["status"] == "READY" for w in described["workers"]) >= 1
        assert scaled.stderr == ""  # not a terminal: no progress bar

        assert remote(cluster, "pools", "set", NAME, "2", "--initial-pool-size", "1", "--max-pool-size", "2").stdout.strip() \
            == f'Pool for "{NAME}" version "2" set to 1..2 replicas'
        status = table_rows(remote(cluster, "pools", "status", NAME, "2").stdout)
        assert status[0] == ["NODE", "STATUS", "ERRORS"] and len(status) >= 2
        assert [NAME, "2"] in [r[:2] for r in table_rows(remote(cluster, "pools", "list").stdout)[1:]]
        assert remote(cluster, "pools", "delete", NAME, "2").stdout.strip().endswith("served by the generic pool")

        bad = remote(cluster, "pools", "set", NAME, "2", "--initial-pool-size", "3", "--max-pool-size", "2", check=False)
        assert bad.returncode == 2 and bad.stderr.startswith("modelpool: ") and "(field " in bad.stderr
    finally:
        removed = remote(cluster, "models", "unregister", NAME, "2", check=False)
    assert removed.returncode == 0, removed.stderr
    missing = remote(cluster, "models", "describe", NAME, check=False)
    assert missing.returncode == 2
    assert missing.stderr == f"modelpool: model '{NAME}' is not registered (field model_name)\n"


def test_services_predict(cluster):
    answer = json.loads(remote(cluster, "services", "predict", "iris", "1", "--rows", "[[5.1,3.5,1.4,0.2]]", "--json").stdout)
    assert len(answer["predictions"]) == 1
    rows = table_rows(remote(cluster, "services", "predict", "iris", "1", "--rows", "[[5.1,3.5,1.4,0.2]]").stdout)
    assert rows[0] == ["ROW", "PREDICTION"] and rows[1][0] == "0"


def test_batch_with_wait_then_artifacts_and_download(cluster, tmp_path):
    source = tmp_path / "iris.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(load_iris().data[:6].tolist())

    final = json.loads(remote(cluster, "batches", "start", "iris_report", "1", "--csv", str(source),
                              "--parallel-count", "2", "--wait", "--json").stdout)
    assert (final["state"], final["totalItems"], final["completedItems"]) == ("Complete", 6, 6)
    execution_id = final["executionId"]

    results = json.loads(remote(cluster, "batches", "results", execution_id, "--json").stdout)
    assert [r["index"] for r in results["results"]] == list(range(6))
    assert remote(cluster, "batches", "artifacts", execution_id, "3").stdout.split() == ["ARTIFACT", "report.json"]
    dest = tmp_path / "reports"
    written = remote(cluster, "batches", "download", execution_id, "3", "--dest", str(dest)).stdout.split()
    assert written == [str(dest / "report.json")]
    report = json.loads((dest / "report.json").read_text())
    assert {"features", "class", "class_name", "confidence"} <= set(report) and len(report["features"]) == 4

    listed = json.loads(remote(cluster, "batches", "list", "--service", "iris_report", "--version", "1", "--json").stdout)
    assert execution_id in listed
    assert table_rows(remote(cluster, "batches", "wait", execution_id).stdout)[1][:3] == [execution_id, "Complete", "6/6"]
