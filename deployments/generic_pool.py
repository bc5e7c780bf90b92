"""The generic pool: one shared, multiplexed deployment for every service without replicas of its own.

It owns the route prefix ``/v2/models``, shorter than any model's own, so it receives requests for
models that have no dedicated application (and answers 404 for unknown ones). Each replica loads
models on first use through ``@serve.multiplexed`` and keeps the most recently used ones (an LRU
of ``MODELPOOL_POOL_MODELS_PER_REPLICA``, default 8), like Machine Learning Server's generic
session pool. Management pushes the catalog of pool-served versions through ``user_config``, so a
registration reaches every replica live, without a restart and without deployments reading the
management registry; management answers once every replica has applied it (``management.deployer``),
so a model just registered is never a 404 here. A registered version whose own replicas are still
starting (its route not yet theirs) is a 503 with ``Retry-After``, not a 404.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any, Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from deployments import grpc_entry, http_routes
from deployments.archive import unpack_archive
from deployments.archive_fetch import local_archive, open_store
from deployments.errors import RequestError
from deployments.loaded_model import LoadedModel
from deployments.protos import open_inference_pb2 as pb
from deployments.log_flush import start_log_flusher
from deployments.model_deployment import _replica_id
from deployments.serving_options import RequestBudget, ServingOptions

MODELS_PER_REPLICA = int(os.environ.get("MODELPOOL_POOL_MODELS_PER_REPLICA", "8"))


class GenericPool:
    """Serves any catalogued model version, loading it on demand."""

    def __init__(self, cache_dir: str, object_store: Optional[dict] = None, max_body_bytes: int = 16 << 20) -> None:
        self.cache_dir = Path(cache_dir)
        self.store = open_store(object_store)
        self.max_body_bytes = max_body_bytes
        self.catalog: dict[str, dict] = {}
        self.known_models: list[str] = []
        self.versions: dict[str, list[str]] = {}  # every registered version, dedicated ones too
        self.replica_id = _replica_id()
        self._headers = {"x-modelpool-replica": self.replica_id, "x-modelpool-pool": "generic"}
        self.options = ServingOptions()
        self.budget = RequestBudget()
        # the models this replica has served, for the health check; weak, so evicted models drop out
        self._serving: "weakref.WeakValueDictionary[str, LoadedModel]" = weakref.WeakValueDictionary()
        start_log_flusher()

    def reconfigure(self, user_config: dict) -> None:
        """``catalog``: {name: {"default": v, "versions": {v: {"source", "digest", batching...}}}}."""
        self.catalog = user_config.get("catalog", {})
        self.known_models = sorted(user_config.get("known_models", []))
        self.versions: dict[str, list[str]] = user_config.get("versions", {})
        self.max_body_bytes = int(user_config.get("max_body_bytes", self.max_body_bytes))
        self.options = ServingOptions.from_config(user_config.get("serving", {}))
        self.budget.configure(self.options)

    async def __call__(self, request: Request) -> Response:
        try:
            http_routes.check_inference_token(request, self.options)
            name, rest = http_routes.split_model_path(http_routes.sub_path(request))
            call = http_routes.parse_model_call(rest, request.method)
            model, versions = await self._model_for(name, call.version)
        except RequestError as exc:
            return http_routes.error_response(exc, self._headers, self.options.debug)
        except Exception as exc:  # noqa: BLE001 - the archive failed to load here: say so, keep serving
            return http_routes.failure_response(name, call.version or "default", exc, self._headers, self.options.debug)
        read = http_routes.body_reader(request, self.max_body_bytes, self.options.body_timeout_s)
        try:
            return await http_routes.answer_model_call(model, call, read, versions, self._headers, request.headers)
        finally:
            self.budget.count()

    # --- V2 over gRPC: the gRPC front sends here every model version without an app of its own ---

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context: Any = None) -> pb.ModelInferResponse:
        found = await self._grpc_model(request.model_name, request.model_version, grpc_context)
        if found is None:
            return pb.ModelInferResponse()
        try:
            return await grpc_entry.model_infer(found[0], request, grpc_context)
        finally:
            self.budget.count()

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context: Any = None) -> pb.ModelReadyResponse:
        return grpc_entry.model_ready(await self._grpc_model(request.name, request.version, grpc_context) is not None)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            grpc_context: Any = None) -> pb.ModelMetadataResponse:
        found = await self._grpc_model(request.name, request.version, grpc_context)
        return pb.ModelMetadataResponse() if found is None else grpc_entry.model_metadata(*found)

    async def _grpc_model(self, name: str, version: str, grpc_context: Any) -> Optional[tuple[LoadedModel, list[str]]]:
        """The model a call names, loaded; None once the call's status says why not (NOT_FOUND, ...)."""
        try:
            grpc_entry.check_token(grpc_context, self.options)
            return await self._model_for(name, version or None)
        except RequestError as exc:
            grpc_entry.fail(grpc_context, exc, self.options.debug)
        except Exception as exc:  # noqa: BLE001 - the archive failed to load here: say so, keep serving
            grpc_entry.fail(grpc_context, RequestError(f"model '{name}' failed to load: {type(exc).__name__}: {exc}",
                                                       status=500), self.options.debug)
        return None

    def check_health(self) -> None:
        """Failing makes Serve replace this replica: once the request budget (--max-requests) is spent,
        or while a model's handler call runs past its response_timeout (it holds that model's thread)."""
        self.budget.check()
        for model in list(self._serving.values()):
            http_routes.check_not_overdue(model)

    async def forward(self, name: str, version: str, action: str, body: bytes,
                      request_headers: dict[str, str]) -> tuple[int, bytes, dict]:
        """Entry point for a dedicated app passing on a version that this pool serves.

        ``request_headers`` are the few the codecs read (lower-case names); the answer's headers
        come back with its media type, so a binary answer stays binary.
        """
        async def read() -> bytes:
            return body

        try:
            model, versions = await self._model_for(name, version)
        except RequestError as exc:
            return exc.status, http_routes.error_body(exc, self.options.debug), {**self._headers,
                                                                                 "content-type": http_routes.JSON}
        response = await http_routes.answer_model_call(model, http_routes.ModelCall(version, action), read, versions,
                                                       self._headers, request_headers)
        return response.status_code, bytes(response.body), http_routes.forwarded_headers(response.headers)

    async def protocol_call(self, protocol: str, name: str, version: Optional[str], action: str, body: bytes,
                            request_headers: dict[str, str]) -> http_routes.ProtocolAnswer:
        """Entry point for ``deployments.protocol_front``: a TorchServe or KServe V1 call for a model this pool
        serves (or an unknown one: the 404 lists what is served), answered in the protocol's shape."""
        try:
            model, versions = await self._model_for(name, version)
            return await http_routes.answer_protocol_call(model, protocol, action, body, versions, self._headers,
                                                          request_headers)
        except RequestError as exc:
            return http_routes.protocol_error(protocol, exc, self._headers, self.options.debug)
        except Exception as exc:  # noqa: BLE001 - the archive failed to load here: say so, keep serving
            failed = http_routes.failure_response(name, version or "default", exc, self._headers, self.options.debug)
            return http_routes.protocol_answer(protocol, 500, json.loads(failed.body), self._headers)
        finally:
            self.budget.count()

    async def _model_for(self, name: str, version: Optional[str]) -> tuple[LoadedModel, list[str]]:
        entry = self.catalog.get(name)
        registered = self.versions.get(name, [])
        if entry is None and registered and (version is None or version in registered):
            raise _starting(name, version)
        if entry is None and registered:  # a model with apps of its own, asked for a version it lacks
            raise RequestError(f"model '{name}' has no version '{version}'; served versions: "
                               f"{', '.join(registered)}", status=404, field="version")
        if entry is None:
            known = ", ".join(self.known_models) or "none"
            raise RequestError(f"unknown model '{name}'; served models: {known}", status=404, field="model_name")
        version = version or entry["default"]
        spec = entry["versions"].get(version)
        if spec is None and version in registered:
            raise _starting(name, version)
        if spec is None:
            raise RequestError(f"model '{name}' has no version '{version}'; served versions: "
                               f"{', '.join(entry.get('all_versions', entry['versions']))}", status=404, field="version")
        model_id = f"{name}:{version}:{_load_key(spec)}"
        model = await self.get_model(model_id)
        model.options = self.options
        model.configure(*self.options.batch_limits(int(spec.get("max_batch_size", 64)),
                                                   float(spec.get("max_batch_delay_ms", 5.0)) / 1000),
                        spec.get("response_timeout_s"))
        self._serving[model_id] = model
        return model, list(entry.get("all_versions", entry["versions"]))

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> LoadedModel:
        """Load ``name:version:digest`` (the digest makes a re-registered archive a new model)."""
        name, version, _digest = model_id.rsplit(":", 2)
        spec = self.catalog[name]["versions"][version]
        return await asyncio.to_thread(self._load, spec["source"], name, version, spec.get("handler"))

    def _load(self, source: str, name: str, version: str, handler: Optional[str] = None) -> LoadedModel:
        archive = unpack_archive(local_archive(source, self.cache_dir, self.store), self.cache_dir, handler=handler)
        return LoadedModel(archive, name, version, replica=self.replica_id)


def _load_key(spec: dict) -> str:
    """What makes a loaded model current: the archive's digest, and the handler when register chose one
    (the same archive registered again with another handler= must not reuse the loaded one)."""
    handler = spec.get("handler")
    if not handler:
        return str(spec["digest"])
    return f"{spec['digest']}-{hashlib.sha256(handler.encode()).hexdigest()[:8]}"


def _starting(name: str, version: Optional[str]) -> RequestError:
    """A registered version that replicas of its own serve, reaching the pool: those replicas are starting
    (or its route is moving to them), so the request is early, not wrong: a 503, which carries Retry-After."""
    which = f"model '{name}'" + (f" version '{version}'" if version else "")
    return RequestError(f"{which} is registered and its workers are starting; retry in a moment",
                        status=503, field="model_name")
