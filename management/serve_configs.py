"""The pure mapping from a model's management settings to a Serve application config.

No Ray here: this is the heart of the management layer and is read, and unit-tested, on its own.
The mapping follows ARCHITECTURE.md:

- workers (initial/min/max) -> ``autoscaling_config`` initial/min/max replicas
- batch size and delay      -> ``user_config`` (applied live by ``reconfigure``)
- threads                   -> ``max_ongoing_requests`` (1 when single-threaded)
- max queued requests       -> ``max_queued_requests`` and a 429 ``backpressure_config`` (Serve's router), and
                               both limits in ``user_config`` too (a replica's own port enforces them; live)
- num_cpus / num_gpus       -> ``ray_actor_options``
- log level, access log     -> ``logging_config``
- single-threaded, debug, payload passthrough, max requests -> ``user_config["serving"]`` (live)

The deployment ``version`` is a fingerprint of everything that needs a new replica (the archive,
its constructor arguments, actor resources, modelpool's own version) and of nothing else, so
changing only autoscaling or user_config updates replicas in place instead of restarting them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from modelpool.cluster.settings import (DEFAULT_DOWNSCALE_DELAY_S, DEFAULT_MAX_BATCH_DELAY_MS, DEFAULT_MAX_BATCH_SIZE,
                                        DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUED_REQUESTS, DEFAULT_MAX_WORKERS,
                                        DEFAULT_POOL_MAX_REPLICAS, DEFAULT_POOL_MIN_REPLICAS,
                                        DEFAULT_POOL_MODELS_PER_REPLICA,
                                        DEFAULT_REPLICA_NUM_CPUS, DEFAULT_RESPONSE_TIMEOUT_S,
                                        DEFAULT_TARGET_ONGOING_REQUESTS, DEFAULT_THREADS, DEFAULT_UPSCALE_DELAY_S,
                                        DEFAULT_WORKERS, POOL_MODELS_PER_REPLICA_ENV)
from modelpool.deployments.autoscaling import POLICY as AUTOSCALING_POLICY
from modelpool.deployments.codecs import PROTOCOLS
from modelpool.deployments.app_names import (GENERIC_POOL_APP, GENERIC_POOL_DEPLOYMENT, GENERIC_POOL_ROUTE, FRONT_APP,
                                   FRONT_DEPLOYMENT, MANAGEMENT_APP, PROTOCOL_FRONT_APPS,
                                   PROTOCOL_FRONT_DEPLOYMENT, GRAPH_DEPLOYMENT, app_name, deployment_name,
                                   graph_app_name)
from modelpool.deployments.front_config import route_key

# The defaults below are Settings' (modelpool.cluster.settings), so a config built without them is what a cluster
# started without flags deploys; Serve's own defaults are named here.
SERVE_HEALTH_CHECK_PERIOD_S = 10.0
SERVE_HEALTH_CHECK_TIMEOUT_S = 30.0
SERVE_LOOK_BACK_PERIOD_S = 30.0  # Serve's window for averaging ongoing requests
#: A call refused because the queue is full: 429 Too Many Requests with Retry-After, as the replica ports answer it
#: (deployments/admission.py), not Serve's default 503, which says "unavailable" where "come back soon" is meant.
BACKPRESSURE_CONFIG = {"status_code": 429, "retry_after_s": 1}


@dataclass(frozen=True, kw_only=True)
class ReplicaOptions:
    """What every deployment of model replicas is given, a version's own and the generic pool's: resources,
    concurrency, the body limit and the live server settings."""

    num_cpus: float = DEFAULT_REPLICA_NUM_CPUS
    max_ongoing_requests: int = DEFAULT_THREADS
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS  # waiting beyond those; -1: no limit, 0: none wait
    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING_REQUESTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    health_check_period_s: float = SERVE_HEALTH_CHECK_PERIOD_S
    object_store: Optional[dict] = None  # how replicas open the object store holding the archives
    serving: dict = field(default_factory=dict)   # ServingOptions fields (Settings.serving_options())
    logging: dict = field(default_factory=dict)   # Serve LoggingConfig fields (Settings.logging_config())


@dataclass(frozen=True)
class ModelConfig(ReplicaOptions):
    """Everything management decides about one served model version."""

    name: str
    version: str
    source: str                      # archive path (dir or zip) the replicas load
    source_digest: str               # content fingerprint of the archive
    handler: Optional[str] = None    # the handler replicas run (register's handler=); None: the manifest's
    is_default: bool = True
    versions: tuple[str, ...] = ()   # every served version of this model, for metadata
    initial_replicas: int = DEFAULT_WORKERS
    min_replicas: int = 1            # a version with an app of its own keeps a replica
    max_replicas: int = DEFAULT_MAX_WORKERS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_delay_ms: float = DEFAULT_MAX_BATCH_DELAY_MS
    num_gpus: float = 0
    upscale_delay_s: float = DEFAULT_UPSCALE_DELAY_S
    downscale_delay_s: float = DEFAULT_DOWNSCALE_DELAY_S
    look_back_period_s: float = SERVE_LOOK_BACK_PERIOD_S
    health_check_timeout_s: float = SERVE_HEALTH_CHECK_TIMEOUT_S
    request_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S
    drain_timeout_s: Optional[float] = None  # how long a stopping replica may finish its requests (None: as they take)
    pool_versions: tuple[str, ...] = ()  # versions of this model served by the generic pool


@dataclass(frozen=True)
class AppConfig:
    """A Serve application: its name, route and the options of its single deployment."""

    app_name: str
    route_prefix: Optional[str]  # None: no HTTP route of Serve's (the front)
    deployment_name: str
    deployment_options: dict[str, Any]
    init_kwargs: dict[str, Any] = field(default_factory=dict)


def route_prefix(name: str, version: str, is_default: bool) -> str:
    """The default version owns the short path; others get the longer versioned one.

    Routing is longest prefix by whole segments, so ``/v2/models/iris/versions/2/infer`` reaches
    version 2's app while ``/v2/models/iris/infer`` reaches the default one.
    """
    base = f"{GENERIC_POOL_ROUTE}/{name}"  # below the pool's prefix: a model's own app takes its calls
    return base if is_default else f"{base}/versions/{version}"


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def serve_max_queued(max_queued_requests: int) -> int:
    """Our queue limit as Serve's ``max_queued_requests``: Serve refuses 0 (its values are -1 or at least 1), so
    "none wait" becomes its smallest queue, one request per caller; the replica ports still let none wait."""
    return 1 if max_queued_requests == 0 else max_queued_requests


def load_shedding(options: ReplicaOptions) -> dict[str, Any]:
    """The deployment options that bound the queue at Serve's router and refuse the rest with 429 + Retry-After.

    Neither is in the version fingerprint: Serve applies both to running replicas (no restart)."""
    return {"max_queued_requests": serve_max_queued(options.max_queued_requests),
            "backpressure_config": dict(BACKPRESSURE_CONFIG)}


def admission_limits(options: ReplicaOptions) -> dict[str, int]:
    """The same limits in ``user_config``, for the gate of a replica's own port, which the front's calls reach past
    Serve's router (deployments/admission.py): live, through ``reconfigure``."""
    return {"max_ongoing_requests": options.max_ongoing_requests, "max_queued_requests": options.max_queued_requests}


def model_app_config(model: ModelConfig, cache_dir: str, code_version: str) -> AppConfig:
    """Serve options for one model version (pure)."""
    if model.min_replicas > model.max_replicas:
        raise ValueError(f"min replicas {model.min_replicas} > max replicas {model.max_replicas}")
    init_kwargs = {
        "source": model.source,
        "cache_dir": cache_dir,
        "name": model.name,
        "version": model.version,
        "max_body_bytes": model.max_body_bytes,
        "object_store": model.object_store,
    }
    if model.handler is not None:
        init_kwargs["handler"] = model.handler  # a new handler needs new replicas: it is in the fingerprint
    ray_actor_options = {"num_cpus": model.num_cpus}
    if model.num_gpus:
        ray_actor_options["num_gpus"] = model.num_gpus
    version = _fingerprint({
        "digest": model.source_digest,
        "timeout": model.request_timeout_s,
        "init": init_kwargs,
        "actor": ray_actor_options,
        "code": code_version,
    })
    initial = min(max(model.initial_replicas, model.min_replicas), model.max_replicas)
    options: dict[str, Any] = {
        "name": deployment_name(model.name, model.version),
        "version": version,
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": model.max_ongoing_requests,
        **load_shedding(model),
        "autoscaling_config": {
            "min_replicas": model.min_replicas,
            "initial_replicas": initial,
            "max_replicas": model.max_replicas,
            "target_ongoing_requests": model.target_ongoing_requests,
            "upscale_delay_s": model.upscale_delay_s,
            "downscale_delay_s": model.downscale_delay_s,
            "look_back_period_s": model.look_back_period_s,
            "policy": {"policy_function": AUTOSCALING_POLICY},  # counts gRPC calls on replica ports too
        },
        "user_config": {
            "max_batch_size": model.max_batch_size,
            "max_batch_delay_ms": model.max_batch_delay_ms,
            "response_timeout_s": model.request_timeout_s,
            "versions": list(model.versions or (model.version,)),
            "pool_versions": list(model.pool_versions),
            "max_body_bytes": model.max_body_bytes,
            **admission_limits(model),
            "serving": dict(model.serving),
        },
        "health_check_period_s": model.health_check_period_s,
        "health_check_timeout_s": model.health_check_timeout_s,
        # no request outlives request_timeout_s, so waiting that long waits for every request (MMS's timeout=-1)
        "graceful_shutdown_timeout_s": model.request_timeout_s if model.drain_timeout_s is None
        else min(model.drain_timeout_s, model.request_timeout_s),
    }
    if model.logging:
        options["logging_config"] = dict(model.logging)
    return AppConfig(
        app_name=app_name(model.name, model.version),
        route_prefix=route_prefix(model.name, model.version, model.is_default),
        deployment_name=options["name"],
        deployment_options=options,
        init_kwargs=init_kwargs,
    )




@dataclass(frozen=True)
class PoolConfig(ReplicaOptions):
    """The generic pool: replicas, what each keeps loaded, and the catalog of versions it serves."""

    min_replicas: int = DEFAULT_POOL_MIN_REPLICAS
    max_replicas: int = DEFAULT_POOL_MAX_REPLICAS
    models_per_replica: int = DEFAULT_POOL_MODELS_PER_REPLICA


def generic_pool_app_config(pool: PoolConfig, catalog: dict, known_models: list[str], cache_dir: str,
                            code_version: str, versions: Optional[dict] = None) -> AppConfig:
    """Serve options for the generic pool; the catalog travels in user_config (live updates)."""
    init_kwargs = {"cache_dir": cache_dir, "object_store": pool.object_store, "max_body_bytes": pool.max_body_bytes}
    ray_actor_options = {
        "num_cpus": pool.num_cpus,
        "runtime_env": {"env_vars": {POOL_MODELS_PER_REPLICA_ENV: str(pool.models_per_replica)}},
    }
    options: dict[str, Any] = {
        "name": GENERIC_POOL_DEPLOYMENT,
        "version": _fingerprint({"init": init_kwargs, "actor": ray_actor_options, "code": code_version}),
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": pool.max_ongoing_requests,
        **load_shedding(pool),  # the pool has no port of its own: Serve's router is its only queue
        "autoscaling_config": {
            "min_replicas": pool.min_replicas,
            "initial_replicas": pool.min_replicas,
            "max_replicas": pool.max_replicas,
            "target_ongoing_requests": pool.target_ongoing_requests,
        },
        "user_config": {"catalog": catalog, "known_models": sorted(known_models), "versions": dict(versions or {}),
                        "max_body_bytes": pool.max_body_bytes,
                        "serving": dict(pool.serving)},
        "health_check_period_s": pool.health_check_period_s,
    }
    if pool.logging:
        options["logging_config"] = dict(pool.logging)
    return AppConfig(GENERIC_POOL_APP, GENERIC_POOL_ROUTE, GENERIC_POOL_DEPLOYMENT, options, init_kwargs)


@dataclass(frozen=True)
class FrontConfig:
    """The front: where it listens (``listeners``, the fields of ``front.Listeners``), its threads, its health checks."""

    listeners: dict
    workers: int
    management_app: str = MANAGEMENT_APP
    health_check_period_s: float = 2.0


def front_routes(dedicated: list["ModelConfig"], graphs: Iterable[str] = ()) -> dict[str, str]:
    """The front's routing table: ``name/version`` (and ``name/`` for the default) -> the app serving it.

    Only dedicated versions and graphs (``name/`` -> ``graph:name``) are listed; every other call goes to the
    generic pool, which serves the rest and names the served models in its NOT_FOUND.
    """
    routes: dict[str, str] = {route_key(graph): graph_app_name(graph) for graph in graphs}
    for model in dedicated:
        routes[route_key(model.name, model.version)] = app_name(model.name, model.version)
        if model.is_default:
            routes[route_key(model.name)] = app_name(model.name, model.version)
    return routes


def front_limits(dedicated: list["ModelConfig"]) -> dict[str, int]:
    """Load shedding in the front: ``app -> calls in flight one replica may hold`` (running plus waiting), for each
    dedicated version with a queue limit (``max_queued_requests`` -1, no limit, sends none). The front multiplies
    it by the replicas whose ports it knows and answers 429 past the total, before any replica reads the call."""
    return {app_name(model.name, model.version): model.max_ongoing_requests + model.max_queued_requests
            for model in dedicated if model.max_queued_requests >= 0}


def front_app_config(front: FrontConfig, routes: dict[str, str], code_version: str,
                     limits: Optional[dict[str, int]] = None) -> AppConfig:
    """One front replica on the head node with no HTTP route; the routing table and the load-shedding limits
    travel in user_config (live: a scale that changes a limit reaches the front without restarting it)."""
    init_kwargs = {"listeners": dict(sorted(front.listeners.items())), "workers": front.workers,
                   "management_app": front.management_app, "pool_app": GENERIC_POOL_APP}
    options: dict[str, Any] = {
        "name": FRONT_DEPLOYMENT,
        "version": _fingerprint({"init": init_kwargs, "code": code_version}),
        "num_replicas": 1,
        # on the head: the public ports are the head's (clients and `modelpool start` find them there)
        "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: HEAD_NODE_SHARE}},
        "user_config": {"routes": dict(sorted(routes.items())), "limits": dict(sorted((limits or {}).items()))},
        "health_check_period_s": front.health_check_period_s,
    }
    return AppConfig(FRONT_APP, None, FRONT_DEPLOYMENT, options, init_kwargs)


def management_replica_count(setting: Optional[int], joined: bool, alive_nodes: int) -> int:
    """Replicas of the management app: ``--management-replicas`` when given; else 2 on a cluster (a joined one,
    ``--address``/KubeRay, whose workers may join after management starts, as ``ray up`` starts it on the head
    first; or one with several nodes now), so a lost node or a killed replica leaves one answering; 1 on one
    machine, where a second replica would only cost memory and a core's share of health checks."""
    if setting is not None:
        return setting
    return 2 if joined or alive_nodes > 1 else 1


HEAD_NODE_RESOURCE = "node:__internal_head__"  # every Ray head has 1 of it
HEAD_NODE_SHARE = 0.001
PROTOCOL_FRONT_MAX_ONGOING = 1024  # a front only waits on model replicas, which bound the work themselves


def protocol_routes(dedicated: list["ModelConfig"], graphs: Optional[dict[str, float]] = None) -> dict[str, dict]:
    """The protocol fronts' routing table: ``name/version`` (and ``name/`` for the default) -> the app serving it,
    its deployment and the model's response_timeout. Only dedicated versions and graphs (``graphs``: name ->
    its timeout): the generic pool takes the rest."""
    routes: dict[str, dict] = {route_key(graph): {"app": graph_app_name(graph), "deployment": GRAPH_DEPLOYMENT,
                                                  "timeout_s": timeout_s}
                               for graph, timeout_s in (graphs or {}).items()}
    for model in dedicated:
        target = {"app": app_name(model.name, model.version), "deployment": deployment_name(model.name, model.version),
                  "timeout_s": model.request_timeout_s}
        routes[route_key(model.name, model.version)] = target
        if model.is_default:
            routes[route_key(model.name)] = target
    return routes


def protocol_front_app_configs(dedicated: list["ModelConfig"], catalog: dict, known_models: list[str],
                               pool: PoolConfig, code_version: str,
                               graphs: Optional[dict[str, float]] = None) -> list[AppConfig]:
    """TorchServe's ``/predictions`` and KServe V1's ``/v1``: a small app each that passes calls on to the model's
    replicas. The routing table, the model names and the pool's serving options (inference token, body limits)
    travel in user_config, so a registration reaches the fronts live, without a restart."""
    pool_timeout_s = max([float(spec.get("response_timeout_s") or 0) for entry in catalog.values()
                          for spec in entry["versions"].values()] + [DEFAULT_RESPONSE_TIMEOUT_S])
    user_config = {"routes": dict(sorted(protocol_routes(dedicated, graphs).items())),
                   "models": sorted([*known_models, *(graphs or {})]),
                   "pool_timeout_s": pool_timeout_s, "max_body_bytes": pool.max_body_bytes,
                   "serving": dict(pool.serving)}
    apps: list[AppConfig] = []
    for protocol, app in PROTOCOL_FRONT_APPS.items():
        init_kwargs = {"protocol": protocol}
        options: dict[str, Any] = {
            "name": PROTOCOL_FRONT_DEPLOYMENT,
            "version": _fingerprint({"init": init_kwargs, "code": code_version}),
            "num_replicas": 1,
            "max_ongoing_requests": PROTOCOL_FRONT_MAX_ONGOING,
            "ray_actor_options": {"num_cpus": 0},
            "user_config": user_config,
            "health_check_period_s": pool.health_check_period_s,
        }
        if pool.logging:
            options["logging_config"] = dict(pool.logging)
        apps.append(AppConfig(app, PROTOCOLS[protocol].ROUTE_PREFIX, PROTOCOL_FRONT_DEPLOYMENT, options, init_kwargs))
    return apps


def describe(model: ModelConfig) -> dict[str, Any]:
    return asdict(model)
