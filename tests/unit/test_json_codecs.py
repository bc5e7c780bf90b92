"""Unit tests for the V2 JSON and plain JSON codecs: round trips, every refusal, and a fuzz loop.

The codec sits in front of every model, so each rejection is checked for its status and field
(what clients and dashboards key on), and random junk must only ever produce RequestError.
"""
from __future__ import annotations

import json
import random
import warnings
from typing import Any

import numpy as np
import pytest

from modelpool.deployments.codecs.plain_json import encode_predict_response, parse_predict_request
from modelpool.deployments.codecs.v2_json import encode_infer_response, parse_infer_request, tensor_from_array
from modelpool.deployments.dataplane import select_outputs
from modelpool.deployments.errors import RequestError
from modelpool.deployments.datatypes import V2_DATATYPES
from modelpool.deployments.tensors import InferenceRequest, InferenceResult, RequestedOutput, model_metadata

SAMPLES: dict[str, list] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 65534, 65535],
    "UINT32": [0, 1, 2, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-(2**15), -1, 0, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [0.5, -1.0, 2, 65504.0],
    "FP32": [0.5, -1.25, 3, 2.0**100],
    "FP64": [0.1, -1e300, 7, 2.5],
    "BYTES": ["a", "", "héllo", "x y"],
}


def tensor(data: Any = None, *, name: str = "x", shape: Any = None, datatype: str = "FP32", **extra: Any) -> dict:
    """A V2 input tensor dict; shape defaults to the length of flat data."""
    data = [1.0, 2.0] if data is None else data
    body = {"name": name, "shape": [len(data)] if shape is None else shape, "datatype": datatype, "data": data}
    body.update(extra)
    return body


def request(*inputs: dict, **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs) or [tensor()], **extra}).encode()


def rejects(parse: Any, body: Any, field: str | None, *words: str) -> RequestError:
    """Assert a 400 naming ``field`` whose message mentions every word."""
    with pytest.raises(RequestError) as info:
        parse(body)
    error = info.value
    assert error.status == 400, error
    assert error.field == field, error
    for word in words:
        assert word in error.message, error
    return error


def rejects_infer(body: Any, field: str | None, *words: str) -> RequestError:
    return rejects(parse_infer_request, body, field, *words)


def rejects_predict(body: Any, field: str | None, *words: str) -> RequestError:
    return rejects(parse_predict_request, body, field, *words)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(V2_DATATYPES))
def test_every_datatype_round_trips(datatype: str) -> None:
    values = SAMPLES[datatype]
    parsed = parse_infer_request(request(tensor(values, shape=[2, 2], datatype=datatype)))
    array = parsed.inputs[0].data
    assert array.dtype == V2_DATATYPES[datatype]
    assert array.shape == (2, 2)
    encoded = tensor_from_array("y", array)
    expected = [float(v) for v in values] if datatype.startswith("FP") else values
    assert encoded == {"name": "y", "datatype": datatype, "shape": [2, 2], "data": expected}


def test_bytes_values_are_python_strings() -> None:
    array = parse_infer_request(request(tensor(["a", "b"], datatype="BYTES"))).inputs[0].data
    assert array.dtype == object and all(type(v) is str for v in array)


def test_nested_and_flat_data_decode_alike() -> None:
    flat = parse_infer_request(request(tensor([1, 2, 3, 4, 5, 6], shape=[2, 3], datatype="INT64")))
    nested = parse_infer_request(request(tensor([[1, 2, 3], [4, 5, 6]], shape=[2, 3], datatype="INT64")))
    np.testing.assert_array_equal(flat.inputs[0].data, nested.inputs[0].data)
    assert nested.inputs[0].data.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_nesting_that_differs_from_shape_is_fine_when_count_matches() -> None:
    parsed = parse_infer_request(request(tensor([[1, 2], [3, 4], [5, 6]], shape=[2, 3], datatype="INT32")))
    assert parsed.inputs[0].data.tolist() == [[1, 2, 3], [4, 5, 6]]
    deep: Any = [7]
    for _ in range(200):  # deeper than numpy's 64 dimensions: nesting is only notation
        deep = [deep]
    assert parse_infer_request({"inputs": [tensor(deep, shape=[1], datatype="INT8")]}).inputs[0].data.tolist() == [7]


def test_scalar_empty_and_many_inputs() -> None:
    parsed = parse_infer_request(request(
        tensor([3.5], shape=[], name="s", datatype="FP64"),
        tensor([], shape=[0, 4], name="e", datatype="BYTES"),
        tensor([[], []], shape=[2, 0], name="z", datatype="INT8"),
    ))
    scalar, empty, zero = parsed.inputs
    assert scalar.data.shape == () and scalar.data.item() == 3.5
    assert empty.data.shape == (0, 4) and empty.data.dtype == object
    assert zero.data.shape == (2, 0) and zero.data.dtype == np.int8


def test_request_fields_are_kept() -> None:
    body = request(tensor(parameters={"content_type": "np"}), id="req-1", parameters={"k": 1},
                   outputs=[{"name": "b"}, {"name": "a", "parameters": {"binary_data": False}}])
    parsed = parse_infer_request(body)
    assert isinstance(parsed, InferenceRequest)
    assert parsed.id == "req-1" and parsed.parameters == {"k": 1}
    assert parsed.requested_outputs == ("b", "a")
    assert parsed.inputs[0].parameters == {"content_type": "np"} and parsed.inputs[0].shape == (2,)


def test_optional_fields_may_be_absent_null_or_empty() -> None:
    for extra in ({}, {"id": None, "parameters": None, "outputs": None}, {"outputs": []}):
        parsed = parse_infer_request(request(**extra))
        assert parsed.id is None and parsed.parameters == {} and parsed.requested_outputs is None


def test_body_may_be_bytes_str_bytearray_or_dict() -> None:
    body = request(tensor([1, 2], datatype="INT64"))
    utf16 = body.decode().encode("utf-16")
    for form in (body, body.decode(), bytearray(body), memoryview(body), json.loads(body), utf16):
        assert parse_infer_request(form).inputs[0].data.tolist() == [1, 2]


def test_nan_and_infinity_pass_through_float_tensors() -> None:
    array = parse_infer_request(b'{"inputs":[{"name":"x","shape":[3],"datatype":"FP16","data":[NaN,Infinity,1]}]}')
    data = array.inputs[0].data
    assert np.isnan(data[0]) and np.isinf(data[1]) and data[2] == 1


def test_big_ints_are_fine_for_fp64() -> None:
    assert parse_infer_request(request(tensor([10**30], datatype="FP64"))).inputs[0].data[0] == 1e30


# --- responses -----------------------------------------------------------------------------------


def answer(outputs: dict, name: str = "m", version: str | None = None, request_id: str | None = None,
           wanted: tuple[str, ...] | None = None) -> bytes:
    """Encode ``outputs`` as the data plane hands them over: selected and ordered for the request."""
    asked = None if wanted is None else tuple(RequestedOutput(n) for n in wanted)
    request = InferenceRequest(id=request_id, inputs=(), parameters={}, outputs=asked)
    return encode_infer_response(InferenceResult(name, version, request, select_outputs(outputs, request, name)))


def test_response_echoes_id_and_keeps_order() -> None:
    outputs = {"predict": np.array([1, 0]), "proba": np.array([[0.1, 0.9], [0.8, 0.2]])}
    body = json.loads(answer(outputs, "iris", "2", "req-7"))
    assert list(body) == ["model_name", "model_version", "id", "outputs"]
    assert body["id"] == "req-7" and body["model_version"] == "2"
    assert body["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        {"name": "proba", "datatype": "FP64", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2]},
    ]


def test_response_omits_missing_optional_fields() -> None:
    body = json.loads(answer({"y": np.zeros(1, np.float32)}))
    assert body == {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [0.0]}]}


def test_requested_outputs_filter_and_order() -> None:
    outputs = {"a": np.array([1]), "b": np.array([2.0]), "c": np.array([True])}
    body = json.loads(answer(outputs, wanted=("c", "a")))
    assert [o["name"] for o in body["outputs"]] == ["c", "a"]
    assert body["outputs"][0]["datatype"] == "BOOL"


def test_unknown_requested_output_lists_available() -> None:
    with pytest.raises(RequestError) as info:
        answer({"a": np.array([1]), "b": np.array([2])}, wanted=("a", "nope"))
    assert info.value.status == 400 and info.value.field == "outputs[1].name"
    assert '"nope"' in info.value.message and '"a", "b"' in info.value.message


@pytest.mark.parametrize("array,datatype,data", [
    (np.array([[1, 2], [3, 4]], dtype=np.uint16).T, "UINT16", [1, 3, 2, 4]),  # row-major even if transposed
    (np.array(["x", "yz"]), "BYTES", ["x", "yz"]),
    (np.array([b"x", b"\xc3\xa9"]), "BYTES", ["x", "é"]),
    (np.array(["a", b"b", 3], dtype=object), "BYTES", ["a", "b", "3"]),
    (np.array(2.5, dtype=np.float16), "FP16", [2.5]),
    (np.array([1], dtype=">i4"), "INT32", [1]),
    ([True, False], "BOOL", [True, False]),
])
def test_tensor_from_array(array: Any, datatype: str, data: list) -> None:
    encoded = tensor_from_array("t", array)
    assert encoded["datatype"] == datatype and encoded["data"] == data
    assert encoded["shape"] == list(np.shape(array))


def test_tensor_from_array_refuses_unsupported_dtypes() -> None:
    with pytest.raises(TypeError, match="complex128"):
        tensor_from_array("t", np.array([1j]))


# --- request errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("body,words", [
    (b"", ["empty"]),
    (b"   ", ["empty"]),
    (b"{not json", ["not valid JSON", "line 1"]),
    (b"\xff\xfe\xfa", ["not valid JSON"]),
    (b"[" * 100_000, ["not valid JSON"]),
    (b'{"inputs": [' + b"9" * 5000 + b"]}", ["too many digits"]),
    (b"[1, 2]", ["an array", "JSON object"]),
    (b"null", ["null"]),
    (b'"inputs"', ["string"]),
    (None, ["JSON text"]),
    (42, ["JSON text"]),
])
def test_body_must_be_a_json_object(body: Any, words: list[str]) -> None:
    rejects_infer(body, "body", *words)
    rejects_predict(body, "body", *words)


@pytest.mark.parametrize("body,field,words", [
    ({}, "inputs", ["missing", "non-empty list"]),
    ({"inputs": []}, "inputs", ["non-empty list"]),
    ({"inputs": {"name": "x"}}, "inputs", ["an object"]),
    ({"instances": [[1]]}, "inputs", ["predict route"]),
    ({"inputs": [tensor()], "id": 5}, "id", ["string"]),
    ({"inputs": [tensor()], "id": ["a"]}, "id", ["string"]),
    ({"inputs": [tensor()], "parameters": []}, "parameters", ["JSON object"]),
    ({"inputs": [tensor()], "outputs": "a"}, "outputs", ["list"]),
    ({"inputs": [tensor()], "outputs": ["a"]}, "outputs[0]", ["object"]),
    ({"inputs": [tensor()], "outputs": [{"name": 1}]}, "outputs[0].name", ["string"]),
    ({"inputs": [tensor()], "outputs": [{}]}, "outputs[0].name", ["string"]),
    ({"inputs": [tensor()], "outputs": [{"name": "a"}, {"name": "a"}]}, "outputs[1].name", ["already requested"]),
    ({"inputs": [tensor()], "outputs": [{"name": "a", "parameters": 3}]}, "outputs[0].parameters", ["object"]),
    ({"inputs": [3]}, "inputs[0]", ["object"]),
    ({"inputs": [tensor(), None]}, "inputs[1]", ["null"]),
    ({"inputs": [tensor(name=7)]}, "inputs[0].name", ["string"]),
    ({"inputs": [tensor(name="")]}, "inputs[0].name", ["non-empty"]),
    ({"inputs": [tensor(name="a"), tensor(name="b"), tensor(name="a")]}, "inputs[2].name",
     ['the string "a", like inputs[0].name', "unique"]),
    ({"inputs": [tensor(datatype="FLOAT")]}, "inputs[0].datatype", ["FP32", "BYTES", "BOOL"]),
    ({"inputs": [tensor(datatype="fp32")]}, "inputs[0].datatype", ['did you mean "FP32"']),
    ({"inputs": [tensor(datatype=["FP32"])]}, "inputs[0].datatype", ["an array"]),
    ({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, "inputs[0].datatype", ["missing"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}, "inputs[0].shape", ["missing"]),
    ({"inputs": [tensor(shape=2)]}, "inputs[0].shape", ["list of non-negative integers"]),
    ({"inputs": [tensor(shape=[2, -1])]}, "inputs[0].shape", ["shape[1] is -1"]),
    ({"inputs": [tensor(shape=[True, 2])]}, "inputs[0].shape", ["shape[0] is true"]),
    ({"inputs": [tensor(shape=[2.0])]}, "inputs[0].shape", ["2.0"]),
    ({"inputs": [tensor(shape=["2"])]}, "inputs[0].shape", ["string"]),
    ({"inputs": [tensor([], shape=[1] * 65)]}, "inputs[0].shape", ["65 dimensions"]),
    ({"inputs": [tensor([], shape=[0, 10**30])]}, "inputs[0].shape", ["cannot be allocated"]),
    ({"inputs": [tensor(parameters=[1])]}, "inputs[0].parameters", ["object"]),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "inputs[0].data", ["missing"]),
    ({"inputs": [tensor(None, shape=[1]) | {"data": None}]}, "inputs[0].data", ["null", "JSON array"]),
    ({"inputs": [tensor(shape=[1]) | {"data": 1.5}]}, "inputs[0].data", ["JSON array"]),
    ({"inputs": [tensor(shape=[1]) | {"data": "1.5"}]}, "inputs[0].data", ["JSON array"]),
])
def test_protocol_violations(body: dict, field: str, words: list[str]) -> None:
    rejects_infer(json.dumps(body), field, *words)
    rejects_infer(body, field, *words)


@pytest.mark.parametrize("parameters", [{"binary_data_size": 8}, {"binary_data_size": 0}])
def test_binary_input_without_a_binary_section_names_the_header(parameters: dict) -> None:
    rejects_infer({"inputs": [tensor(parameters=parameters)]}, "inputs[0].parameters.binary_data_size",
                  "Inference-Header-Content-Length", "no binary section")


def test_binary_output_wishes_are_read() -> None:
    parsed = parse_infer_request(request(outputs=[{"name": "a", "parameters": {"binary_data": True}},
                                                  {"name": "b", "parameters": {"binary_data": False}}, {"name": "c"}],
                                         parameters={"binary_data_output": True}))
    assert parsed.outputs == (RequestedOutput("a", True), RequestedOutput("b", False), RequestedOutput("c"))
    assert [parsed.wants_binary(n) for n in "abc"] == [True, False, True]
    assert not parse_infer_request(request()).binary_output


@pytest.mark.parametrize("body,field,words", [
    ({"inputs": [tensor()], "parameters": {"binary_data_output": "yes"}}, "parameters.binary_data_output",
     ["true or false"]),
    ({"inputs": [tensor()], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
     "outputs[0].parameters.binary_data", ["true or false"]),
    ({"inputs": [tensor()], "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
     "outputs[0].parameters.classification", ["not supported", "predict_proba"]),
])
def test_bad_binary_and_classification_parameters(body: dict, field: str, words: list[str]) -> None:
    rejects_infer(body, field, *words)


@pytest.mark.parametrize("data,shape,words", [
    ([1, 2, 3], [2, 2], ["3 elements", "[2, 2]", "needs 4"]),
    ([[1, 2], [3, 4]], [3], ["4 elements", "needs 3"]),
    ([1], [10**30, 10**30], ["1 elements", "needs a"]),  # a 200-bit product is named, not printed
    ([1], [2**40] * 64, ["needs a"]),
])
def test_element_count_must_match_shape(data: list, shape: list, words: list[str]) -> None:
    rejects_infer({"inputs": [tensor(data, shape=shape)]}, "inputs[0].data", *words)


@pytest.mark.parametrize("data,words", [
    ([[1, 2], [3]], ["data[1] has length 1 but inputs[0].data[0] has length 2", "rectangular"]),
    ([[[1, 2], [3]]], ["data[0][1] has length 1 but inputs[0].data[0][0] has length 2"]),
    ([[1, 2], 3], ["data[1] is 3 but inputs[0].data[0] is an array"]),
    ([1, [2, 3]], ["data[1] is an array but inputs[0].data[0] is 1"]),
    ([[], [1]], ["has length 1"]),
])
def test_ragged_data_is_refused(data: list, words: list[str]) -> None:
    rejects_infer({"inputs": [tensor(data, shape=[3])]}, "inputs[0].data", *words)


@pytest.mark.parametrize("datatype,data,words", [
    ("BOOL", [True, 1], ["data[1] is 1", "JSON booleans"]),
    ("BOOL", [0, 1], ["data[0] is 0", "INT64"]),
    ("BOOL", ["true"], ['the string "true"']),
    ("INT32", [1, 1.5], ["data[1] is 1.5", "JSON integers", "FP32"]),
    ("INT32", [1.0], ["data[0] is 1.0"]),
    ("INT64", [1, True], ["data[1] is true"]),
    ("UINT8", [[1, 2], [None, 3]], ["data[1][0] is null"]),
    ("INT8", ["1"], ['the string "1"']),
    ("FP32", [1.5, "nan"], ['data[1] is the string "nan"', "JSON numbers"]),
    ("FP64", [1.5, False], ["data[1] is false"]),
    ("FP16", [{"v": 1}], ["an object"]),
    ("FP32", [1, 2, 3, 4, 5, "x" * 10_000], ["data[5]", '"xxxx', "..."]),  # no giant unicode array
    ("BYTES", ["a", 1], ["data[1] is 1", "JSON strings"]),
    ("BYTES", ["a", None], ["null"]),
    ("BYTES", [["a", True]], ["data[0][1] is true"]),
])
def test_element_types_must_fit_datatype(datatype: str, data: list, words: list[str]) -> None:
    shape = list(np.array(data, dtype=object).shape)
    rejects_infer(request(tensor(data, shape=shape, datatype=datatype)), "inputs[0].data", *words)
    rejects_infer({"inputs": [tensor(data, shape=shape, datatype=datatype)]}, "inputs[0].data", *words)


@pytest.mark.parametrize("datatype,data,words", [
    ("UINT8", [1, 300], ["data[1] is 300", "UINT8 range [0, 255]"]),
    ("UINT8", [-1], ["data[0] is -1"]),
    ("UINT64", [1, -1], ["data[1] is -1", "UINT64"]),
    ("UINT64", [2**64], ["18446744073709551616", "UINT64"]),
    ("INT8", [-129], ["INT8 range [-128, 127]"]),
    ("INT16", [2**15], ["INT16"]),
    ("INT32", [2**31], ["INT32"]),
    ("INT64", [-1, 2**63], ["data[1] is 9223372036854775808", "INT64"]),
    ("INT64", [10**200], ["-bit integer"]),
    ("FP16", [1.0, 1e6], ["data[1] is 1000000.0", "FP16 range"]),
    ("FP16", [70000], ["70000"]),
    ("FP32", [1e39], ["FP32 range", "FP64"]),
    ("FP64", [1.0, 10**400], ["data[1]", "-bit integer", "FP64 range"]),
])
@pytest.mark.parametrize("warning_action", ["ignore", "error"])  # numpy's overflow warning may be either
def test_values_must_fit_datatype_range(datatype: str, data: list, words: list[str], warning_action: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(warning_action)
        rejects_infer({"inputs": [tensor(data, datatype=datatype)]}, "inputs[0].data", *words)


def test_client_nan_is_not_mistaken_for_overflow() -> None:
    data = parse_infer_request({"inputs": [tensor([float("nan"), float("-inf"), 1.0], datatype="FP16")]}).inputs[0].data
    assert np.isnan(data[0]) and data[1] == -np.inf and data[2] == 1


# --- plain JSON form -----------------------------------------------------------------------------


def test_predict_rows_become_a_2d_array() -> None:
    array = parse_predict_request(b'{"instances": [[1.5, 2], [3, 4]]}')
    assert array.dtype == np.float64 and array.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert parse_predict_request({"instances": [[1, 2]]}).dtype == np.int64
    assert parse_predict_request('{"inputs": [[true, false]]}').dtype == np.bool_


def test_predict_1d_instances_become_one_column() -> None:
    array = parse_predict_request(b'{"instances": [1, 2, 3]}')
    assert array.shape == (3, 1) and array.tolist() == [[1], [2], [3]]


def test_predict_strings_keep_python_types() -> None:
    array = parse_predict_request(b'{"instances": [["red", 1.5, true], ["blue", 2, false]]}')
    assert array.dtype == object and array.shape == (2, 3)
    assert [type(v) for v in array[0]] == [str, float, bool]


@pytest.mark.parametrize("body,field,words", [
    ({}, "instances", ["missing", "non-empty list"]),
    ({"instances": []}, "instances", ["non-empty list"]),
    ({"instances": "1,2"}, "instances", ["string"]),
    ({"inputs": {"x": [1]}}, "inputs", ["an object"]),
    ({"inputs": [tensor()]}, "inputs[0]", ["V2 infer route"]),
    ({"instances": [[1]], "inputs": [[1]]}, "body", ["not both"]),
    ({"instances": [[1, 2], [3, 4], [5, 6, 7]]}, "instances[2]",
     ["instances[2] has length 3 but instances[0] has length 2", "same number"]),
    ({"inputs": [[1, 2], [3]]}, "inputs[1]", ["inputs[1] has length 1 but inputs[0] has length 2"]),
    ({"instances": [[1, 2], 3]}, "instances[1]", ["instances[1] is 3 but instances[0] is an array"]),
    ({"instances": [[[1, 2]], [[3, 4]]]}, "instances[0]", ["[0][0] is an array"]),
    ({"instances": [[], []]}, "instances[0]", ["empty"]),
    ({"instances": [[1, None], [2, 3]]}, "instances[0]", ["instances[0][1] is null", "numbers, booleans or strings"]),
    ({"instances": [[1, 2], [3, {"a": 1}]]}, "instances[1]", ["instances[1][1] is an object"]),
    ({"instances": [[1, 2], [3, 2**64]]}, "instances[1]", ["instances[1][1]", "too large"]),
    ({"instances": [[1.5, 10**400]]}, "instances[0]", ["-bit integer", "too large"]),
])
def test_predict_errors(body: dict, field: str, words: list[str]) -> None:
    rejects_predict(json.dumps(body), field, *words)


def test_encode_predict_response() -> None:
    assert json.loads(encode_predict_response(np.array([[0.25, 0.75]]))) == {"predictions": [[0.25, 0.75]]}
    mixed = [np.int64(1), {"label": np.str_("a"), "p": np.float32(0.5)}, np.array([1, 2]), b"z"]
    assert json.loads(encode_predict_response(mixed)) == {"predictions": [1, {"label": "a", "p": 0.5}, [1, 2], "z"]}


# --- metadata and error bodies -------------------------------------------------------------------


def test_model_metadata() -> None:
    body = model_metadata("iris", ["1", "2"], "sklearn",
                          [{"name": "input-0", "datatype": "FP64", "shape": (-1, 4), "extra": 1}],
                          [{"name": "predict", "datatype": "INT64", "shape": [-1]}])
    assert body == {
        "name": "iris", "versions": ["1", "2"], "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
    }
    json.dumps(body)
    with pytest.raises(ValueError, match="FLOAT"):
        model_metadata("m", [], "p", [{"name": "x", "datatype": "FLOAT", "shape": [1]}], [])


# --- fuzz ----------------------------------------------------------------------------------------

JUNK: list[Any] = [None, True, False, 0, -1, 1.5, -0.0, 2**64, -(2**63) - 1, 10**300, float("nan"), float("inf"),
                   "", "nan", "NaN", "1", "true", "FP32", [], {}, [[]], [None], {"name": None}, "x" * 300]


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON-ish value, biased towards the shapes that confuse array conversion."""
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        return rng.choice(JUNK)
    if roll < 0.8:
        width = rng.choice([0, 1, 2, 3, 3, 4])
        return [junk_value(rng, depth + 1) for _ in range(width)]
    return {rng.choice(["name", "shape", "datatype", "data", "parameters", "id", "x"]): junk_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def junk_data(rng: random.Random) -> Any:
    """Mostly numbers in random nesting, sometimes ragged, sometimes with a stray value."""
    leaves = [rng.choice([rng.randint(-300, 300), rng.random(), rng.choice(JUNK)]) if rng.random() < 0.2
              else rng.randint(0, 100) for _ in range(rng.randint(0, 12))]
    data: Any = leaves
    while rng.random() < 0.5 and len(data) > 1:
        cut = rng.randint(1, len(data) - 1)
        data = [data[:cut], data[cut:]] if rng.random() < 0.5 else [data[i:i + 2] for i in range(0, len(data), 2)]
    return data


def junk_tensor(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return junk_value(rng)
    body = {"name": rng.choice(["x", "y", "", 1, None]), "datatype": rng.choice(list(V2_DATATYPES) + ["fp32", 5]),
            "shape": rng.choice([[rng.randint(0, 6)], [rng.randint(0, 4), rng.randint(0, 4)], [], [-1], [True],
                                 junk_value(rng)]),
            "data": junk_data(rng) if rng.random() < 0.8 else junk_value(rng)}
    for key in rng.sample(list(body), rng.randint(0, 1)):
        del body[key]
    if rng.random() < 0.1:
        body["parameters"] = rng.choice([{"binary_data_size": 4}, {"binary_data": False}, junk_value(rng)])
    return body


def junk_body(rng: random.Random) -> Any:
    body: dict[str, Any] = {"inputs": [junk_tensor(rng) for _ in range(rng.randint(0, 3))]}
    for key in ("id", "parameters", "outputs", "instances"):
        if rng.random() < 0.2:
            body[key] = junk_value(rng)
    return body if rng.random() < 0.9 else junk_value(rng)


def mangle(text: bytes, rng: random.Random) -> bytes:
    """Truncate, cut or flip bytes of valid JSON: the malformed bodies a broken client sends."""
    cut = rng.randint(0, len(text))
    return rng.choice([text[:cut], text[:cut] + text[cut + 1:], text[:cut] + bytes([rng.randint(0, 255)]) + text[cut:]])


def only_request_errors(parse: Any, body: Any) -> None:
    try:
        parse(body)
    except RequestError as error:
        assert error.status == 400 and error.message
    # any other exception fails the test with its traceback


def test_fuzzed_bodies_raise_only_request_errors() -> None:
    rng = random.Random(20240501)
    for _ in range(1500):
        body = junk_body(rng)
        try:
            text = json.dumps(body).encode()
        except ValueError:
            text = b"{"
        for form in (body, text, mangle(text, rng)):
            only_request_errors(parse_infer_request, form)
            only_request_errors(parse_predict_request, form)
        only_request_errors(parse_predict_request, {"instances": junk_data(rng) or junk_value(rng)})


def as_strings(data: Any) -> Any:
    return [as_strings(d) for d in data] if isinstance(data, list) else str(data)


def leaf_count(data: Any) -> int:
    return sum(leaf_count(d) for d in data) if isinstance(data, list) else 1


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # by design, see _to_numpy
def test_fuzzed_tensor_data_decodes_exactly_or_raises_request_error() -> None:
    """Well-formed envelopes around junk data, so the data path itself gets the fuzzing."""
    rng = random.Random(99)
    accepted = 0
    for _ in range(3000):
        data, datatype = junk_data(rng), rng.choice(list(V2_DATATYPES))
        if datatype == "BYTES" and rng.random() < 0.7:
            data = as_strings(data)
        shape = [leaf_count(data)] if rng.random() < 0.8 else [rng.randint(0, 5), rng.randint(0, 3)]
        body = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
        for form in (body, json.dumps(body)):
            try:
                array = parse_infer_request(form).inputs[0].data
            except RequestError as error:
                assert error.status == 400 and error.field == "inputs[0].data", error
                continue
            accepted += 1
            assert array.dtype == V2_DATATYPES[datatype] and list(array.shape) == shape
    assert accepted > 500  # the loop must exercise the success path too


def test_random_bytes_raise_only_request_errors() -> None:
    rng = random.Random(7)
    for _ in range(300):
        noise = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 40)))
        only_request_errors(parse_infer_request, noise)
        only_request_errors(parse_predict_request, noise)
