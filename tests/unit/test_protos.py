"""The V2 gRPC proto: committed generated code is current, and the wire matches tritonclient's.

Both checks read descriptors as plain FileDescriptorProto messages and import the generated modules
only in child processes. tritonclient's service_pb2 and ours both declare package `inference` (the
gRPC method paths depend on it), and protobuf refuses a second file that defines the same symbols in
one process: importing both here would break any later test that imports tritonclient.grpc.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO = "deployments/protos/open_inference.proto"
GENERATED = ["open_inference_pb2.py", "open_inference_pb2.pyi", "open_inference_pb2_grpc.py"]
FieldType = descriptor_pb2.FieldDescriptorProto.Type
FieldLabel = descriptor_pb2.FieldDescriptorProto.Label


def _file_descriptor(module: str) -> descriptor_pb2.FileDescriptorProto:
    """Import `module` in a fresh interpreter (warnings are errors there) and parse its file descriptor."""
    code = f"import sys, {module} as m; sys.stdout.buffer.write(m.DESCRIPTOR.serialized_pb)"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr.decode()}"
    return descriptor_pb2.FileDescriptorProto.FromString(done.stdout)


def _messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message of the file, nested ones included, by full name (`.inference.X.Y`)."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            found[name] = message
            walk(name, message.nested_type)

    walk(f".{fd.package}", fd.message_type)
    return found


def _field_signature(message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto):
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (
        field.number,
        FieldType.Name(field.type),
        FieldLabel.Name(field.label),
        field.type_name,
        oneof,
        field.proto3_optional,
    )


@pytest.fixture(scope="module")
def ours() -> descriptor_pb2.FileDescriptorProto:
    return _file_descriptor("deployments.protos.open_inference_pb2")


@pytest.fixture(scope="module")
def triton() -> descriptor_pb2.FileDescriptorProto:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is in the test extra")
    return _file_descriptor("tritonclient.grpc.service_pb2")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Regenerating from the committed .proto gives the committed files byte for byte."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra")
    (tmp_path / "deployments" / "protos").mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", PROTO],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = (tmp_path / "deployments" / "protos" / name).read_bytes()
        committed = (ROOT / "deployments" / "protos" / name).read_bytes()
        assert fresh == committed, (
            f"deployments/protos/{name} is stale: regenerate it from the repository root with "
            f"`python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. {PROTO}`"
        )


def test_grpc_module_imports_without_warnings() -> None:
    """The service module (and the message module it imports) loads on the pinned grpcio/protobuf."""
    code = "import deployments.protos.open_inference_pb2_grpc as g; g.GRPCInferenceServiceServicer"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_service_path_and_calls(ours: descriptor_pb2.FileDescriptorProto) -> None:
    """The method paths clients call are /inference.GRPCInferenceService/<call>."""
    assert ours.package == "inference"
    assert [s.name for s in ours.service] == ["GRPCInferenceService"]
    assert [m.name for m in ours.service[0].method] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    ]


def test_wire_identical_to_tritonclient(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    """Every message we declare exists in tritonclient's proto with the same fields, and vice versa."""
    assert ours.package == triton.package
    assert ours.syntax == triton.syntax
    theirs = _messages(triton)
    mine = _messages(ours)
    missing = sorted(set(mine) - set(theirs))
    assert not missing, f"messages tritonclient does not know: {missing}"
    checked = 0
    for name, message in mine.items():
        other = theirs[name]
        assert message.options.map_entry == other.options.map_entry, name
        assert [o.name for o in message.oneof_decl] == [o.name for o in other.oneof_decl], name
        my_fields = {f.name: _field_signature(message, f) for f in message.field}
        their_fields = {f.name: _field_signature(other, f) for f in other.field}
        # Equal both ways: a field only tritonclient has would be dropped silently on our side.
        assert my_fields == their_fields, f"{name}: ours {my_fields} != tritonclient's {their_fields}"
        checked += len(my_fields)
    assert checked >= 60  # the comparison really ran over the whole file


def test_calls_identical_to_tritonclient(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    """Each of our calls has tritonclient's request/response types and streaming mode."""
    theirs = {(s.name, m.name): m for s in triton.service for m in s.method}
    for service in ours.service:
        for method in service.method:
            other = theirs[(service.name, method.name)]
            assert (method.input_type, method.output_type) == (other.input_type, other.output_type)
            assert (method.client_streaming, method.server_streaming) == (
                other.client_streaming, other.server_streaming)
