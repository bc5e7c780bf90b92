"""V2 clients written by others, with their default settings, against the real local cluster.

REST through tritonclient.http, gRPC through tritonclient.grpc (via the gRPC front on --grpc-port).
tritonclient.http's default ``infer`` sends inputs as binary tensor data and asks for binary
outputs; these tests use it as a user would (no option changed) on dedicated apps, versions, the
generic pool and a version the generic pool serves behind a dedicated app (one forwarding hop).
"""
from __future__ import annotations

import json
import struct

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.protos.service import InferenceStub
from tests.integration.handler_models import register_handler_model
from tests.integration.test_management import register_together, wait_for

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
    # readiness is asserted by the gRPC twin below (which waits for it): right after test_repository's unload, an
    # application is still deleting and /v2/health/ready is honestly 503 for a few seconds
    assert triton.is_server_live()
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


# --- V2 over gRPC, through tritonclient.grpc with its defaults ------------------------------------

@pytest.fixture(scope="module")
def triton_rpc(cluster) -> triton_grpc.InferenceServerClient:
    client = triton_grpc.InferenceServerClient(url=cluster.grpc_target)
    yield client
    client.close()


def grpc_iris_input(rows: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    return tensor


def test_grpc_health_and_metadata(triton_rpc, http, cluster):
    assert triton_rpc.is_server_live()
    assert wait_for(triton_rpc.is_server_ready), http.get(f"{cluster.url}/v2/health/ready").text
    metadata = triton_rpc.get_server_metadata()
    assert metadata.name == "modelpool" and "binary_tensor_data" in metadata.extensions
    assert triton_rpc.is_model_ready("iris") and triton_rpc.is_model_ready("iris", "1")
    model = triton_rpc.get_model_metadata("iris")
    assert model.name == "iris" and set(model.versions) >= {"1", "2"}
    assert model.inputs[0].datatype == "FP64" and list(model.inputs[0].shape) == [-1, 4]


def test_grpc_infer_with_defaults_versions_and_requested_outputs(triton_rpc):
    iris = load_iris()
    result = triton_rpc.infer("iris", [grpc_iris_input(iris.data)])
    assert result.get_response().model_name == "iris" and result.get_response().model_version == "2"
    assert np.mean(result.as_numpy("predict") == iris.target) > 0.9
    outputs = [triton_grpc.InferRequestedOutput("predict_proba"), triton_grpc.InferRequestedOutput("predict")]
    versioned = triton_rpc.infer("iris", [grpc_iris_input(iris.data[:3])], model_version="1", outputs=outputs,
                                 request_id="g-1")
    assert versioned.get_response().model_version == "1" and versioned.get_response().id == "g-1"
    assert [o.name for o in versioned.get_response().outputs] == ["predict_proba", "predict"]
    assert versioned.as_numpy("predict").tolist() == [0, 0, 0]


def test_grpc_bytes_on_a_generic_pool_model_and_typed_contents(cluster, triton_rpc, text_model):
    tensor = triton_grpc.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([["héllo"], ["ab"]], dtype=object))
    result = triton_rpc.infer(text_model, [tensor])
    assert result.as_numpy("length").tolist() == [5, 2]
    assert [v.decode() for v in result.as_numpy("upper")] == ["HÉLLO", "AB"]
    # typed contents (what KServe's and MLServer's clients may send) instead of tritonclient's raw bytes
    message = pb.ModelInferRequest(model_name="iris", model_version="1")
    message.inputs.add(name="input-0", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        answer = InferenceStub(channel).ModelInfer(message, timeout=30)
    assert answer.model_version == "1" and np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == [0]


def test_grpc_errors_carry_the_protocol_status_and_the_rest_message(cluster, triton_rpc):
    def status_of(call) -> tuple:
        with pytest.raises(InferenceServerException) as failed:
            call()
        return failed.value.status(), failed.value.message()

    code, message = status_of(lambda: triton_rpc.infer("no-such-model", [grpc_iris_input(np.ones((1, 4)))]))
    assert code == "StatusCode.NOT_FOUND" and "unknown model 'no-such-model'" in message
    code, message = status_of(lambda: triton_rpc.infer("iris", [grpc_iris_input(np.ones((1, 4)))], model_version="9"))
    assert code == "StatusCode.NOT_FOUND" and "no version '9'" in message
    code, message = status_of(lambda: triton_rpc.infer("iris", [grpc_iris_input(np.ones((1, 3)))]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "expects input shape [-1, 4]" in message
    bad = pb.ModelInferRequest(model_name="iris", raw_input_contents=[b"\x00" * 12])
    bad.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as malformed:
            InferenceStub(channel).ModelInfer(bad, timeout=30)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 32" in malformed.value.details()


def test_grpc_repository_extension_needs_the_token_and_agrees_with_models(cluster, admin, triton_rpc):
    auth = {"authorization": cluster.auth["Authorization"]}
    with pytest.raises(InferenceServerException) as anonymous:
        triton_rpc.get_model_repository_index()
    assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"
    index = triton_rpc.get_model_repository_index(headers=auth)
    ready = {(m.name, m.version) for m in index.models if m.state == "READY"}
    listed = {m["modelName"] for m in admin.get(f"{cluster.url}/models", params={"limit": 100}).json()["models"]}
    assert listed <= {m.name for m in index.models} and ("iris", "1") in ready
    triton_rpc.load_model("iris", headers=auth)  # already registered: nothing changes
    with pytest.raises(InferenceServerException) as unknown:
        triton_rpc.load_model("no-such-archive", headers=auth)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def grpc_answer(cluster, name: str = "iris", version: str = "1"):
    """One ModelInfer over the front: (the replica's header or None, None) or (None, the status code)."""
    message = pb.ModelInferRequest(model_name=name, model_version=version)
    message.inputs.add(name="input-0", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        try:
            _, call = InferenceStub(channel).ModelInfer.with_call(message, timeout=30)
        except grpc.RpcError as failed:
            return None, failed.code()
    return dict(call.initial_metadata()).get("x-modelpool-replica", ""), None


def test_grpc_calls_of_a_dedicated_model_reach_its_replica_port(cluster, text_model):
    """The fast path: the front sends them to the replica's own port (its header says which replica)."""
    assert wait_for(lambda: grpc_answer(cluster)[0], timeout_s=30), "iris v1's replica never registered its port"
    tensor = triton_grpc.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([["ab"]], dtype=object))
    with grpc.insecure_channel(cluster.grpc_target) as channel:  # the generic pool keeps Serve's path
        message = pb.ModelInferRequest(model_name=text_model)
        message.inputs.add(name="text", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"ab")
        _, call = InferenceStub(channel).ModelInfer.with_call(message, timeout=30)
    assert "x-modelpool-replica" not in dict(call.initial_metadata())


def test_a_killed_replica_costs_grpc_callers_only_retryable_unavailable(ray_client):
    """SIGKILL iris v1's replica: calls fail only with UNAVAILABLE, then its new replica answers on its port."""
    import ray

    from modelpool.management.serve_state import serve_details

    cluster = ray_client
    before, _ = grpc_answer(cluster)
    replica = serve_details()["applications"]["model:iris:1"]["deployments"]["iris_v1"]["replicas"][0]
    ray.kill(ray.get_actor(replica["actor_name"], namespace="serve"), no_restart=True)
    statuses = set()

    def answered_by_a_new_replica():
        replica_id, status = grpc_answer(cluster)
        if status is not None:
            statuses.add(status)
        return replica_id and replica_id != before

    assert wait_for(answered_by_a_new_replica, timeout_s=90, step=0.1), f"no new replica; statuses {statuses}"
    assert statuses <= {grpc.StatusCode.UNAVAILABLE}, statuses
    assert all(grpc_answer(cluster)[0] for _ in range(20)), "the new replica answered once, then failed"


# last: it unregisters a model, and readiness (checked above) is false while its application deletes
def test_a_pool_version_behind_a_dedicated_app_answers_binary_through_the_forward(cluster, admin, triton):
    url = f"{cluster.url}/models"
    registered = register_together(cluster, [{"url": archive, "model_name": "petal", "initial_workers": workers,
                                              "synchronous": "true"} for archive, workers in (("iris-1.zip", 0),
                                                                                              ("iris-2.zip", 1))])
    assert [r.status_code for r in registered] == [200, 200], [r.text for r in registered]
    try:
        rows = load_iris().data[:2]
        result = triton.infer("petal", [iris_input(rows)], model_version="1")
        assert result.get_response()["model_version"] == "1"
        assert result.as_numpy("predict").tolist() == [0, 0]
        assert triton.infer("petal", [iris_input(rows)]).get_response()["model_version"] == "2"
    finally:
        admin.delete(f"{url}/petal")
