"""The V2 gRPC codec, fed by tritonclient.grpc's own request builder and read back by its InferResult.

Messages cross between tritonclient's generated classes and ours as serialized bytes, exactly as
they cross the wire, so these tests also prove the two protos agree on every field used.
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import _utils as triton_utils

from modelpool.deployments.codecs import v2_grpc
from modelpool.deployments.dataplane import select_outputs
from modelpool.deployments.errors import RequestError
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.tensors import InferenceRequest, InferenceResult
from tests.unit.test_v2_binary import ARRAYS


def triton_request(inputs: list, outputs: list | None = None, request_id: str = "") -> pb.ModelInferRequest:
    """What tritonclient.grpc's ``infer`` puts on the wire, parsed with our classes."""
    theirs = triton_utils._get_inference_request("m", inputs, "", request_id, outputs, 0, False, False, 0, None, None)
    return pb.ModelInferRequest.FromString(theirs.SerializeToString())


def triton_input(name: str, array: np.ndarray, datatype: str) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def read_with_triton(response: pb.ModelInferResponse) -> triton_grpc.InferResult:
    from tritonclient.grpc import service_pb2

    return triton_grpc.InferResult(service_pb2.ModelInferResponse.FromString(response.SerializeToString()))


@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_raw_contents_from_tritonclient_decode_and_encode_back(datatype: str) -> None:
    array = ARRAYS[datatype]
    request = v2_grpc.decode(triton_request([triton_input("x", array, datatype)], request_id="r1"))
    tensor = request.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape, request.id) == ("x", datatype, array.shape, "r1")
    assert tensor.data.tolist() == array.tolist()
    answer = read_with_triton(v2_grpc.encode(InferenceResult("m", "1", request, {"y": array})))
    got = answer.as_numpy("y")
    if datatype == "BYTES":
        assert [v.decode() for v in got.ravel()] == list(array.ravel())
    else:
        assert got.dtype == array.dtype and got.tolist() == array.tolist()
    assert answer.get_response().model_version == "1" and answer.get_response().id == "r1"


@pytest.mark.parametrize("datatype", [d for d in ARRAYS if d in v2_grpc.CONTENTS_FIELD])
def test_typed_contents_decode_like_raw_ones(datatype: str) -> None:
    array = ARRAYS[datatype]
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=array.shape)
    values = [v.encode() for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    getattr(tensor.contents, v2_grpc.CONTENTS_FIELD[datatype]).extend(values)
    decoded = v2_grpc.decode(message).inputs[0].data
    assert decoded.dtype == array.dtype and decoded.tolist() == array.tolist()


def test_requested_outputs_keep_the_clients_order_and_parameters_are_plain() -> None:
    outputs = [triton_grpc.InferRequestedOutput("b"), triton_grpc.InferRequestedOutput("a")]
    message = triton_request([triton_input("x", np.ones((1, 2)), "FP64")], outputs)
    message.parameters["priority_hint"].int64_param = 3
    request = v2_grpc.decode(message)
    assert request.requested_outputs == ("b", "a") and request.parameters == {"priority_hint": 3}
    result = InferenceResult("m", None, request, select_outputs({"a": np.array([1]), "b": np.array([2.0])}, request, "m"))
    assert [o.name for o in v2_grpc.encode(result).outputs] == ["b", "a"]


def message_with(*, datatype: str = "FP32", shape=(1, 2), raw: list[bytes] | None = None, field: str = "fp32_contents",
                 values=(1.0, 2.0), inputs: int = 1) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    for k in range(inputs):
        tensor = message.inputs.add(name=f"x{k}", datatype=datatype, shape=shape)
        if raw is None and field:
            getattr(tensor.contents, field).extend(values)
    if raw is not None:
        message.raw_input_contents.extend(raw)
    return message


@pytest.mark.parametrize("message,field,words", [
    (pb.ModelInferRequest(model_name="m"), "inputs", ["at least one input"]),
    (message_with(datatype="FP33"), "inputs[0].datatype", ["use one of"]),
    (message_with(datatype=""), "inputs[0].datatype", ["missing"]),
    (message_with(shape=(1, -2)), "inputs[0].shape", ["non-negative"]),
    (message_with(values=(1.0,)), "inputs[0].contents.fp32_contents", ["1 values", "needs 2"]),
    (message_with(field="fp64_contents"), "inputs[0].contents.fp64_contents", ["contents.fp32_contents"]),
    (message_with(datatype="FP16", field=""), "inputs[0].contents", ["raw_input_contents"]),
    (message_with(datatype="INT8", field="int_contents", values=(1, 300)), "inputs[0].contents.int_contents",
     ["300", "INT8 range"]),
    (message_with(raw=[b"\x00" * 4]), "raw_input_contents[0]", ["4 bytes", "needs 8"]),
    (message_with(raw=[b"\x00" * 8], inputs=2), "raw_input_contents", ["1 entries for 2 inputs"]),
    (message_with(datatype="BYTES", field="", raw=[b"\x05\x00\x00\x00ab"]), "raw_input_contents[0]",
     ["cannot hold 2 BYTES"]),
])
def test_bad_messages_are_request_errors_naming_the_field(message, field, words) -> None:
    with pytest.raises(RequestError) as info:
        v2_grpc.decode(message)
    assert info.value.field == field, info.value
    for word in words:
        assert word in info.value.message, (word, info.value.message)
    assert v2_grpc.grpc_status(info.value.status) == grpc.StatusCode.INVALID_ARGUMENT


def test_both_raw_and_typed_contents_are_refused() -> None:
    message = message_with(raw=[np.ones(2, np.float32).tobytes()])
    message.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(RequestError, match="send every input's data one way"):
        v2_grpc.decode(message)


def test_duplicate_inputs_and_outputs_and_classification_are_refused() -> None:
    message = message_with(inputs=1)
    message.inputs.add(name="x0", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(RequestError, match="unique name"):
        v2_grpc.decode(message)
    message = message_with()
    message.outputs.add(name="p").parameters["classification"].int64_param = 2
    with pytest.raises(RequestError, match="classification extension is not supported"):
        v2_grpc.decode(message)


def test_http_statuses_map_to_the_grpc_codes_v2_clients_expect() -> None:
    expected = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 401: "UNAUTHENTICATED", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 418: "INVALID_ARGUMENT"}
    assert {status: v2_grpc.grpc_status(status).name for status in expected} == expected


def test_empty_request_id_and_version_stay_unset() -> None:
    request = InferenceRequest(id=None, inputs=(), parameters={})
    response = v2_grpc.encode(InferenceResult("m", None, request, {"y": np.array([1.5])}))
    assert response.id == "" and response.model_version == ""
    assert response.outputs[0].datatype == "FP64" and list(response.outputs[0].shape) == [1]
