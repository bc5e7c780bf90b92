"""The batch worker's model cache: handlers loaded once per worker process, kept for the next partitions.

A model is loaded when a job is accepted (``preload``, on every worker at once) or by the first partition that
needs it; one lock per model makes a partition wait for a load under way instead of loading twice, and loads of
different models never wait for each other. At most ``MAX_CACHED_MODELS`` stay loaded (least recently used go).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.archive_fetch import local_archive
from modelpool.deployments.handler_loader import load_handler
from modelpool.deployments.handlers import Handler, ModelContext
from modelpool.management.batch.graph_scoring import graph_handler, graph_of

logger = logging.getLogger(__name__)

#: Models kept loaded per worker process (least recently used ones are dropped).
MAX_CACHED_MODELS = 4


@dataclass
class CachedModel:
    """A loaded handler, its own context (batch sets ``artifact_root`` on it) and a lock: a
    worker may run tasks on threads, and the context is shared state while a partition runs."""

    handler: Handler
    context: ModelContext
    lock: threading.Lock = field(default_factory=threading.Lock)


_MODELS: "OrderedDict[tuple[str, str, Optional[str]], CachedModel]" = OrderedDict()
_MODELS_LOCK = threading.Lock()
#: key -> the lock its one load holds: a second caller (a preload and a partition, say) waits for that
#: load instead of doing it again, and loads of other models do not wait for it.
_LOADING: dict[tuple[str, str, Optional[str]], threading.Lock] = {}


def cached_model(store: ObjectStore, source: str, digest: str, cache_dir: Path,
                 handler: Optional[str] = None) -> CachedModel:
    """The handler for ``(source, digest, handler)``, loaded once per process and reused by every task.

    The digest is part of the key because a source path may be re-registered with new content;
    ``handler`` (register's ``handler=``, None: the manifest's) because it may be registered again
    with another handler.
    """
    key = (source, digest, handler)
    with _MODELS_LOCK:
        model = _cached(key)
        if model is not None:
            return model
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:
        with _MODELS_LOCK:
            model = _cached(key)
        if model is not None:
            return model  # loaded by the caller this one waited for
        try:
            graph = graph_of(source)
            if graph is not None:  # a job through a graph: its chunks go to the graph's replicas
                model = CachedModel(*graph_handler(graph))
            else:
                cache_dir = Path(cache_dir)
                archive = unpack_archive(local_archive(source, cache_dir, store), cache_dir, handler=handler)
                context = ModelContext(model_dir=archive.model_dir, manifest=archive.manifest)
                model = CachedModel(load_handler(archive.model_dir, archive.manifest, context), context)
        except BaseException:
            _done_loading(key, loading)
            raise
        with _MODELS_LOCK:
            _MODELS[key] = model
            while len(_MODELS) > MAX_CACHED_MODELS:
                _MODELS.popitem(last=False)
        _done_loading(key, loading)
        return model


def _done_loading(key: tuple[str, str, Optional[str]], loading: threading.Lock) -> None:
    with _MODELS_LOCK:
        if _LOADING.get(key) is loading:
            del _LOADING[key]


def _cached(key: tuple[str, str, Optional[str]]) -> Optional[CachedModel]:
    """The loaded model under ``key``, now the most recently used (call with _MODELS_LOCK held)."""
    model = _MODELS.get(key)
    if model is not None:
        _MODELS.move_to_end(key)
    return model


def model_key(model: dict) -> tuple[str, str, Optional[str]]:
    """The cache key of the model a job (or a registered version) names by ``source``, ``digest``, ``handler``."""
    return model["source"], model.get("digest") or model["source"], model.get("handler")


def job_model(store: ObjectStore, model: dict, cache_dir: Path) -> CachedModel:
    source, digest, handler = model_key(model)
    return cached_model(store, source, digest, Path(cache_dir), handler)


def preload(store: ObjectStore, model: dict, cache_dir: Path) -> bool:
    """Load ``model`` into this process's cache ahead of its first partition; False (logged) when it cannot.

    A failed preload fails nothing: the partition loads the model again and reports the real error.
    """
    try:
        job_model(store, model, cache_dir)
        return True
    except Exception as exc:  # noqa: BLE001 - unregistered meanwhile, a broken archive: the partition says
        logger.warning("preloading model %s failed (%s: %s); its partitions load it themselves",
                       model.get("source"), type(exc).__name__, exc)
        return False


def is_cached(model: dict) -> bool:
    """Whether this process holds ``model`` loaded (what a preload is for)."""
    with _MODELS_LOCK:
        return model_key(model) in _MODELS


def clear_model_cache() -> None:
    """Forget every loaded model (tests; or to free memory in a long-lived worker)."""
    with _MODELS_LOCK:
        _MODELS.clear()
