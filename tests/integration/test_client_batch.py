"""The Python client against the real cluster: ML Server's batch workflow end to end, in one session."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from modelpool.client import Client

pytestmark = pytest.mark.integration

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(load_iris().data[:rows], columns=COLUMNS)


def test_client_batch_workflow_with_artifacts(cluster, tmp_path):
    with Client(cluster.url, token=cluster.token) as c:
        svc = c.get_service("iris_report", "1")
        b = svc.batch(iris_frame(10), parallel_count=2).start()
        assert b.execution_id
        b.wait()

        assert b.state == "Complete"
        rows = b.results()["results"]
        assert [r["index"] for r in rows] == list(range(10))
        assert b.execution(3)["index"] == 3
        assert b.list_artifacts(3) == ["report.json"]
        report = json.loads(b.artifact(3, "report.json"))
        assert {"features", "class", "class_name", "confidence"} <= set(report) and len(report["features"]) == 4
        written = b.download(3, dest=tmp_path)
        assert written == [tmp_path / "report.json"]
        assert json.loads((tmp_path / "report.json").read_text()) == report

        assert b.execution_id in svc.get_batch_executions()
        assert svc.get_batch(b.execution_id).state == "Complete"
        assert len(svc.predict([[5.1, 3.5, 1.4, 0.2]])) == 1
