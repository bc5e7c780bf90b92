"""Desired state: which model versions get replicas of their own and what the generic pool serves.

Pure (no Ray): from the registry's records to the Serve configs management should deploy.

A version is *dedicated* (its own Serve application) when it has a session pool, or when it was
registered or scaled with workers (``max_workers > 0``); otherwise the generic pool serves it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from modelpool.cluster.settings import Settings
from modelpool.management.registry import ModelRecord, PoolRecord, version_sort_key
from modelpool.management.serve_configs import SERVE_HEALTH_CHECK_TIMEOUT_S, FrontConfig, ModelConfig, PoolConfig

FRONT_TIMEOUT_S = 300  # a request's longest wait for its answer at the front, without --request-timeout-s


@dataclass(frozen=True)
class Placement:
    dedicated: list[ModelConfig]
    catalog: dict          # generic pool catalog: {name: {"default", "all_versions", "versions": {v: spec}}}
    known_models: list[str]
    versions: dict = field(default_factory=dict)  # every registered version of every model, for the pool's 404s


def is_dedicated(record: ModelRecord, pool: Optional[PoolRecord]) -> bool:
    return pool is not None or record.max_workers > 0


def replica_bounds(record: ModelRecord, pool: Optional[PoolRecord]) -> tuple[int, int, int]:
    """(initial, min, max) replicas of a dedicated version."""
    if pool is not None:
        return pool.initial_pool_size, pool.initial_pool_size, pool.max_pool_size
    low = max(record.min_workers, 1)
    high = max(record.max_workers, low)
    initial = min(max(record.initial_workers, low), high)
    return initial, low, high


def plan(records: Iterable[ModelRecord], defaults: dict[str, str], pools: dict[tuple[str, str], PoolRecord],
         settings: Settings) -> Placement:
    by_name: dict[str, list[ModelRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    dedicated: list[ModelConfig] = []
    catalog: dict[str, dict] = {}
    for name, versions in sorted(by_name.items()):
        versions.sort(key=lambda r: version_sort_key(r.version))
        all_versions = [r.version for r in versions]
        default = defaults.get(name) if defaults.get(name) in all_versions else all_versions[-1]
        pooled = [r for r in versions if not is_dedicated(r, pools.get((name, r.version)))]
        for record in versions:
            pool = pools.get((name, record.version))
            if is_dedicated(record, pool):
                dedicated.append(model_config(record, pool, settings, record.version == default, all_versions,
                                              [r.version for r in pooled]))
        if pooled:
            catalog[name] = {
                "default": default,
                "all_versions": all_versions,
                "versions": {r.version: pool_spec(r) for r in pooled},
            }
    versions = {name: [r.version for r in records] for name, records in by_name.items()}
    return Placement(dedicated, catalog, sorted(by_name), versions)


def model_config(record: ModelRecord, pool: Optional[PoolRecord], settings: Settings, is_default: bool,
                 versions: list[str], pool_versions: list[str]) -> ModelConfig:
    initial, low, high = replica_bounds(record, pool)
    max_ongoing = replica_concurrency(settings, record.batch_size)
    return ModelConfig(
        name=record.name,
        version=record.version,
        source=record.source,
        source_digest=record.digest or record.source,
        handler=record.handler,
        is_default=is_default,
        versions=tuple(versions),
        pool_versions=tuple(pool_versions),
        initial_replicas=initial,
        min_replicas=low,
        max_replicas=high,
        max_batch_size=record.batch_size,
        max_batch_delay_ms=record.max_batch_delay_ms,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued(record, settings),
        num_cpus=settings.replica_num_cpus,
        num_gpus=1 if record.number_gpu else 0,
        target_ongoing_requests=min(settings.target_ongoing_requests, max_ongoing),
        upscale_delay_s=settings.upscale_delay_s,
        downscale_delay_s=settings.downscale_delay_s,
        max_body_bytes=settings.max_body_bytes,
        request_timeout_s=record.response_timeout_s,
        drain_timeout_s=None if record.drain_timeout_s < 0 else record.drain_timeout_s,  # a scale's MMS timeout
        health_check_timeout_s=max(SERVE_HEALTH_CHECK_TIMEOUT_S, record.response_timeout_s),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        object_store=settings.object_store_config,
        serving=settings.serving_options(),
        logging=settings.logging_config(),
    )


def max_queued(record: ModelRecord, settings: Settings) -> int:
    """The version's own queue limit (register's or scale's max_queued_requests), else --max-queued-requests now:
    a record that names none follows the server's setting from one start to the next."""
    return settings.max_queued_requests if record.max_queued_requests is None else record.max_queued_requests


def replica_concurrency(settings: Settings, batch_size: int) -> int:
    """``--threads`` as Serve's max_ongoing_requests: 1 when single-threaded, else room for a full batch."""
    return 1 if settings.single_threaded else max(settings.threads, batch_size)


# How often Serve checks each replica: the check is how a dead replica is noticed (and how one recycles
# after --max-requests). Serve's 10 s made recovery from a killed replica take ~14 s on this machine; at
# 2 s it is ~5 s (BENCHMARKS.md, faults), for one cheap actor call per replica every 2 s.
HEALTH_CHECK_PERIOD_S = 2.0


def pool_spec(record: ModelRecord) -> dict:
    return {"source": record.source, "digest": record.digest or record.source, "handler": record.handler,
            "max_batch_size": record.batch_size, "max_batch_delay_ms": record.max_batch_delay_ms,
            "response_timeout_s": record.response_timeout_s}


def pool_config(settings: Settings) -> PoolConfig:
    return PoolConfig(
        min_replicas=settings.pool_min_replicas,
        max_replicas=settings.pool_max_replicas,
        models_per_replica=settings.pool_models_per_replica,
        num_cpus=settings.replica_num_cpus,
        max_ongoing_requests=replica_concurrency(settings, 1),
        max_queued_requests=settings.max_queued_requests,
        target_ongoing_requests=min(settings.target_ongoing_requests, replica_concurrency(settings, 1)),
        max_body_bytes=settings.max_body_bytes,
        object_store=settings.object_store_config,
        serving=settings.serving_options(),
        logging=settings.logging_config(),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )


def front_config(settings: Settings) -> FrontConfig:
    """The front takes the public ports on --http-host and passes the rest to Serve's ingresses on this node.

    With ``--http-front`` off, Serve's HTTP ingress keeps --http-port itself and the front only speaks gRPC.
    """
    return FrontConfig(listeners={
        "host": settings.http_host,
        "http_port": settings.http_port if settings.http_front else 0,
        "http_upstream": f"127.0.0.1:{settings.serve_http_port}",
        "grpc_port": settings.grpc_port if settings.grpc_enabled else 0,
        "grpc_upstream": f"{_loopback_for(settings.http_host)}:{settings.grpc_ingress_port}",
        "keep_alive_s": settings.keep_alive_s,
        "timeout_s": int(settings.request_timeout_s or FRONT_TIMEOUT_S),
    }, workers=max(settings.grpc_workers, 1), health_check_period_s=HEALTH_CHECK_PERIOD_S)


def _loopback_for(host: str) -> str:
    """Where a process on this node reaches a listener bound to ``host``."""
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
