"""Every knob of a modelpool cluster in one place.

Each setting is a ``modelpool start`` flag and an environment variable ``MODELPOOL_<FLAG>`` (the
flag's dashes as underscores), with a default. The precedence is flag > environment > default, so a
container can be configured by environment alone and a person can override one value on the command
line. Values are validated here, once, so a bad value is refused at start with the flag's name rather
than surfacing later inside a replica.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from modelpool.cluster import paths
# the shared defaults, re-exported: every layer imports them from here or from modelpool.cluster.defaults
from modelpool.cluster.defaults import (  # noqa: F401
    DEFAULT_BODY_TIMEOUT_S, DEFAULT_DOWNSCALE_DELAY_S, DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, DEFAULT_HTTP_URL,
    DEFAULT_MAX_BATCH_DELAY_MS, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_WORKERS, DEFAULT_POOL_MAX_REPLICAS, DEFAULT_POOL_MIN_REPLICAS, DEFAULT_POOL_MODELS_PER_REPLICA,
    DEFAULT_REPLICA_NUM_CPUS,
    DEFAULT_RESPONSE_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_TARGET_ONGOING_REQUESTS, DEFAULT_THREADS,
    DEFAULT_UPSCALE_DELAY_S, DEFAULT_WORKERS, ENV_PREFIX,
)
from modelpool.cluster.net import is_loopback_host
from modelpool.cluster.tokens import token_digest
from modelpool.cluster.url_patterns import parse_allowed_urls
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Shortest inference token accepted: replicas hold its SHA-256 where Serve's status shows it, so a
#: short token could be found from its digest by guessing.
MIN_TOKEN_LENGTH = 16  # a shorter secret can be guessed; the generated management token has 43 characters

#: Paths of the HTTP port that --metrics-path must not take or go below: management's routes (its app has the
#: route prefix "/"), the model and protocol apps' prefixes (V2, KServe V1, TorchServe), the status page and
#: Serve's own "/-/" routes. A metrics route there would hide an API route or never be reached.
RESERVED_PATHS = ("/models", "/pools", "/batches", "/graphs", "/services", "/v2", "/v1", "/predictions",
                  "/explanations", "/ui", "/ping", "/openapi.json", "/-")


def _default_home() -> str:
    return str(paths.home_dir())


class Settings(BaseModel):
    """Cluster and serving settings; see the README's table for what each one does."""

    # hide_input_in_errors: a refused value (a token) must not reach a log through the error's text
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    home: str = Field(default_factory=_default_home, description="Directory for state, caches and the default model store.")
    address: Optional[str] = Field(None, description="Ray cluster to join ('auto' or host:port); empty starts a local one. RAY_ADDRESS is honoured too.")
    ray_port: int = Field(6379, ge=1, le=65535, description="GCS port of the local Ray head that `modelpool start` launches.")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs the local Ray head offers (default: all cores).")
    http_host: str = Field(DEFAULT_HTTP_HOST, description="Address the HTTP ingress binds to.")
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=1, le=65535, description="Port of the HTTP ingress (inference and management).")
    grpc_port: int = Field(8001, ge=1, le=65535, description="Port of the V2 gRPC endpoint (inference.GRPCInferenceService), on --http-host; Triton's default.")
    grpc_workers: int = Field(1, ge=0, le=64, description="Threads of the front that routes each HTTP and gRPC call by the model it names; 0 turns gRPC off (Seldon's GRPC_WORKERS=0) and leaves the front one thread for HTTP.")
    http_front: bool = Field(True, description="The front (HAProxy) takes --http-port and sends model calls straight to the replicas' own ports; Serve's HTTP ingress moves to --serve-http-port. Off: Serve's ingress keeps --http-port (a RayService that KubeRay starts).")
    serve_http_port: int = Field(9000, ge=1, le=65535, description="Internal: port of Serve's own HTTP ingress on 127.0.0.1, which the front passes everything but model calls to.")
    grpc_ingress_port: int = Field(9001, ge=1, le=65535, description="Internal: port of Serve's own gRPC ingress on --http-host, which the gRPC front forwards to.")
    proxy_location: str = Field("EveryNode", pattern="^(EveryNode|HeadOnly)$", description="Where Serve runs an HTTP ingress: EveryNode (put a load balancer over the nodes) or HeadOnly (one entry point; also for several Ray nodes on one machine, which would fight over the port).")
    model_store: Optional[str] = Field(None, description="Directory of model archives (default: HOME/model_store).")
    examples: bool = Field(True, description="Build the example models into the model store at start.")
    register_store: bool = Field(True, description="Register every archive of the model store that is not registered yet, at start.")
    object_store: Optional[str] = Field(None, description="Object storage URI for the registry, model copies and batch results: a directory, file:///dir or s3://bucket/prefix (default: HOME/objects).")
    s3_endpoint: Optional[str] = Field(None, description="S3-compatible endpoint for s3:// URIs, e.g. http://127.0.0.1:9000 (credentials from AWS_* variables).")
    s3_region: Optional[str] = Field(None, description="Region for s3:// URIs.")
    allowed_urls: str = Field("", description="Comma-separated regular expressions; model URLs (http, https, s3) are fetched only when one matches in full.")
    allow_private_networks: bool = Field(False, description="Let model URLs resolve to loopback, private or link-local addresses (off: SSRF protection).")
    max_download_bytes: int = Field(2 << 30, ge=1, description="Largest model archive fetched from a URL.")
    management_token: Optional[str] = Field(None, repr=False, min_length=MIN_TOKEN_LENGTH, description="Bearer token for the management API (default: generated at start, written to HOME/management_token, mode 0600; required when --http-host is not loopback).")
    inference_token: Optional[str] = Field(None, repr=False, min_length=MIN_TOKEN_LENGTH, description="Bearer token every model route (infer, predict, model metadata and ready) requires; the management token is accepted too. Off by default; replicas only ever see its SHA-256.")
    batch_workers: int = Field(2, ge=1, le=1024, description="Warm batch-scoring workers (Ray actors, no CPU reservation): partitions scored at once across all jobs.")
    pool_models_per_replica: int = Field(DEFAULT_POOL_MODELS_PER_REPLICA, ge=1, le=1000, description="Models each generic-pool replica keeps loaded (LRU).")
    pool_min_replicas: int = Field(DEFAULT_POOL_MIN_REPLICAS, ge=1, le=1024, description="Replicas of the generic pool at least.")
    pool_max_replicas: int = Field(DEFAULT_POOL_MAX_REPLICAS, ge=1, le=1024, description="Replicas of the generic pool at most.")
    replica_num_cpus: float = Field(DEFAULT_REPLICA_NUM_CPUS, gt=0, le=64, description="CPUs reserved per model replica; fractional so several fit on a small machine.")
    workers: int = Field(DEFAULT_WORKERS, ge=0, le=1024, description="Initial replicas per model version.")
    max_workers: int = Field(DEFAULT_MAX_WORKERS, ge=1, le=1024, description="Upper bound of autoscaling per model version.")
    threads: int = Field(DEFAULT_THREADS, ge=1, le=100_000, description="Max ongoing requests per replica; must cover the batch size or the batcher starves.")
    max_queued_requests: int = Field(DEFAULT_MAX_QUEUED_REQUESTS, ge=-1, le=1_000_000, description="Requests that may wait at a model replica beyond the --threads it runs; past them a call gets 429 with Retry-After at once (load shedding; TorchServe's job_queue_size). -1: no limit, 0: none wait; register and scale set it per version.")
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=100_000, description="Largest batch the handler is given.")
    max_batch_delay_ms: float = Field(DEFAULT_MAX_BATCH_DELAY_MS, ge=0, le=60_000, description="Longest a request waits for others to join its batch, only while more are arriving.")
    target_ongoing_requests: float = Field(DEFAULT_TARGET_ONGOING_REQUESTS, gt=0, description="Autoscaling target of ongoing requests per replica.")
    upscale_delay_s: float = Field(DEFAULT_UPSCALE_DELAY_S, ge=0, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(DEFAULT_DOWNSCALE_DELAY_S, ge=0, description="How long load must stay low before removing replicas.")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest request body accepted; larger ones get 413.")
    request_timeout_s: Optional[float] = Field(None, gt=0, description="End-to-end HTTP request timeout (default: none).")
    body_timeout_s: float = Field(DEFAULT_BODY_TIMEOUT_S, gt=0, le=3600, description="Longest a client may take to send a request body; slower ones get 408 (a trickling client would hold a replica slot).")
    metrics_port: int = Field(8082, ge=1, le=65535, description="Port where the local Ray head exports Prometheus metrics (Serve's and modelpool_* ones); joined clusters keep theirs.")
    max_requests: int = Field(0, ge=0, description="Recycle a model replica after about this many requests (a fresh process replaces it); 0 = never.")
    max_requests_jitter: int = Field(0, ge=0, description="Add a random 0..N to --max-requests per replica, so replicas do not recycle at once.")
    keep_alive_s: int = Field(90, ge=1, le=3600, description="Seconds an idle client connection stays open at the HTTP ingress (Serve's default).")
    access_log: bool = Field(True, description="Write one access-log line per request (with its x-request-id) in the replica logs.")
    single_threaded: bool = Field(False, description="One request at a time per replica and no batching, for models that are not thread-safe.")
    debug: bool = Field(False, description="Verbose (DEBUG) logs, and error answers carry the handler's traceback.")
    payload_passthrough: bool = Field(False, description="Hand request bodies undecoded to handlers that define predict_raw, and their answer back unencoded.")
    tracing: bool = Field(False, description="OpenTelemetry spans for every request (ingress, replica, batch, handler; graph nodes; batch-job partitions), sent over OTLP/HTTP to --otlp-endpoint (Seldon's TRACING).")
    otlp_endpoint: str = Field("http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP (protobuf) traces endpoint of a collector (the OpenTelemetry Collector, Jaeger, Tempo) that --tracing exports to.")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests without a sampled traceparent that are traced (0..1); an incoming W3C traceparent's own decision is always honoured.")
    pidfile: Optional[str] = Field(None, description="Write the PID of the process that holds the cluster (the `start --block` process, else the Ray head's GCS server) to this file; removed at stop (Seldon/gunicorn's --pidfile).")
    metrics_path: str = Field("/metrics", pattern=r"^/[A-Za-z0-9._~/-]*$", description="Path on the HTTP port where the cluster's Prometheus metrics are answered (Seldon's PREDICTIVE_UNIT_METRICS_ENDPOINT); its scrapes write no access line unless --debug.")
    management_replicas: Optional[int] = Field(None, ge=1, le=16, description="Replicas of the management app, each serving (Serve balances between them; registry changes go through one writer actor, so they stay consistent). Default: 2 on a Ray cluster of several nodes or one joined with --address, 1 on one machine.")
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$", description="Log level of replicas and the CLI.")
    start_timeout_s: float = Field(180.0, gt=0, description="How long `modelpool start` waits for everything to serve.")

    @field_validator("metrics_path")
    @classmethod
    def _check_metrics_path(cls, path: str) -> str:
        """One clean path, not "/" and not on an API route; a trailing slash is dropped (management's routes ignore it)."""
        path = path.rstrip("/") or "/"
        segments = path.split("/")[1:]
        if path == "/" or any(segment in ("", ".", "..") for segment in segments):
            raise ValueError(f"{path!r} is not a path of its own; give one like /metrics or /prometheus")
        taken = next((reserved for reserved in RESERVED_PATHS if path == reserved or path.startswith(reserved + "/")), None)
        if taken:
            raise ValueError(f"{path} would shadow the API route {taken}; choose a path outside "
                             f"{', '.join(RESERVED_PATHS)}, e.g. /metrics or /prometheus")
        return path

    @model_validator(mode="after")
    def _check_bounds(self) -> "Settings":
        if self.workers > self.max_workers:
            raise ValueError(f"--workers ({self.workers}) must not exceed --max-workers ({self.max_workers})")
        if self.pool_min_replicas > self.pool_max_replicas:
            raise ValueError(f"--pool-min-replicas ({self.pool_min_replicas}) must not exceed --pool-max-replicas ({self.pool_max_replicas})")
        if self.allowed_urls:
            parse_allowed_urls(self.allowed_urls)
        if not self.single_threaded and self.threads < self.max_batch_size:
            raise ValueError(
                f"--threads ({self.threads}) must be at least --max-batch-size ({self.max_batch_size}): "
                "a replica admits at most --threads requests, so a smaller value starves the batcher"
            )
        return self

    @property
    def effective_log_level(self) -> str:
        return "DEBUG" if self.debug else self.log_level

    def serving_options(self) -> dict:
        """What every model replica needs to know of the server settings (travels in user_config).

        With an inference token, replicas get the SHA-256 of it and of the management token (an
        operator's token opens every route), never the tokens: Serve shows user_config in its status.
        """
        options = {"single_threaded": self.single_threaded, "debug": self.debug,
                   "payload_passthrough": self.payload_passthrough, "max_requests": self.max_requests,
                   "max_requests_jitter": self.max_requests_jitter, "body_timeout_s": self.body_timeout_s,
                   "replica_port": self.grpc_enabled or self.http_front}
        if self.inference_token:
            options["inference_token_sha256"] = [token_digest(token) for token in
                                                 (self.inference_token, self.management_token) if token]
        return options

    def logging_config(self) -> dict:
        """Serve's per-deployment LoggingConfig: level and the access log."""
        return {"log_level": self.effective_log_level, "enable_access_log": self.access_log}

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    @property
    def model_store_path(self) -> Path:
        return Path(self.model_store).expanduser() if self.model_store else paths.model_store_dir(self.home_path)

    @property
    def object_store_uri(self) -> str:
        return self.object_store or str(paths.objects_dir(self.home_path))

    @property
    def object_store_config(self) -> dict:
        """What replicas need to open the same object store (a plain dict: it crosses processes)."""
        return {"uri": self.object_store_uri, "s3_endpoint": self.s3_endpoint, "s3_region": self.s3_region}

    @property
    def token_path(self) -> Path:
        return paths.token_path(self.home_path)

    @property
    def cache_path(self) -> Path:
        return paths.cache_dir(self.home_path)

    @property
    def grpc_enabled(self) -> bool:
        return self.grpc_workers > 0

    @property
    def grpc_target(self) -> str:
        """host:port a gRPC client dials (what tritonclient.grpc takes as its url)."""
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return f"{host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return f"http://{host}:{self.http_port}"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the flag and the environment variable."""


def check_exposure(settings: Settings) -> None:
    """Refuse to put the management API on the network behind a token nobody chose (``modelpool start``).

    Not a model validator: ``stop`` and ``status`` read the same settings and must work whatever they say.
    """
    if settings.management_token or is_loopback_host(settings.http_host):
        return
    raise SettingsError(
        f"--http-host {settings.http_host} opens the management API to the network, but no management token is "
        f"configured: set {flag_name('management_token')} / {env_name('management_token')} to a secret you generate "
        "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') and hand to the API's users, or bind "
        f"127.0.0.1. The token modelpool generates when none is set is for loopback only: it stays in "
        f"{settings.token_path} on this machine, so the network would be served on a credential that nobody chose, "
        "nobody else holds and nobody rotates"
    )


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


#: The setting's own variable, also how management hands --pool-models-per-replica to generic-pool replicas
#: (their runtime_env): ``@serve.multiplexed`` takes its bound when the class is defined, before any user_config.
POOL_MODELS_PER_REPLICA_ENV = env_name("pool_models_per_replica")


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return message
    field = loc[0]
    return f"{flag_name(field)} / {env_name(field)}: {message}"


def load_settings(overrides: Optional[Mapping[str, Any]] = None, environ: Optional[Mapping[str, str]] = None) -> Settings:
    """Settings from the environment, then ``overrides`` (parsed flags; None values are ignored)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in Settings.model_fields:
        raw = environ.get(env_name(field))
        if raw is not None and raw != "":
            values[field] = raw
    if "address" not in values and environ.get("RAY_ADDRESS"):
        values["address"] = environ["RAY_ADDRESS"]
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from None


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, each defaulting to None so the environment can fill it."""
    for field, info in Settings.model_fields.items():
        help_text = f"{info.description} [env {env_name(field)}]"
        if info.annotation is bool:
            parser.add_argument(flag_name(field), dest=field, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag_name(field), dest=field, default=None, metavar=field.upper(), help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings({field: getattr(args, field, None) for field in Settings.model_fields})
