"""Live replica facts in the shapes the APIs answer with: workers of a model, per-node pool status.

Shaped from the controller's details that ``modelpool.management.serve_state`` reads (callers pass them in, so
one read serves a whole answer). Memory is read with psutil for replicas on this node; elsewhere it is
reported as null.
"""
from __future__ import annotations

import datetime
from typing import Any, Optional

import psutil
import ray
from modelpool.management.repository import Serving
from modelpool.management.serve_state import app_deployment, running_in, status_name

_WORKER_STATUS = {"RUNNING": "READY", "STARTING": "LOADING", "UPDATING": "LOADING", "RECOVERING": "LOADING",
                  "PENDING_MIGRATION": "READY", "STOPPING": "STOPPING"}


def _memory(replica: dict, local_node: str) -> Optional[int]:
    if replica.get("node_id") != local_node or not replica.get("pid"):
        return None
    try:
        return psutil.Process(replica["pid"]).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def workers(details: dict, app_name: str, gpu: bool) -> list[dict[str, Any]]:
    """TorchServe's workers: id, startTime, status, gpu, memoryUsage (bytes), pid, gpuUsage; and the node."""
    deployment = app_deployment(details, app_name)
    if deployment is None:
        return []
    local_node = ray.get_runtime_context().get_node_id()
    result = []
    for replica in deployment.get("replicas", []):
        started = replica.get("start_time_s")
        result.append({
            "id": replica.get("replica_id"),
            "startTime": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat() if started else None,
            "status": _WORKER_STATUS.get(status_name(replica.get("state")), status_name(replica.get("state"))),
            "gpu": gpu,
            "memoryUsage": _memory(replica, local_node),
            "pid": replica.get("pid"),
            "gpuUsage": "N/A",  # as TorchServe reports a worker whose GPU it does not sample
            "node": replica.get("node_ip"),
        })
    return result


def pool_status(details: dict, app_name: str) -> list[dict[str, Any]]:
    """Machine Learning Server's per-node pool status: Pending, Success or NotFound."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    deployment = app_deployment(details, app_name)
    if deployment is None:
        return [{"computeNodeEndpoint": node["NodeManagerAddress"], "status": "NotFound", "errors": []} for node in alive]
    replicas = deployment.get("replicas", [])
    running = sum(1 for r in replicas if status_name(r.get("state")) == "RUNNING")
    short = running < int(deployment.get("target_num_replicas") or 0)
    by_node: dict[str, list[dict]] = {}
    for replica in replicas:
        by_node.setdefault(replica.get("node_ip") or "unknown", []).append(replica)
    if not by_node:
        head = alive[0]["NodeManagerAddress"] if alive else "unknown"
        return [{"computeNodeEndpoint": head, "status": "Pending", "errors": []}]
    statuses = []
    for node_ip, node_replicas in sorted(by_node.items()):
        pending = short or any(status_name(r.get("state")) != "RUNNING" for r in node_replicas)
        statuses.append({"computeNodeEndpoint": node_ip, "status": "Pending" if pending else "Success", "errors": []})
    return statuses


def serving(details: dict, app_name: str) -> Serving:
    """What the repository index needs to know about one application: status, message, RUNNING replicas."""
    app = details.get("applications", {}).get(app_name)
    if not app:
        return Serving("NOT_DEPLOYED")
    return Serving(status_name(app.get("status", "NOT_DEPLOYED")), str(app.get("message") or ""), running_in(app))
