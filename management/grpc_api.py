"""The management side of V2 over gRPC: server health and metadata, and the model repository extension.

The gRPC front sends every call that names no model here (ServerLive, ServerReady, ServerMetadata,
Repository*). The answers are the REST routes' answers (``modelpool.management.api``) as gRPC messages, with
the same checks: the repository calls need the management token in the ``authorization``
metadata, and every RequestError becomes the matching gRPC status.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from modelpool.deployments.codecs.v2_grpc import parameters_from_proto
from modelpool.deployments.errors import RequestError
from modelpool.deployments.grpc_entry import fail
from modelpool.deployments.protos import open_inference_pb2 as pb
from modelpool.management import api, repository
from modelpool.cluster.version import __version__


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=api.SERVER_NAME, version=__version__, extensions=api.SERVER_EXTENSIONS)


async def server_ready(readiness: Callable[[], dict]) -> pb.ServerReadyResponse:
    return pb.ServerReadyResponse(ready=bool((await asyncio.to_thread(readiness))["ready"]))


async def repository_index(manager: Any, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    try:
        _authorize(context)
        for entry in await asyncio.to_thread(manager.repository_index, request.ready):
            response.models.add(name=entry["name"], version=entry["version"], state=entry["state"],
                                reason=entry.get("reason", ""))
    except RequestError as exc:
        _fail(context, exc)
    return response


async def load(manager: Any, request: pb.RepositoryModelLoadRequest, context: Any) -> pb.RepositoryModelLoadResponse:
    await _change(manager.load, repository.parse_load_request, request, context)
    return pb.RepositoryModelLoadResponse()


async def unload(manager: Any, request: pb.RepositoryModelUnloadRequest,
                 context: Any) -> pb.RepositoryModelUnloadResponse:
    await _change(manager.unload, repository.parse_unload_request, request, context)
    return pb.RepositoryModelUnloadResponse()


async def _change(apply: Callable[[str], None], parse: Callable[[bytes], Any], request: Any, context: Any) -> None:
    """A load or unload: the token, the parameters as REST checks them, then the change (blocking: on a thread)."""
    try:
        _authorize(context)
        parse(_as_body(request.parameters))
        await asyncio.to_thread(apply, request.model_name)
    except RequestError as exc:
        _fail(context, exc)


def _authorize(context: Any) -> None:
    metadata = dict(context.invocation_metadata()) if context is not None else {}
    api.check_management_token(metadata.get("authorization", ""))


def _as_body(parameters: Any) -> bytes:
    """ModelRepositoryParameter map -> the REST body carrying the same values, so one parser checks both."""
    plain = {key: value.decode(errors="replace") if isinstance(value, bytes) else value
             for key, value in parameters_from_proto(parameters).items()}
    return json.dumps({"parameters": plain}).encode()


def _fail(context: Any, exc: RequestError) -> None:
    fail(context, exc, debug=True)  # sent whole, as before: management's repository messages name the fix
