"""V2 clients written by others, with their default settings, against the real local cluster.

tritonclient.http's default ``infer`` sends inputs as binary tensor data and asks for binary
outputs; these tests use it as a user would (no option changed) on dedicated apps, versions, the
generic pool and a version the generic pool serves behind a dedicated app (one forwarding hop).
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as triton_http
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from tests.integration.handler_models import register_handler_model

pytestmark = pytest.mark.integration

TEXT_MODEL = '''
import numpy as np


def predict(data):
    texts = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in np.asarray(data).ravel()]
    return {"length": np.array([len(t) for t in texts], dtype=np.int64),
            "upper": np.array([t.upper() for t in texts], dtype=object)}
'''


@pytest.fixture(scope="module")
def triton(cluster) -> triton_http.InferenceServerClient:
    client = triton_http.InferenceServerClient(url=cluster.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def text_model(cluster, tmp_path_factory) -> str:
    """A BYTES model in the generic pool (no replicas of its own)."""
    with requests.Session() as admin:
        admin.headers.update(cluster.auth)
        registered = register_handler_model(cluster, admin, tmp_path_factory.mktemp("text"), "textlen",
                                            TEXT_MODEL, initial_workers=0)
        assert registered.status_code == 200, registered.text
        yield "textlen"
        admin.delete(f"{cluster.url}/models/textlen")


def iris_input(rows: np.ndarray, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def test_health_and_metadata_through_tritonclient(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.get_server_metadata()["name"]
    assert triton.is_model_ready("iris") and triton.is_model_ready("iris", "1")
    metadata = triton.get_model_metadata("iris")
    assert metadata["name"] == "iris" and set(metadata["versions"]) >= {"1", "2"}
    assert metadata["inputs"][0]["datatype"] == "FP64" and metadata["inputs"][0]["shape"] == [-1, 4]
    assert triton.get_model_metadata("iris", "1")["name"] == "iris"


def test_default_infer_is_binary_both_ways_and_classifies_iris(triton):
    iris = load_iris()
    result = triton.infer("iris", [iris_input(iris.data)])
    assert result.get_response()["model_name"] == "iris"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict"]  # the model's default output
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    predict = result.as_numpy("predict")
    assert predict.dtype == np.int64 and predict.shape == (150,)
    assert np.mean(predict == iris.target) > 0.9


def test_requested_outputs_json_inputs_and_versions(triton):
    rows = load_iris().data[:3]
    outputs = [triton_http.InferRequestedOutput("predict_proba"), triton_http.InferRequestedOutput("predict", binary_data=False)]
    result = triton.infer("iris", [iris_input(rows, binary=False)], outputs=outputs, model_version="1", request_id="r-9")
    response = result.get_response()
    assert response["model_version"] == "1" and response["id"] == "r-9"
    assert [o["name"] for o in response["outputs"]] == ["predict_proba", "predict"]
    assert response["outputs"][1]["data"] == [0, 0, 0]
    np.testing.assert_allclose(result.as_numpy("predict_proba").sum(axis=1), 1.0)


def test_bytes_inputs_and_outputs_on_a_generic_pool_model(triton, text_model):
    words = np.array([["héllo"], ["x"], [""]], dtype=object)
    tensor = triton_http.InferInput("text", [3, 1], "BYTES")
    tensor.set_data_from_numpy(words)
    result = triton.infer(text_model, [tensor])
    assert result.as_numpy("length").tolist() == [5, 1, 0]
    assert [v.decode() for v in result.as_numpy("upper")] == ["HÉLLO", "X", ""]
    json_tensor = triton_http.InferInput("text", [1, 1], "BYTES")
    json_tensor.set_data_from_numpy(np.array([["ab"]], dtype=object), binary_data=False)
    as_json = triton.infer(text_model, [json_tensor], outputs=[triton_http.InferRequestedOutput("upper", binary_data=False)])
    assert as_json.get_response()["outputs"] == [{"name": "upper", "datatype": "BYTES", "shape": [1], "data": ["AB"]}]


def test_a_pool_version_behind_a_dedicated_app_answers_binary_through_the_forward(cluster, admin, triton):
    url = f"{cluster.url}/models"
    for archive, workers in (("iris-1.zip", 0), ("iris-2.zip", 1)):
        registered = admin.post(url, params={"url": archive, "model_name": "petal", "initial_workers": workers,
                                             "synchronous": "true"})
        assert registered.status_code == 200, registered.text
    try:
        rows = load_iris().data[:2]
        result = triton.infer("petal", [iris_input(rows)], model_version="1")
        assert result.get_response()["model_version"] == "1"
        assert result.as_numpy("predict").tolist() == [0, 0]
        assert triton.infer("petal", [iris_input(rows)]).get_response()["model_version"] == "2"
    finally:
        admin.delete(f"{url}/petal")


def test_errors_reach_tritonclient_as_400s_with_the_message(triton):
    bad = triton_http.InferInput("input-0", [1, 3], "FP64")
    bad.set_data_from_numpy(np.ones((1, 3)))
    with pytest.raises(InferenceServerException) as shape:
        triton.infer("iris", [bad])
    assert "expects input shape [-1, 4]" in shape.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("no-such-model", [iris_input(np.ones((1, 4)))])
    assert "unknown model 'no-such-model'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as version:
        triton.infer("iris", [iris_input(np.ones((1, 4)))], model_version="9")
    assert "no version '9'" in version.value.message()


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"])
def test_malformed_binary_bodies_are_clear_400s(cluster, http, path):
    header = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 32}}]}).encode()
    cases = {
        "truncated": (header + b"\x00" * 20, len(header), "only 20 bytes"),
        "header past the end": (header, len(header) + 10, "the body has only"),
        "size not shape x datatype": (header.replace(b"32", b"24") + b"\x00" * 24, len(header), "needs 32"),
    }
    for name, (body, length, words) in cases.items():
        answer = http.post(f"{cluster.url}{path}", data=body,
                           headers={"Inference-Header-Content-Length": str(length),
                                    "Content-Type": "application/octet-stream"}, timeout=10)
        assert answer.status_code == 400, (name, answer.text)
        assert words in answer.json()["error"], (name, answer.json())


def test_bytes_elements_are_length_prefixed_on_the_wire(cluster, http, text_model):
    """The raw layout, byte for byte, without tritonclient in between."""
    element = "naïve".encode()
    header = json.dumps({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": 4 + len(element)}}],
                         "outputs": [{"name": "upper", "parameters": {"binary_data": True}}]}).encode()
    answer = http.post(f"{cluster.url}/v2/models/{text_model}/infer", data=header + struct.pack("<I", len(element)) + element,
                       headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["Inference-Header-Content-Length"])
    assert answer.headers["content-type"] == "application/octet-stream"
    output = json.loads(answer.content[:length])["outputs"][0]
    upper = "NAÏVE".encode()
    assert output["parameters"]["binary_data_size"] == 4 + len(upper)
    assert answer.content[length:] == struct.pack("<I", len(upper)) + upper


def test_server_metadata_shape(cluster, http):
    body = http.get(f"{cluster.url}/v2").json()
    assert set(body) >= {"name", "version", "extensions"}
    assert "binary_tensor_data" in body["extensions"], body
