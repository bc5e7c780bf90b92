"""A registered version as TorchServe's describe answers it: pure, from its record and its live workers.

Every key TorchServe's ``DescribeModelResponse`` carries is there (clients read them by name), with what
is true of modelpool for the ones that have no counterpart here, and modelpool's own keys after them.
"""
from __future__ import annotations

from typing import Optional

from modelpool.cluster.defaults import DEFAULT_MAX_QUEUED_REQUESTS
from modelpool.deployments.manifest import SKLEARN_HANDLER
from modelpool.management.registry import ModelRecord


def describe_record(record: ModelRecord, min_workers: int, max_workers: int, replicas: list[dict],
                    concurrency: int, is_default: bool, dedicated: bool, max_queued: Optional[int] = None) -> dict:
    """One version as TorchServe's describe answers it (every key it returns), and modelpool's own keys.

    ``max_queued``: the queue limit in effect for the version (``maxQueuedRequests``), which the caller knows from
    the server's settings; None: the record's own, else the default.

    TorchServe's keys for what has no counterpart here hold what is true of modelpool: no sequence
    batching, no job tickets, no virtual environments, no model parallelism. ``jobQueueStatus`` counts
    what the READY workers can take at once; Serve does not report a model's pending requests.
    """
    ready = sum(1 for replica in replicas if replica.get("status") == "READY")
    manifest = record.manifest if isinstance(record.manifest, dict) else {}
    if max_queued is None:
        max_queued = DEFAULT_MAX_QUEUED_REQUESTS if record.max_queued_requests is None else record.max_queued_requests
    return {
        "modelName": record.name, "modelVersion": record.version, "modelUrl": record.url,
        "engine": engine(record), "runtime": record.runtime,
        "minWorkers": min_workers, "maxWorkers": max_workers,
        "batchSize": record.batch_size, "maxBatchDelay": record.max_batch_delay_ms,
        "responseTimeout": record.response_timeout_s, "startupTimeout": record.startup_timeout_s,
        "maxRetryTimeoutInSec": 0, "clientTimeoutInMills": 0,
        "parallelType": "", "parallelLevel": 0,
        "deviceType": "gpu" if record.number_gpu else "cpu", "deviceIds": [],
        "continuousBatching": False, "useJobTicket": False, "useVenv": False, "stateful": False,
        "sequenceMaxIdleMSec": 0, "sequenceTimeoutMSec": 0, "maxNumSequence": 0, "maxSequenceJobQueueSize": 0,
        "loadedAtStartup": record.loaded_at_startup,
        "workers": replicas,
        "jobQueueStatus": {"remainingCapacity": ready * concurrency, "pendingRequests": None},
        # modelpool's own
        "handler": record.handler, "isDefault": is_default, "pool": "dedicated" if dedicated else "generic",
        "maxQueuedRequests": max_queued,  # past it a call gets 429 at once (-1: no limit, 0: none wait)
        # Seldon's --service-type and --parameters, as the archive's manifest declares them
        "serviceType": manifest.get("service_type", "MODEL"), "parameters": manifest.get("parameters", []),
    }


def engine(record: ModelRecord) -> str:
    """What runs the model (MMS's and TorchServe's ``engine``): the manifest's own word, else the handler's kind."""
    named = record.manifest.get("extra", {}).get("engine") if isinstance(record.manifest, dict) else None
    if isinstance(named, str) and named:
        return named
    return "scikit-learn" if record.handler == SKLEARN_HANDLER else "Python"
