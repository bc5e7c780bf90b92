"""The serving core through HTTP on a real local Ray: V2 and plain JSON, versions, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

pytestmark = pytest.mark.integration


def v2_body(rows, name="input-0", datatype="FP64", **extra):
    rows = np.asarray(rows)
    return {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": datatype, "data": rows.tolist()}], **extra}


def test_v2_infer_classifies_iris_rows(cluster, http):
    iris = load_iris()
    response = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(iris.data, id="req-42"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "iris"
    assert body["id"] == "req-42"
    predict = next(o for o in body["outputs"] if o["name"] == "predict")
    assert predict["datatype"] == "INT64"
    assert predict["shape"] == [150]
    accuracy = np.mean(np.asarray(predict["data"]) == iris.target)
    assert accuracy > 0.9


def test_requested_outputs_are_returned_in_order(cluster, http):
    body = v2_body([[5.1, 3.5, 1.4, 0.2]], outputs=[{"name": "predict_proba"}])
    response = http.post(f"{cluster.url}/v2/models/iris/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba"]
    assert outputs[0]["shape"] == [1, 3]
    assert abs(sum(outputs[0]["data"]) - 1.0) < 1e-6


def test_plain_json_predict_on_a_regression_model(cluster, http):
    diabetes = load_diabetes()
    response = http.post(f"{cluster.url}/v2/models/diabetes/predict", json={"instances": diabetes.data[:50].tolist()})
    assert response.status_code == 200, response.text
    predictions = np.asarray(response.json()["predictions"])
    assert predictions.shape == (50,)
    assert np.corrcoef(predictions, diabetes.target[:50])[0, 1] > 0.5


def test_several_versions_serve_at_once_and_the_plain_path_goes_to_the_default(cluster, http):
    row = v2_body([[6.3, 3.3, 6.0, 2.5]])
    default = http.post(f"{cluster.url}/v2/models/iris/infer", json=row)
    v1 = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=row)
    v2 = http.post(f"{cluster.url}/v2/models/iris/versions/2/infer", json=row)
    assert [r.status_code for r in (default, v1, v2)] == [200, 200, 200]
    assert default.json()["model_version"] == "2"
    assert v1.json()["model_version"] == "1"
    assert v2.json()["model_version"] == "2"
    assert default.headers["x-modelpool-replica"] == v2.headers["x-modelpool-replica"]
    assert v1.headers["x-modelpool-replica"] != v2.headers["x-modelpool-replica"]


def test_metadata_ready_and_health(cluster, http):
    metadata = http.get(f"{cluster.url}/v2/models/iris")
    assert metadata.status_code == 200
    assert metadata.json()["name"] == "iris"
    assert sorted(metadata.json()["versions"]) == ["1", "2"]
    assert metadata.json()["inputs"][0]["shape"] == [-1, 4]
    assert http.get(f"{cluster.url}/v2/models/iris/versions/1").json()["name"] == "iris"
    assert http.get(f"{cluster.url}/v2/models/iris/ready").json()["ready"] is True
    assert http.get(f"{cluster.url}/v2/models/iris/versions/1/ready").status_code == 200
    assert http.get(f"{cluster.url}/v2/health/live").json() == {"live": True}
    assert http.get(f"{cluster.url}/v2/health/ready").status_code == 200
    assert http.get(f"{cluster.url}/v2").json()["name"] == "modelpool"


def test_python_handler_model_serves(cluster, http):
    response = http.post(f"{cluster.url}/v2/models/iris_report/infer", json=v2_body([[5.1, 3.5, 1.4, 0.2]]))
    assert response.status_code == 200, response.text
    names = {o["name"] for o in response.json()["outputs"]}
    assert {"predict", "confidence"} <= names


@pytest.mark.parametrize("path, payload, status, field", [
    ("/v2/models/iris/infer", b"{not json", 400, None),
    ("/v2/models/iris/infer", {"inputs": []}, 400, "inputs"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}]}, 400, "inputs[0].datatype"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, "inputs[0].data"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 422, "inputs[0].shape"),
    ("/v2/models/iris/predict", {"instances": [[1, 2, 3, 4], [1, 2]]}, 400, "instances[1]"),
    ("/v2/models/nosuchmodel/infer", {"inputs": []}, 404, "model_name"),
    ("/v2/models/iris/versions/7/infer", {"inputs": []}, 404, "version"),
])
def test_bad_input_gets_a_4xx_naming_the_field(cluster, http, path, payload, status, field):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = http.post(f"{cluster.url}{path}", data=data, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]
    if field is not None:
        assert body["field"] == field


def test_a_body_over_the_limit_gets_413(cluster, http):
    rows = np.random.default_rng(0).random((8000, 4))  # about 600 kB of JSON against a 256 kB limit
    response = http.post(f"{cluster.url}/v2/models/iris/infer", json=v2_body(rows))
    assert response.status_code == 413
    assert response.json()["field"] == "body"


def test_sklearn_rejecting_input_is_a_422_naming_the_inputs(cluster, http):
    bad = '{"inputs":[{"name":"x","shape":[1,10],"datatype":"FP64","data":[NaN,0,0,0,0,0,0,0,0,0]}]}'
    response = http.post(f"{cluster.url}/v2/models/diabetes/infer", data=bad, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "NaN" in response.json()["error"]
    assert response.json()["field"] == "inputs"


def test_a_handler_that_raises_gives_500_and_the_replica_keeps_serving(cluster, http, fragile_model):
    url = f"{cluster.url}/v2/models/{fragile_model}/infer"
    failing = http.post(url, json=v2_body([[1.0, -2.0]]))
    assert failing.status_code == 500
    assert "negative readings are not supported" in failing.json()["error"]
    good = http.post(url, json=v2_body([[1.0, 2.0]]))
    assert good.status_code == 200
    assert good.json()["outputs"][0]["data"] == [3.0]
    assert good.headers["x-modelpool-replica"] == failing.headers["x-modelpool-replica"]


STUCK_HANDLER = """
import time
import numpy as np

def predict(data):
    time.sleep(max(0.01, float(np.asarray(data)[0][0])))   # a slow model; the first reading says how slow
    return np.asarray(data).sum(axis=1)
"""


def test_response_timeout_answers_504_even_when_the_client_turns_timeouts_off_and_recycles_the_stuck_replica(
        cluster, admin, http, tmp_path):
    """TorchServe's response_timeout: the caller gets a 504 in time, and Serve replaces the replica whose
    handler is still stuck (Serve's own timeout yields to ``x-request-timeout-seconds: 0``; this one does not)."""
    import time

    from tests.integration.handler_models import register_handler_model

    registered = register_handler_model(cluster, admin, tmp_path, "stuck", STUCK_HANDLER, initial_workers=1,
                                        response_timeout=1)
    assert registered.status_code == 200, registered.text
    url = f"{cluster.url}/v2/models/stuck/infer"
    try:
        quick = http.post(url, json=v2_body([[0.0, 1.0]]))
        assert quick.status_code == 200, quick.text
        began = time.monotonic()
        stuck = http.post(url, json=v2_body([[20.0, 1.0]]), headers={"x-request-timeout-seconds": "0"}, timeout=30)
        waited = time.monotonic() - began
        assert stuck.status_code == 504, stuck.text
        assert stuck.json()["field"] == "response_timeout" and "response_timeout of 1 s" in stuck.json()["error"]
        assert waited < 5, f"answered after {waited:.1f} s"
        deadline, fresh = time.monotonic() + 60, None
        while time.monotonic() < deadline:  # the health check fails while the call is stuck: a new replica serves
            answer = http.post(url, json=v2_body([[0.0, 1.0]]), timeout=30)
            if answer.status_code == 200 and answer.headers["x-modelpool-replica"] != quick.headers["x-modelpool-replica"]:
                fresh = answer
                break
            time.sleep(0.5)
        assert fresh is not None, "the replica stuck past its response_timeout was never replaced"
        assert fresh.json()["outputs"][0]["data"] == [1.0]
    finally:
        admin.delete(f"{cluster.url}/models/stuck")
