"""TorchServe's and KServe V1's codecs: paths, the bodies their clients send, answers and error shapes.

Bodies are built by real HTTP clients' encoders (httpx and requests, as curl -F/-d/-T would send them),
so the form parsing is held to what clients actually put on the wire.
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import requests

from modelpool.deployments.codecs import PROTOCOLS, REST_CODECS, kserve_v1, torchserve
from modelpool.deployments.codecs.base import ProtocolCall
from modelpool.deployments.codecs.form_data import multipart_fields, urlencoded_fields
from modelpool.deployments.errors import RequestError
from modelpool.deployments.tensors import InferenceResult

ROW = [5.1, 3.5, 1.4, 0.2]


def decoded(body: bytes, content_type: str = "") -> tuple[np.ndarray, bool]:
    request = torchserve.decode(body, {"content-type": content_type} if content_type else {})
    (tensor,) = request.inputs
    assert tensor.name == "input-0" and tensor.shape == tensor.data.shape
    return tensor.data, request.parameters[torchserve.SINGLE_ROW]


def refused(body: bytes, content_type: str = "") -> RequestError:
    with pytest.raises(RequestError) as caught:
        torchserve.decode(body, {"content-type": content_type})
    assert caught.value.status == 400
    return caught.value


def encoded_form(files=None, data=None) -> tuple[bytes, str]:
    """A form body exactly as ``requests`` sends it (what the TorchServe docs' Python example uses)."""
    prepared = requests.Request("POST", "http://x/predictions/m", files=files, data=data).prepare()
    return prepared.body, prepared.headers["Content-Type"]


# ------------------------------------------------------------------------------------------ registry

def test_both_protocols_are_registered_by_name_with_their_routes():
    assert PROTOCOLS == {"torchserve": torchserve, "kserve-v1": kserve_v1}
    assert REST_CODECS["torchserve"] is torchserve and REST_CODECS["kserve-v1"] is kserve_v1
    assert (torchserve.ROUTE_PREFIX, kserve_v1.ROUTE_PREFIX) == ("/predictions", "/v1")


# ------------------------------------------------------------------------------------- TorchServe paths

@pytest.mark.parametrize(("path", "method", "call"), [
    ("/resnet-18", "POST", ProtocolCall("resnet-18", None, "infer")),
    ("/resnet-18/2.0", "POST", ProtocolCall("resnet-18", "2.0", "infer")),
    ("/resnet-18", "PUT", ProtocolCall("resnet-18", None, "infer")),  # curl -T uploads with PUT
])
def test_torchserve_paths_name_the_model_and_optionally_its_version(path, method, call):
    assert torchserve.parse_call(path, method) == call


@pytest.mark.parametrize(("path", "method", "status"), [
    ("", "POST", 404), ("/a/b/c", "POST", 404), ("//2", "POST", 404), ("/iris", "GET", 405), ("/iris", "DELETE", 405),
])
def test_torchserve_paths_outside_the_api_are_refused_with_the_routes(path, method, status):
    with pytest.raises(RequestError) as caught:
        torchserve.parse_call(path, method)
    assert caught.value.status == status
    assert "/predictions/{model_name}" in caught.value.message or "POST" in caught.value.message


# ------------------------------------------------------------------------------------- TorchServe bodies

def test_a_json_row_is_one_instance_and_rows_are_several():
    rows, single = decoded(json.dumps(ROW).encode(), "application/json")
    assert rows.tolist() == [ROW] and rows.dtype == np.float64 and single
    rows, single = decoded(json.dumps([ROW, ROW]).encode(), "application/json")
    assert rows.shape == (2, 4) and not single
    rows, single = decoded(json.dumps({"instances": [ROW]}).encode(), "application/json")
    assert rows.shape == (1, 4) and not single  # a list of rows answers with a list, even of one


def test_json_sent_without_its_type_is_still_json():
    for content_type in ("", "application/octet-stream", "application/x-www-form-urlencoded"):
        rows, single = decoded(b"[[1, 2], [3, 4]]", content_type)
        assert rows.tolist() == [[1, 2], [3, 4]] and rows.dtype == np.int64 and not single


def test_a_json_scalar_is_one_row_of_one_value():
    rows, single = decoded(b'"a review"', "application/json")
    assert rows.tolist() == [["a review"]] and rows.dtype == object and single


def test_comma_separated_numbers_are_rows_and_a_header_line_is_skipped():
    rows, single = decoded(b"5.1,3.5,1.4,0.2\n")  # curl -T row.csv: no content type at all
    assert rows.tolist() == [ROW] and single
    rows, single = decoded(b"sepal_length,sepal_width\r\n5.1,3.5\r\n6,3\r\n", "text/csv")
    assert rows.tolist() == [[5.1, 3.5], [6.0, 3.0]] and not single


def test_csv_with_text_cells_keeps_them_as_strings():
    rows, _ = decoded(b'red,1\n"blue, dark",2\n', "text/csv")
    assert rows.tolist() == [["red", 1], ["blue, dark", 2]] and rows.dtype == object


def test_other_text_is_one_instance_holding_the_whole_text():
    text = "Bloomberg has decided to publish a new report, on global economic situation.\nSecond line."
    rows, single = decoded(text.encode(), "text/plain")
    assert rows.tolist() == [[text]] and single


def test_binary_bodies_reach_the_model_as_bytes():
    jpeg = bytes([0xFF, 0xD8, 0xFF, 0xE0]) + bytes(range(256))
    rows, single = decoded(jpeg)
    assert rows.shape == (1, 1) and rows[0, 0] == jpeg and single


def test_form_fields_named_data_are_the_inputs_in_order():
    jpeg = bytes([0xFF, 0xD8]) + b"\r\n--not-a-boundary\r\n" + bytes(range(256))
    body, content_type = encoded_form(files=[("data", ("a.jpg", jpeg, "image/jpeg")),
                                             ("data", ("b.jpg", jpeg[::-1], "image/jpeg"))])
    rows, single = decoded(body, content_type)
    assert rows[:, 0].tolist() == [jpeg, jpeg[::-1]] and not single
    body, content_type = encoded_form(files={"data": ("row.json", json.dumps(ROW), "application/json")})
    rows, single = decoded(body, content_type)
    assert rows.tolist() == [ROW] and single


def test_a_url_encoded_data_field_is_the_input():
    rows, single = decoded(b"data=%5B5.1%2C3.5%2C1.4%2C0.2%5D", "application/x-www-form-urlencoded")
    assert rows.tolist() == [ROW] and single


@pytest.mark.parametrize(("body", "content_type", "field", "says"), [
    (b"", "", "body", "empty"),
    (b"  \n", "application/json", "body", "not valid JSON"),
    (b"[5.1, 3.5", "application/json", "body", "not valid JSON"),
    (b'{"rows": []}', "application/json", "body", '"instances"'),
    (b"[]", "", "body", "empty array"),
    (b"null", "application/json", "body", "null"),
    (b"[[1, 2], [3]]", "", "body[1]", "length"),
    (b'[1, {"a": 2}]', "", "body[1]", "numbers, booleans or strings"),
    (b"1,2\n3\n", "", "body", "line 2"),
])
def test_bad_bodies_are_400s_naming_the_field_and_the_fix(body, content_type, field, says):
    error = refused(body, content_type)
    assert error.field == field and says in error.message


def test_a_form_without_a_data_field_says_how_to_send_one():
    body, content_type = encoded_form(files={"image": ("a.jpg", b"\xff\xd8", "image/jpeg")})
    error = refused(body, content_type)
    assert error.field == "data" and 'curl -F "data=@' in error.message


def test_form_fields_of_different_kinds_are_refused_together():
    body, content_type = encoded_form(files=[("data", ("a.json", "[1, 2]", "application/json")),
                                             ("data", ("b.jpg", b"\xff\xd8", "image/jpeg"))])
    error = refused(body, content_type)
    assert error.field == "data" and "same kind and width" in error.message


def test_multipart_without_a_boundary_names_the_header():
    error = refused(b"--x\r\n\r\n", "multipart/form-data")
    assert error.field == "content-type"


def test_form_fields_split_as_httpx_and_requests_encode_them():
    request = httpx.Request("POST", "http://x", files=[("data", ("a.bin", b"\x00\r\n\x01", "application/x-raw"))],
                            data={"body": "hello"})
    fields = multipart_fields(request.read(), request.headers["content-type"])
    assert [(f.name, f.content_type, f.payload) for f in fields] == [
        ("body", "", b"hello"), ("data", "application/x-raw", b"\x00\r\n\x01")]
    assert [(f.name, f.payload) for f in urlencoded_fields(b"data=1%2C2&x=")] == [("data", b"1,2"), ("x", b"")]


# ------------------------------------------------------------------------------------- TorchServe answers

def result(body: bytes, outputs: dict, content_type: str = "application/json") -> InferenceResult:
    request = torchserve.decode(body, {"content-type": content_type})
    return InferenceResult("iris", "1", request, outputs)


def test_one_instance_gets_its_prediction_bare_and_several_get_a_list():
    one = torchserve.encode(result(json.dumps(ROW).encode(), {"predict": np.array([2])}))
    assert (one.payload, one.media_type) == (b"2", "application/json")
    several = torchserve.encode(result(json.dumps([ROW, ROW]).encode(), {"predict": np.array([2, 0])}))
    assert json.loads(several.payload) == [2, 0]
    probabilities = torchserve.encode(result(json.dumps(ROW).encode(),
                                             {"predict_proba": np.array([[0.25, 0.75]])}))
    assert json.loads(probabilities.payload) == [0.25, 0.75]  # no "predict": the first output


def test_a_string_prediction_comes_back_as_text_as_torchserve_sends_a_str():
    answer = torchserve.encode(result(b"great film", {"predict": np.array(["positive"], dtype=object)}, "text/plain"))
    assert (answer.payload, answer.media_type) == (b"positive", torchserve.TEXT)


def test_torchserve_errors_carry_its_code_type_and_message_and_the_field():
    body = json.loads(torchserve.error_body(404, {"error": "unknown model 'x'; served models: iris",
                                                  "field": "model_name"}))
    assert body == {"code": 404, "type": "ModelNotFoundException",
                    "message": "unknown model 'x'; served models: iris", "field": "model_name"}
    assert json.loads(torchserve.error_body(404, {"error": "no version", "field": "version"}))["type"] == \
        "ModelVersionNotFoundException"
    assert json.loads(torchserve.error_body(503, {"error": "retry"}))["type"] == "ServiceUnavailableException"
    assert json.loads(torchserve.error_body(422, {"error": "shape"}))["type"] == "BadRequestException"
    assert json.loads(torchserve.error_body(500, {"error": "boom", "traceback": ["t"]}))["traceback"] == ["t"]


# ------------------------------------------------------------------------------------- KServe V1

@pytest.mark.parametrize(("path", "method", "call"), [
    ("/models", "GET", ProtocolCall(None, None, "models")),
    ("/models/sklearn-iris", "GET", ProtocolCall("sklearn-iris", None, "ready")),
    ("/models/sklearn-iris:predict", "POST", ProtocolCall("sklearn-iris", None, "infer")),
    ("/models/sklearn-iris:explain", "POST", ProtocolCall("sklearn-iris", None, "explain")),
    ("/models/iris/versions/1", "GET", ProtocolCall("iris", "1", "ready")),
    ("/models/iris/versions/1:predict", "POST", ProtocolCall("iris", "1", "infer")),
])
def test_kserve_v1_paths(path, method, call):
    assert kserve_v1.parse_call(path, method) == call


@pytest.mark.parametrize(("path", "method", "status"), [
    ("/models/iris:classify", "POST", 404), ("/models/iris:", "POST", 404), ("/models/:predict", "POST", 404),
    ("/models/iris/labels/stable:predict", "POST", 404), ("/health", "GET", 404),
    ("/models/iris:predict", "GET", 405), ("/models/iris", "POST", 405), ("/models", "POST", 405),
])
def test_kserve_v1_refuses_other_paths_and_methods(path, method, status):
    with pytest.raises(RequestError) as caught:
        kserve_v1.parse_call(path, method)
    assert caught.value.status == status and caught.value.field in ("path", "method")


def test_kserve_v1_bodies_are_the_instances_form():
    request = kserve_v1.decode(json.dumps({"instances": [ROW, ROW]}).encode(), {})
    assert request.inputs[0].data.shape == (2, 4)
    answer = kserve_v1.encode(InferenceResult("iris", "1", request, {"predict": np.array([0, 0])}))
    assert json.loads(answer.payload) == {"predictions": [0, 0]}
    with pytest.raises(RequestError) as caught:
        kserve_v1.decode(b'{"instances": []}', {})
    assert caught.value.field == "instances"


def test_kserve_v1_shapes_ready_models_explain_and_errors():
    assert json.loads(kserve_v1.ready_body("iris")) == {"name": "iris", "ready": True}
    assert json.loads(kserve_v1.models_body(["a", "b"])) == {"models": ["a", "b"]}
    error = kserve_v1.no_explainer("iris", "2")
    assert error.status == 501 and "explainer" in error.message
    assert json.loads(kserve_v1.error_body(404, {"error": "unknown", "field": "model_name"})) == {
        "error": "unknown", "field": "model_name"}
