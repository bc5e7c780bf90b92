"""The one reader of Serve's state: application statuses, the controller's details, RUNNING replicas.

Serve answers two ways, and the difference matters: ``serve.status()`` changes the moment Serve
is told something (an app being deleted says DELETING at once), while the controller's instance
details (``get_serve_instance_details``, what Serve's own REST API serves, so no dashboard is
needed) are refreshed by its control loop but list every replica with its node, pid and state.
Every module of management that asks Serve what runs asks here; what it makes of the answer
(workers, pool status, deploy waits) is its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import ray
from ray import serve
from ray.serve.context import _get_global_client

from modelpool.deployments.app_names import parse_app_name

#: The key of ``user_config`` that carries an app's config fingerprint (written by ``modelpool.management.deployer``).
CONFIG_ID = "config_id"


def status_name(value: object) -> str:
    """Serve's status enums print as 'ApplicationStatus.RUNNING'; people and scripts want 'RUNNING'."""
    return str(getattr(value, "value", value))


def not_serving(apps: dict[str, Any]) -> dict[str, str]:
    """Applications that keep the server from being ready, with their status: starting, failed or unhealthy.

    One being deleted does not count: it is a model being unregistered, which nothing registered waits on
    (a readiness probe right after an unregister must not read as the server going down)."""
    return {name: status_name(app.status) for name, app in apps.items()
            if status_name(app.status) not in ("RUNNING", "DELETING")}


def applications() -> dict[str, Any]:
    """App name -> Serve's status overview (``.status``, ``.message``, ``.deployments``), current at once."""
    return serve.status().applications


def serve_details() -> dict:
    """The controller's instance details: every app, deployment and replica (node, pid, state, start time)."""
    client = _get_global_client()
    return ray.get(client._controller.get_serve_instance_details.remote())


def app_deployment(details: dict, app_name: str) -> Optional[dict]:
    """The (only) deployment of ``app_name`` in ``details``, None when Serve does not run it."""
    app = details.get("applications", {}).get(app_name)
    if not app:
        return None
    deployments = list(app.get("deployments", {}).values())
    return deployments[0] if deployments else None


def running_in(app: dict) -> int:
    """RUNNING replicas of one application of ``details``."""
    replicas = [r for d in app.get("deployments", {}).values() for r in d.get("replicas", [])]
    return sum(1 for r in replicas if status_name(r.get("state")) == "RUNNING")


def running_replicas(app_name: str) -> int:
    """RUNNING replicas of ``app_name`` now (from the status, not the control loop's details)."""
    app = applications().get(app_name)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def running_by_model(details: dict) -> dict[tuple[str, str], int]:
    """RUNNING replicas of every model app, keyed (model, version): the ``modelpool_replicas`` gauge."""
    counts: dict[tuple[str, str], int] = {}
    for name, app in details.get("applications", {}).items():
        parsed = parse_app_name(name)
        if parsed is not None:
            counts[parsed] = running_in(app)
    return counts


def replica_apps() -> dict[str, str]:
    """Replica id (as replicas put it in ``x-modelpool-replica``) -> its application, from Serve's details."""
    return {replica.get("replica_id"): name for name, app in serve_details().get("applications", {}).items()
            for deployment in app.get("deployments", {}).values() for replica in deployment.get("replicas", [])}


@dataclass(frozen=True)
class LiveApp:
    """What Serve runs now under one application name."""

    route_prefix: Optional[str]
    status: str
    running: int  # RUNNING replicas
    config_id: Optional[str] = None  # the fingerprint of the config it was last given (``CONFIG_ID``)


def live_apps() -> dict[str, LiveApp]:
    """App name -> route, status, RUNNING replicas and config fingerprint of what Serve runs now.

    The status comes from ``serve.status()``: Serve's details are refreshed by its control loop, so an app
    deleted a moment ago still shows RUNNING there, while its status says DELETING at once."""
    statuses = {name: status_name(app.status) for name, app in applications().items()}
    result = {}
    for name, app in serve_details().get("applications", {}).items():
        deployments = list(app.get("deployments", {}).values())
        user_config = ((deployments[0].get("deployment_config") or {}).get("user_config") or {}) if deployments else {}
        result[name] = LiveApp(app.get("route_prefix"), statuses.get(name, status_name(app.get("status", ""))),
                               running_in(app), user_config.get(CONFIG_ID) if isinstance(user_config, dict) else None)
    return result
