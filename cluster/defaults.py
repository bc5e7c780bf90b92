"""The defaults every layer shares, named once: plain constants, importable without pydantic.

``Settings`` (``modelpool.cluster.settings``) builds its fields from these; a replica's constructor, a
config dataclass and the client (which must stay light: ``import modelpool.client`` loads no pydantic)
import them from here.
"""
from __future__ import annotations

ENV_PREFIX = "MODELPOOL_"
#: The management token's variable (``env_name("management_token")``): the client reads it, KubeRay's
#: containers get it from a Secret.
MANAGEMENT_TOKEN_ENV = f"{ENV_PREFIX}MANAGEMENT_TOKEN"

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_HTTP_URL = f"http://{DEFAULT_HTTP_HOST}:{DEFAULT_HTTP_PORT}"
DEFAULT_MAX_BODY_BYTES = 16 << 20  # 16 MiB
DEFAULT_BODY_TIMEOUT_S = 60.0
#: A model's register defaults (not server settings, but read by management, replicas and the client):
#: TorchServe's response_timeout and startup_timeout.
DEFAULT_RESPONSE_TIMEOUT_S = 120.0
DEFAULT_STARTUP_TIMEOUT_S = 120.0
#: How model replicas and the generic pool are sized and batch when nothing else says: Settings' fields,
#: and what runs before or without a Settings (management/serve_configs.py's dataclasses, replicas).
DEFAULT_WORKERS = 1
DEFAULT_MAX_WORKERS = 2
DEFAULT_THREADS = 128
DEFAULT_REPLICA_NUM_CPUS = 0.25
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_DELAY_MS = 5.0
DEFAULT_TARGET_ONGOING_REQUESTS = 32.0
#: Requests that may wait for a model replica beyond the ones it runs; past them a call gets 429 with Retry-After at
#: once (load shedding). TorchServe's job_queue_size default; -1 is no limit (Serve's default), 0 lets none wait.
DEFAULT_MAX_QUEUED_REQUESTS = 100
DEFAULT_UPSCALE_DELAY_S = 5.0
DEFAULT_DOWNSCALE_DELAY_S = 30.0
DEFAULT_POOL_MODELS_PER_REPLICA = 8
DEFAULT_POOL_MIN_REPLICAS = 1
DEFAULT_POOL_MAX_REPLICAS = 2
