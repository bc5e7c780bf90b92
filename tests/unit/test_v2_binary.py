"""The REST binary tensor extension, checked against tritonclient's own request builder and response parser.

tritonclient.http is the client most V2 users have; its default ``infer`` sends inputs as binary
data and asks for binary outputs. These tests build bodies with its code, decode them with ours,
encode answers with ours and read them back with its parser, for every datatype.
"""
from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
import tritonclient.http as triton_http

from modelpool.deployments.codecs import raw_tensors, v2_binary
from modelpool.deployments.codecs.v2_binary import HEADER
from modelpool.deployments.dataplane import select_outputs
from modelpool.deployments.errors import RequestError
from modelpool.deployments.tensors import InferenceRequest, InferenceResult

ARRAYS = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([[1, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[1, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -65504.0]], dtype=np.float16),
    "FP32": np.array([[1.5, -2.25], [np.inf, 3.0]], dtype=np.float32),
    "FP64": np.array([[0.1, -1e300]], dtype=np.float64),
    "BYTES": np.array([["héllo", ""], ["x y", "z"]], dtype=object),
}


def triton_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def triton_body(inputs: list, outputs: list | None = None) -> tuple[bytes, dict]:
    """The exact body and headers tritonclient.http's ``infer`` sends."""
    body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return body, ({} if json_size is None else {HEADER: str(json_size)})


def decode_triton(inputs: list, outputs: list | None = None) -> InferenceRequest:
    return v2_binary.decode(*triton_body(inputs, outputs))


def read_with_triton(result: InferenceResult) -> triton_http.InferResult:
    encoded = v2_binary.encode(result)
    length = encoded.headers.get("Inference-Header-Content-Length")
    return triton_http.InferenceServerClient.parse_response_body(encoded.payload,
                                                                 header_length=None if length is None else int(length))


def result_for(request: InferenceRequest, outputs: dict) -> InferenceResult:
    return InferenceResult("m", "1", request, select_outputs(outputs, request, "m"))


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_every_datatype_arrives_as_tritonclient_sent_it(datatype: str) -> None:
    array = ARRAYS[datatype]
    request = decode_triton([triton_input("x", array, datatype)])
    tensor = request.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, array.shape)
    assert tensor.data.dtype == array.dtype and tensor.data.tolist() == array.tolist()
    assert tensor.data.flags.writeable and tensor.data.dtype.isnative


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_every_datatype_reads_back_in_tritonclient(datatype: str) -> None:
    request = decode_triton([triton_input("x", np.zeros((1, 1)), "FP64")])  # default: binary_data_output
    assert request.binary_output
    answer = read_with_triton(result_for(request, {"y": ARRAYS[datatype]}))
    expected = ARRAYS[datatype]
    got = answer.as_numpy("y")
    if datatype == "BYTES":  # tritonclient hands BYTES back as bytes objects
        assert [v.decode() for v in got.ravel()] == list(expected.ravel())
    else:
        assert got.dtype == expected.dtype and got.tolist() == expected.tolist()
    assert answer.get_output("y")["datatype"] == datatype


def test_json_and_binary_inputs_mix_in_one_request_and_keep_their_order() -> None:
    a, b, c = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[7], [8]], np.int64), ARRAYS["BYTES"]
    request = decode_triton([triton_input("a", a, "FP32"), triton_input("b", b, "INT64", binary=False),
                             triton_input("c", c, "BYTES")])
    assert [t.name for t in request.inputs] == ["a", "b", "c"]
    assert request.inputs[0].data.tolist() == a.tolist() and request.inputs[1].data.tolist() == b.tolist()
    assert request.inputs[2].data.tolist() == c.tolist()


def test_per_output_wishes_mix_binary_and_json_outputs() -> None:
    outputs = [triton_http.InferRequestedOutput("proba", binary_data=True),
               triton_http.InferRequestedOutput("predict", binary_data=False)]
    request = decode_triton([triton_input("x", np.ones((2, 4)), "FP64")], outputs)
    proba, predict = np.array([[0.25, 0.75], [1.0, 0.0]]), np.array([1, 0])
    encoded = v2_binary.encode(result_for(request, {"predict": predict, "proba": proba}))
    length = int(encoded.headers["Inference-Header-Content-Length"])
    header = json.loads(encoded.payload[:length])
    assert [o["name"] for o in header["outputs"]] == ["proba", "predict"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": proba.nbytes} and "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == [1, 0]
    assert encoded.media_type == "application/octet-stream" and len(encoded.payload) == length + proba.nbytes
    answer = read_with_triton(result_for(request, {"predict": predict, "proba": proba}))
    assert answer.as_numpy("proba").tolist() == proba.tolist() and answer.as_numpy("predict").tolist() == [1, 0]


def test_a_request_that_wants_no_binary_output_gets_plain_json() -> None:
    outputs = [triton_http.InferRequestedOutput("predict", binary_data=False)]
    request = decode_triton([triton_input("x", np.ones((1, 4)), "FP64")], outputs)
    encoded = v2_binary.encode(result_for(request, {"predict": np.array([2])}))
    assert encoded.headers == {} and encoded.media_type == "application/json"
    assert json.loads(encoded.payload)["outputs"][0]["data"] == [2]


def test_without_the_header_the_body_is_plain_v2_json() -> None:
    body, headers = triton_body([triton_input("x", np.ones((1, 2)), "FP64", binary=False)])
    assert headers == {}
    assert v2_binary.decode(body, headers).inputs[0].data.tolist() == [[1.0, 1.0]]


def test_big_endian_outputs_are_sent_little_endian_and_bool_bytes_are_0_or_1() -> None:
    assert raw_tensors.array_to_bytes(np.array([1], dtype=">i4"), "y") == b"\x01\x00\x00\x00"
    assert raw_tensors.array_from_bytes(b"\x00\x02\x01", "BOOL", (3,), "f").tolist() == [False, True, True]
    assert raw_tensors.array_to_bytes(np.array([True, False]), "y") == b"\x01\x00"


def test_bytes_elements_that_are_not_utf8_stay_bytes() -> None:
    data = struct.pack("<I", 2) + b"\xff\xfe" + struct.pack("<I", 2) + "é".encode()
    assert raw_tensors.array_from_bytes(data, "BYTES", (2,), "f").tolist() == [b"\xff\xfe", "é"]
    assert raw_tensors.array_to_bytes(np.array([b"\xff", "é", 3], dtype=object), "y") == (
        struct.pack("<I", 1) + b"\xff" + struct.pack("<I", 2) + "é".encode() + struct.pack("<I", 1) + b"3")


# --- refusals ------------------------------------------------------------------------------------


def binary_body(tensors: list[tuple[dict, bytes]], json_length_delta: int = 0, tail: bytes = b"") -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [t for t, _ in tensors]}).encode()
    body = header + b"".join(data for _, data in tensors) + tail
    return body, {HEADER: str(len(header) + json_length_delta)}


def fp32(name: str = "x", shape: list | None = None, size: object = 8) -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape or [1, 2], "parameters": {"binary_data_size": size}}


def refused(body_and_headers: tuple[bytes, dict], field: str, *words: str) -> RequestError:
    with pytest.raises(RequestError) as info:
        v2_binary.decode(*body_and_headers)
    assert info.value.status == 400 and info.value.field == field, info.value
    for word in words:
        assert word in info.value.message, (word, info.value.message)
    return info.value


TWO_FLOATS = np.array([1.5, 2.5], np.float32).tobytes()


@pytest.mark.parametrize("case,field,words", [
    (binary_body([(fp32(shape=[1, 3], size=8), TWO_FLOATS)]), "inputs[0].parameters.binary_data_size",
     ["8 bytes of data", "[1, 3] of FP32 needs 12"]),
    (binary_body([(fp32(size=12), TWO_FLOATS)]), "inputs[0].parameters.binary_data_size",
     ["is 12", "only 8 bytes", "cut short"]),
    (binary_body([(fp32(), TWO_FLOATS[:5])]), "inputs[0].parameters.binary_data_size", ["only 5 bytes"]),
    (binary_body([(fp32(), TWO_FLOATS)], tail=b"junk"), "body", ["4 bytes follow", "binary_data_size"]),
    (binary_body([(fp32(size=-1), TWO_FLOATS)]), "inputs[0].parameters.binary_data_size", ["non-negative"]),
    (binary_body([(fp32(size="8"), TWO_FLOATS)]), "inputs[0].parameters.binary_data_size", ["non-negative integer"]),
    (binary_body([(dict(fp32(), data=[1, 2]), TWO_FLOATS)]), "inputs[0].data", ["both", "one way"]),
    ((b'{"inputs": []}', {HEADER: "999"}), "Inference-Header-Content-Length", ["999 bytes", "only 14"]),
    ((b'{"inputs": []}', {HEADER: "abc"}), "Inference-Header-Content-Length", ["whole number"]),
    ((b'{"inputs": []}', {HEADER: "0"}), "Inference-Header-Content-Length", ["is 0"]),
    (binary_body([(fp32(), TWO_FLOATS)], json_length_delta=-3), "body", ["not valid JSON"]),
    (binary_body([({"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 9}},
                   struct.pack("<I", 1) + b"a" + struct.pack("<I", 9))]),
     "inputs[0].parameters.binary_data_size", ["element 1 declares 9 bytes but only 0 remain"]),
    (binary_body([({"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": 10}},
                   struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b")]),
     "inputs[0].parameters.binary_data_size", ["cannot hold 3 BYTES elements"]),
    (binary_body([({"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 10}},
                   struct.pack("<I", 1) + b"a" + b"extra")]),
     "inputs[0].parameters.binary_data_size", ["5 bytes are left after the 1 BYTES elements"]),
])
def test_bad_binary_bodies_are_400s_naming_the_input_and_the_fix(case, field, words) -> None:
    refused(case, field, *words)


def test_random_corruption_of_a_tritonclient_body_only_ever_raises_request_errors() -> None:
    rng = random.Random(12)
    body, headers = triton_body([triton_input("a", ARRAYS["FP32"], "FP32"), triton_input("b", ARRAYS["BYTES"], "BYTES"),
                                 triton_input("c", ARRAYS["INT8"], "INT8", binary=False)])
    for _ in range(3000):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            if choice < 0.4 and mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            elif choice < 0.7:
                del mutated[rng.randrange(len(mutated) + 1):]
            else:
                mutated += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        length = str(int(headers[HEADER]) + rng.choice([0, 0, 0, -1, 1, 50]))
        try:
            v2_binary.decode(bytes(mutated), {HEADER: length})
        except RequestError as exc:
            assert exc.status == 400 and exc.field
