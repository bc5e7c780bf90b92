"""The V2 gRPC proto and service: committed generated code is current, the wire matches tritonclient's.

Our messages live in package ``modelpool.inference`` and tritonclient's in ``inference``, so the two
generated modules can share a process (one test below proves it); names are therefore compared
relative to each file's package. The descriptors are still read in child processes, with warnings
turned into errors, so that each module is checked to import cleanly on its own.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2

from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.deployments.protos import service

ROOT = Path(__file__).resolve().parents[2]
PROTO = "deployments/protos/open_inference.proto"
INSTALLED_PROTO = "modelpool/deployments/protos/open_inference.proto"  # where it imports from
GENERATED = ["open_inference_pb2.py", "open_inference_pb2.pyi"]
OUR_PACKAGE = "modelpool.inference"
FieldType = descriptor_pb2.FieldDescriptorProto.Type
FieldLabel = descriptor_pb2.FieldDescriptorProto.Label


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter at the repository root, with warnings as errors."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, timeout=timeout
    )


def _file_descriptor(module: str) -> descriptor_pb2.FileDescriptorProto:
    """Import `module` in a fresh interpreter and parse its file descriptor."""
    done = _run_child(f"import sys, {module} as m; sys.stdout.buffer.write(m.DESCRIPTOR.serialized_pb)")
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr.decode()}"
    return descriptor_pb2.FileDescriptorProto.FromString(done.stdout)


def _relative(full_name: str, package: str) -> str:
    """`.modelpool.inference.X.Y` (or `modelpool.inference.X.Y`) -> `X.Y` for package `modelpool.inference`."""
    prefix = f"{package}."
    name = full_name.lstrip(".")
    assert name.startswith(prefix), f"{full_name} is outside package {package}"
    return name[len(prefix):]


def _messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message of the file, nested ones included, by name relative to the package (`X.Y`)."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages) -> None:
        for message in messages:
            name = f"{prefix}{message.name}"
            found[name] = message
            walk(f"{name}.", message.nested_type)

    walk("", fd.message_type)
    return found


def _field_signature(fd: descriptor_pb2.FileDescriptorProto, message: descriptor_pb2.DescriptorProto,
                     field: descriptor_pb2.FieldDescriptorProto):
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (
        field.number,
        FieldType.Name(field.type),
        FieldLabel.Name(field.label),
        _relative(field.type_name, fd.package) if field.type_name else "",
        oneof,
        field.proto3_optional,
    )


@pytest.fixture(scope="module")
def ours() -> descriptor_pb2.FileDescriptorProto:
    return _file_descriptor("modelpool.deployments.protos.open_inference_pb2")


@pytest.fixture(scope="module")
def triton() -> descriptor_pb2.FileDescriptorProto:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is in the test extra")
    return _file_descriptor("tritonclient.grpc.service_pb2")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Regenerating from the committed .proto gives the committed files byte for byte, and no _grpc module.

    protoc names the module after the .proto's path, so it runs on a copy placed where the package
    imports from (``modelpool/deployments/protos``): a message pickled to a replica names the module
    ``modelpool.deployments.protos.open_inference_pb2``, the one that imports.
    """
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra")
    (tmp_path / INSTALLED_PROTO).parent.mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / INSTALLED_PROTO)
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.", INSTALLED_PROTO],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = ((tmp_path / INSTALLED_PROTO).parent / name).read_bytes()
        committed = (ROOT / "deployments" / "protos" / name).read_bytes()
        assert fresh == committed, (
            f"deployments/protos/{name} is stale: regenerate it as this test does (protoc on a copy at "
            f"{INSTALLED_PROTO}, then copy {', '.join(GENERATED)} back)"
        )
    # The service is service.py's; a generated one would register the wrong (package-renamed) path.
    assert not (ROOT / "deployments" / "protos" / "open_inference_pb2_grpc.py").exists()
    assert pb.ModelInferRequest.__module__ == "modelpool.deployments.protos.open_inference_pb2"


def test_proto_declares_messages_only(ours: descriptor_pb2.FileDescriptorProto) -> None:
    """Our own package, so nothing collides with tritonclient's `inference.*`; and no service."""
    assert ours.package == OUR_PACKAGE
    assert not ours.service


@pytest.mark.parametrize("first, second", [
    ("modelpool.deployments.protos.service", "tritonclient.grpc"),
    ("tritonclient.grpc", "modelpool.deployments.protos.service"),
])
def test_coexists_with_tritonclient_in_one_process(first: str, second: str) -> None:
    """Both generated modules import into one descriptor pool, in either order, without a warning."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is in the test extra")
    code = (
        f"import {first}, {second}\n"
        "from modelpool.deployments.protos import open_inference_pb2 as ours\n"
        "from tritonclient.grpc import service_pb2 as theirs\n"
        "assert ours.ServerLiveRequest.DESCRIPTOR.full_name == 'modelpool.inference.ServerLiveRequest'\n"
        "assert theirs.ServerLiveRequest.DESCRIPTOR.full_name == 'inference.ServerLiveRequest'\n"
        "message = ours.ModelReadyRequest(name='m', version='2')\n"
        "assert theirs.ModelReadyRequest.FromString(message.SerializeToString()).name == 'm'\n"
    )
    done = _run_child(code)
    assert done.returncode == 0, done.stderr.decode()


def test_wire_identical_to_tritonclient(
    ours: descriptor_pb2.FileDescriptorProto, triton: descriptor_pb2.FileDescriptorProto
) -> None:
    """Every message we declare exists in tritonclient's proto with the same fields, and vice versa."""
    assert (ours.package, triton.package) == (OUR_PACKAGE, "inference")
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
        my_fields = {f.name: _field_signature(ours, message, f) for f in message.field}
        their_fields = {f.name: _field_signature(triton, other, f) for f in other.field}
        # Equal both ways: a field only tritonclient has would be dropped silently on our side.
        assert my_fields == their_fields, f"{name}: ours {my_fields} != tritonclient's {their_fields}"
        checked += len(my_fields)
    assert checked >= 60  # the comparison really ran over the whole file


def test_calls_identical_to_tritonclient(triton: descriptor_pb2.FileDescriptorProto) -> None:
    """service.py's calls are tritonclient's: same service name and path, message types, unary-unary."""
    assert list(service.METHODS) == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    ]
    services = {f"{triton.package}.{s.name}": s for s in triton.service}
    assert service.SERVICE_NAME in services, f"tritonclient has no {service.SERVICE_NAME}: {list(services)}"
    theirs = {m.name: m for m in services[service.SERVICE_NAME].method}
    for name, (request, response) in service.METHODS.items():
        assert name in theirs, f"tritonclient's service has no {name}"
        other = theirs[name]
        assert service.method_path(name) == f"/{service.SERVICE_NAME}/{name}"
        assert _relative(request.DESCRIPTOR.full_name, OUR_PACKAGE) == _relative(other.input_type, triton.package)
        assert _relative(response.DESCRIPTOR.full_name, OUR_PACKAGE) == _relative(other.output_type, triton.package)
        assert not (other.client_streaming or other.server_streaming), name


def test_serve_learns_every_path_from_the_servicer_function() -> None:
    """Serve's gRPC proxy server takes our servicer function as it takes a generated one.

    Serve imports SERVICER_FUNCTION, calls it with a Mock servicer on its own server class and
    reads the registered paths back from the handler. Run in a child process: importing Serve is
    slow and warns on this pydantic. No Ray is started.
    """
    pytest.importorskip("ray.serve", reason="ray[serve] is in the serve extra")
    code = (
        "from unittest.mock import Mock\n"
        "from ray.serve.config import gRPCOptions\n"
        "from ray.serve._private.grpc_util import gRPCGenericServer, get_service_names\n"
        "from modelpool.deployments.protos import service\n"
        "paths = []\n"
        "def factory(service_method, streaming_type):\n"
        "    paths.append(service_method)\n"
        "    return lambda *args: None\n"
        "server = gRPCGenericServer(factory)\n"
        "options = gRPCOptions(grpc_servicer_functions=[service.SERVICER_FUNCTION])\n"
        "for servicer_function in options.grpc_servicer_func_callable:\n"
        "    servicer_function(Mock(), server)\n"
        "assert get_service_names(server.generic_rpc_handlers) == {service.SERVICE_NAME}\n"
        "assert set(paths) == {service.method_path(name) for name in service.METHODS}, paths\n"
        "import ray\n"
        "assert not ray.is_initialized()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


class _Servicer:
    """Implements two calls only; the others must answer UNIMPLEMENTED."""

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=(request.name, request.version) == ("m", "2"))


@pytest.fixture
def port():
    """A real grpc server with our service on 127.0.0.1, stopped (and its threads joined) afterwards."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        server = grpc.server(pool)
        service.add_inference_servicer_to_server(_Servicer(), server)
        bound = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield bound
        finally:
            server.stop(None).wait()


def test_stub_calls_a_real_server(port: int) -> None:
    """All nine paths are registered; implemented calls answer, the others are UNIMPLEMENTED by us."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service.InferenceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live is True
        assert stub.ModelReady(pb.ModelReadyRequest(name="m", version="2"), timeout=10).ready is True
        for name, (request, _) in service.METHODS.items():
            if name in ("ServerLive", "ModelReady"):
                continue
            with pytest.raises(grpc.RpcError) as caught:
                getattr(stub, name)(request(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
            # Our fallback, not grpc's "Method not found!" for a path nobody registered.
            assert caught.value.details() == f"{name} is not implemented"
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(service.method_path("ServerLiveness"))(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert caught.value.details() != "ServerLiveness is not implemented"


def test_stub_on_an_aio_channel(port: int) -> None:
    """The same stub works over grpc.aio, as benchmarks use it."""
    import asyncio

    async def call() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = await service.InferenceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
            return response.live

    assert asyncio.run(call()) is True
