"""A TorchServe/MMS ``.mar`` registered on the real cluster as TorchServe documents it, then scored over V2.

The archive is built in the test as torch-model-archiver lays it out (``tests/mar_archives.py``): an
iris classifier and plain-Python handlers, no torch. It is registered with TorchServe's curl form
(``POST /models?url=<archive in the model store>``), with and without ``handler=``; a handler that
needs torch (not installed here) and an override naming no file of the archive are refused with 400s.
"""
from __future__ import annotations

import importlib.util
import time

import joblib
import numpy as np
import pytest

from modelpool.cluster.settings import load_settings
from tests.mar_archives import LABELS, PROBA_HANDLER, TORCH_HANDLER, build_mar, train_iris

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]
V2 = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": sum(ROWS, [])}]}


def infer_when_served(http, url: str, timeout_s: float = 60) -> dict:
    """The first 200 answer: a generic-pool model loads on its first request (a 503 meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.post(url, json=V2)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return {out["name"]: out["data"] for out in response.json()["outputs"]}
        time.sleep(0.2)


def test_a_mar_registers_as_torchserve_documents_it_and_answers_v2(cluster, admin, http, tmp_path):
    store = load_settings({}, cluster.env).model_store_path
    model = joblib.load(train_iris(tmp_path / "iris.joblib"))
    build_mar(store / "iris_mar.mar", tmp_path / "iris.joblib", sources={"proba_handler.py": PROBA_HANDLER})
    build_mar(store / "torch_net.mar", tmp_path / "iris.joblib", name="torch_net", handler="net.py",
              sources={"net.py": TORCH_HANDLER})
    models = f"{cluster.url}/models"
    try:
        registered = admin.post(f"{models}?url=iris_mar.mar")  # curl -X POST "http://host:8081/models?url=x.mar"
        assert registered.status_code in (200, 202), registered.text
        assert "registered" in registered.json()["status"]
        described = admin.get(f"{models}/iris_mar").json()[0]
        assert (described["modelVersion"], described["handler"]) == ("1.0", "iris_handler:IrisClassifier")
        answer = infer_when_served(http, f"{cluster.url}/v2/models/iris_mar/infer")
        expected = model.predict(np.array(ROWS))
        assert answer == {"predict": expected.tolist(), "label": [LABELS[str(c)] for c in expected]}

        override = admin.post(models, params={"url": "iris_mar.mar", "model_name": "iris_proba",
                                              "handler": "proba_handler.py"})
        assert override.status_code in (200, 202), override.text
        answer = infer_when_served(http, f"{cluster.url}/v2/models/iris_proba/infer")
        np.testing.assert_allclose(np.reshape(answer["predict_proba"], (2, 3)), model.predict_proba(np.array(ROWS)))

        refusals = [({"url": "iris_mar.mar", "model_name": "bad", "handler": "nope.py"},
                     "nope.py, which is not in the archive")]
        if importlib.util.find_spec("torch") is None:  # the cluster runs this interpreter's packages
            refusals.append(({"url": "torch_net.mar"}, "needs 'torch', which is not installed"))
        for params, words in refusals:
            refused = admin.post(models, params=params)
            assert refused.status_code == 400, refused.text
            assert refused.json()["field"] == "handler" and words in refused.json()["error"]
        assert admin.get(f"{models}/torch_net").status_code == 404
    finally:
        for name in ("iris_mar", "iris_proba"):
            admin.delete(f"{models}/{name}")
        for archive in ("iris_mar.mar", "torch_net.mar"):  # later tests list the store's archives
            (store / archive).unlink(missing_ok=True)
