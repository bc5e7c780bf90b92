"""The Python client against the real cluster: ML Server's batch workflow end to end, in one session."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from modelpool.client import Client

pytestmark = pytest.mark.integration

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

# The service of ML Server's batch example (TxService 1.0: am ~ hp + wt, answer.csv written per row),
# as a Python handler; a record with a negative hp holds its partition for 3 s, so a job can be cancelled.
TX_SERVICE = """
import time
import numpy as np

INTERCEPT, HP, WT = 1.55, 0.0024, -0.54


class ManualTransmission:
    def initialize(self, context):
        self.context = context

    def predict(self, data):
        rows = np.asarray(data, dtype=float)
        if (rows[:, 0] < 0).any():
            time.sleep(3)
        answer = INTERCEPT + HP * rows[:, 0] + WT * rows[:, 1]
        for i, value in enumerate(answer):
            directory = self.context.artifact_dir(i)
            if directory is not None:
                (directory / "answer.csv").write_text(f"am_Pred\\n{float(value)!r}\\n")
        return {"answer": answer}
"""
# hp, wt (and mpg) of the first mtcars cars: the columns the example takes from the data set
MTCARS = {"mpg": [21.0, 21.0, 22.8, 21.4, 18.7, 18.1, 14.3, 24.4],
          "hp": [110, 110, 93, 110, 175, 105, 245, 62],
          "wt": [2.620, 2.875, 2.320, 3.215, 3.440, 3.460, 3.570, 3.190]}


def iris_frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(load_iris().data[:rows], columns=COLUMNS)


@pytest.fixture()
def client(cluster, tmp_path):
    """A client with ML Server's TxService 1.0 registered (served by the generic pool), unregistered after."""
    from modelpool.cluster.settings import load_settings
    from modelpool.deployments.examples import archive_command

    source = tmp_path / "txservice.py"
    source.write_text(TX_SERVICE)
    archive_command(name="TxService", version="1.0", handler="txservice:ManualTransmission", files=[source],
                    out=load_settings({}, cluster.env).model_store_path / "TxService-1.0.zip")
    with Client(cluster.url, token=cluster.token) as client:
        client.register_model("TxService-1.0.zip", synchronous=True)
        try:
            yield client
        finally:
            client.unregister_model("TxService", "1.0")


def test_client_batch_workflow_with_artifacts(cluster, tmp_path):
    """The same workflow through modelpool's earlier names and the dict-style reads they answered with."""
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


def test_ml_servers_documented_batch_example_runs_as_written(client, tmp_path, monkeypatch):
    """The azureml-model-management-sdk batch example, names and spellings included (only the data set is inline)."""
    monkeypatch.chdir(tmp_path)  # download() writes to the working directory, as the SDK's does
    expected = 1.55 + 0.0024 * np.array(MTCARS["hp"]) - 0.54 * np.array(MTCARS["wt"])

    svc = client.get_service('TxService', version='1.0')
    mtcars = pd.DataFrame(MTCARS)  # the example: get_dataset('mtcars').as_df()
    records = mtcars[['hp', 'wt']]
    batch = svc.batch(records, parallelCount = 10)  # noqa: E251 (the documentation's spelling)
    batch = batch.start()
    id = batch.execution_id
    print("Batch execution_id is: {}".format(id))
    assert svc.list_batch_executions() == [id]

    batchRes = None
    while(True):
        batchRes = batch.results()
        print(batchRes)
        if batchRes.state == "Failed":
            print("Batch execution failed")
            break
        if batchRes.state == "Complete":
            print("Batch execution succeeded")
            break
        print("Polling for asynchronous batch to complete...")
        time.sleep(1)

    assert (batchRes.state, batchRes.total_item_count, batchRes.completed_item_count) == ("Complete", 8, 8)
    answers = []
    for i in range(batchRes.completed_item_count):
        print("The result for {} th row in the record data is: {}".format(i, batchRes.execution(i).outputs['answer']))
        answers.append(batchRes.execution(i).outputs['answer'])
    assert np.allclose(answers, expected)
    assert [list(row) for row in batchRes] == [[value] for value in answers]  # each row's outputs as an array
    assert np.allclose(batch.execution(3), [expected[3]])

    lst_artifact = batch.list_artifacts(1)
    print(lst_artifact)
    assert lst_artifact == ['answer.csv']
    for obj in lst_artifact:
        content = batch.artifact(1, obj)
    assert content.decode().split() == ["am_Pred", repr(float(answers[1]))]
    assert batch.download(1, "answer.csv") == [Path("answer.csv")]
    assert (tmp_path / "answer.csv").read_bytes() == content

    assert svc.get_batch(id).state == "Complete"
    held = svc.batch(pd.DataFrame({'hp': [-1.0], 'wt': [0.0]})).start()  # scoring takes 3 s
    held = held.cancel()
    assert held.state == "Cancelled" and svc.get_batch(held.execution_id).state == "Cancelled"
    assert svc.list_batch_executions() == [id, held.execution_id]
