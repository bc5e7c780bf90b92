"""The generic pool: one shared, multiplexed deployment for every service without replicas of its own.

It owns the route prefix ``/v2/models``, shorter than any model's own, so it receives requests for
models that have no dedicated application (and answers 404 for unknown ones). Each replica loads
models on first use through ``@serve.multiplexed`` and keeps the most recently used ones (an LRU
of ``MODELPOOL_POOL_MODELS_PER_REPLICA``, default 8), like Machine Learning Server's generic
session pool. Management pushes the catalog of pool-served versions through ``user_config``, so a
registration reaches every replica live, without a restart and without deployments reading the
management registry; management answers once every replica has applied it (``modelpool.management.deployer``),
so a model just registered is never a 404 here. A registered version whose own replicas are still
starting (its route not yet theirs) is a 503 with ``Retry-After``, not a 404.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from typing import Iterable, Mapping, Optional

from ray import serve
from starlette.requests import Request

from modelpool.cluster.settings import (DEFAULT_MAX_BATCH_DELAY_MS, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BODY_BYTES,
                                        DEFAULT_POOL_MODELS_PER_REPLICA, POOL_MODELS_PER_REPLICA_ENV)
from modelpool.deployments.errors import RequestError
from modelpool.deployments.http_io import JSON, error_body, forwarded_headers, sub_path
from modelpool.deployments.loaded_model import LoadedModel
from modelpool.deployments.model_calls import ModelCall, answer_model_call, parse_model_call, split_model_path
from modelpool.deployments.replica_base import HttpTarget, LoadFailed, ReplicaBase


def models_per_replica(environ: Mapping[str, str] = os.environ) -> int:
    """The LRU bound management sets in the replicas' runtime_env (--pool-models-per-replica), else Settings' default."""
    return int(environ.get(POOL_MODELS_PER_REPLICA_ENV) or DEFAULT_POOL_MODELS_PER_REPLICA)


MODELS_PER_REPLICA = models_per_replica()  # read once: @serve.multiplexed takes it when the class is defined


class GenericPool(ReplicaBase):
    """Serves any catalogued model version, loading it on demand."""

    def __init__(self, cache_dir: str, object_store: Optional[dict] = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        super().__init__(cache_dir, object_store, max_body_bytes, {"x-modelpool-pool": "generic"})
        self.catalog: dict[str, dict] = {}
        self.known_models: list[str] = []
        self.versions: dict[str, list[str]] = {}  # every registered version, dedicated ones too
        # the models this replica has served, for the health check; weak, so evicted models drop out
        self._serving: "weakref.WeakValueDictionary[str, LoadedModel]" = weakref.WeakValueDictionary()

    def _apply(self, user_config: dict) -> None:
        """``catalog``: {name: {"default": v, "versions": {v: {"source", "digest", batching...}}}}."""
        self.catalog = user_config.get("catalog", {})
        self.known_models = sorted(user_config.get("known_models", []))
        self.versions = user_config.get("versions", {})

    def _loaded_models(self) -> Iterable[LoadedModel]:
        return self._serving.values()

    async def _http_target(self, request: Request) -> HttpTarget:
        name, rest = split_model_path(sub_path(request))
        call = parse_model_call(rest, request.method)
        model, versions = await self._model_for(name, call.version)
        return model, call, versions

    async def _grpc_target(self, name: str, version: str) -> tuple[LoadedModel, list[str]]:
        """The gRPC front sends here every model version without an app of its own."""
        return await self._model_for(name, version or None)

    async def _protocol_target(self, name: str, version: Optional[str]) -> tuple[LoadedModel, list[str]]:
        """A model this pool serves, or an unknown one: the 404 lists what is served."""
        return await self._model_for(name, version)

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
            return exc.status, error_body(exc, self.options.debug), {**self._headers, "content-type": JSON}
        response = await answer_model_call(model, ModelCall(version, action), read, versions, self._headers,
                                           request_headers)
        return response.status_code, bytes(response.body), forwarded_headers(response.headers)

    async def _model_for(self, name: str, version: Optional[str]) -> tuple[LoadedModel, list[str]]:
        """The model version a call names, loaded and configured; a failure to load it is :class:`LoadFailed`."""
        try:
            return await self._load_for(name, version)
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - the archive failed to load here: say so, keep serving
            raise LoadFailed(name, version, exc) from exc

    async def _load_for(self, name: str, version: Optional[str]) -> tuple[LoadedModel, list[str]]:
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
        model.configure(*self.options.batch_limits(int(spec.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
                                                   float(spec.get("max_batch_delay_ms", DEFAULT_MAX_BATCH_DELAY_MS)) / 1000),
                        spec.get("response_timeout_s"))
        self._serving[model_id] = model
        return model, list(entry.get("all_versions", entry["versions"]))

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> LoadedModel:
        """Load ``name:version:digest`` (the digest makes a re-registered archive a new model)."""
        name, version, _digest = model_id.rsplit(":", 2)
        spec = self.catalog[name]["versions"][version]
        return await asyncio.to_thread(self._load, spec["source"], name, version, spec.get("handler"))


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
