"""Live replica facts from the Serve controller: workers of a model, per-node pool status.

Read from ``get_serve_instance_details`` (what Serve's own REST API serves), so it needs no
dashboard. Memory is read with psutil for replicas on this node; elsewhere it is reported as null.
"""
from __future__ import annotations

import datetime
from typing import Any, Optional

import psutil
import ray
from ray.serve.context import _get_global_client

from management.repository import Serving

_WORKER_STATUS = {"RUNNING": "READY", "STARTING": "LOADING", "UPDATING": "LOADING", "RECOVERING": "LOADING",
                  "PENDING_MIGRATION": "READY", "STOPPING": "STOPPING"}


def status_name(value: object) -> str:
    """Serve's status enums print as 'ApplicationStatus.RUNNING'; people and scripts want 'RUNNING'."""
    return str(getattr(value, "value", value))


def serve_details() -> dict:
    client = _get_global_client()
    return ray.get(client._controller.get_serve_instance_details.remote())


def app_deployment(details: dict, app_name: str) -> Optional[dict]:
    app = details.get("applications", {}).get(app_name)
    if not app:
        return None
    deployments = list(app.get("deployments", {}).values())
    return deployments[0] if deployments else None


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


def _running(app: dict) -> int:
    replicas = [r for d in app.get("deployments", {}).values() for r in d.get("replicas", [])]
    return sum(1 for r in replicas if status_name(r.get("state")) == "RUNNING")


def running_replicas(details: dict) -> dict[tuple[str, str], int]:
    """RUNNING replicas of every model app, keyed (model, version): the ``modelpool_replicas`` gauge."""
    from management.serve_configs import parse_app_name

    counts: dict[tuple[str, str], int] = {}
    for name, app in details.get("applications", {}).items():
        parsed = parse_app_name(name)
        if parsed is not None:
            counts[parsed] = _running(app)
    return counts


def serving(details: dict, app_name: str) -> Serving:
    """What the repository index needs to know about one application: status, message, RUNNING replicas."""
    app = details.get("applications", {}).get(app_name)
    if not app:
        return Serving("NOT_DEPLOYED")
    return Serving(status_name(app.get("status", "NOT_DEPLOYED")), str(app.get("message") or ""), _running(app))
