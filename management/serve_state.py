"""The one reader of Serve's state: application statuses, the controller's details, RUNNING replicas.

Two reads, of different weight. The status overviews (``applications``: each app's status and message, the
controller's protobuf answer that Serve's own client waits on) are cheap. The instance details (``serve_details``:
every app, deployment and replica with its node, pid and state, what Serve's REST API serves, so no dashboard is
needed) are not: the controller builds them as pydantic models, every deployment's config with it. Both say the
same status, the moment Serve is told something (an app being deleted says DELETING at once).

Not ``serve.status()``: it fetches the details and parses them again as pydantic models, and each deployment's
``RequestRouterConfig`` pickles its router class with cloudpickle on the way, about 0.1 s of CPU per
deployment-rich read on this machine. A management call polls the status while it waits, and with
``serve.status()`` most of a 2.2 s in-place change went on those reads (py-spy: 14 of 17 s over eight calls).
Every module of management that asks Serve what runs asks here; what it makes of the answer (workers, pool
status, deploy waits) is its own.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import ray
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


@dataclass(frozen=True)
class AppStatus:
    """One application's status as the controller keeps it: 'RUNNING', 'DEPLOYING', 'DELETING', ..."""

    status: str
    message: str = ""


def applications() -> dict[str, AppStatus]:
    """App name -> its status and message, current at once (the controller's status overviews, not its details)."""
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}  # Serve has not started: nothing runs
    return {overview.name: AppStatus(status_name(overview.app_status.status), overview.app_status.message)
            for overview in client.list_serve_statuses()}


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
    """RUNNING replicas of ``app_name`` now (0 when Serve does not run it)."""
    app = serve_details().get("applications", {}).get(app_name)
    return running_in(app) if app else 0


def application_rows(details: dict) -> dict[str, dict]:
    """App name -> its status and each deployment's status and replicas by state (``modelpool status``)."""
    rows = {}
    for name, app in details.get("applications", {}).items():
        deployments = {}
        for deployment_name, deployment in app.get("deployments", {}).items():
            states = Counter(status_name(replica.get("state")) for replica in deployment.get("replicas", []))
            deployments[deployment_name] = {"status": status_name(deployment.get("status", "")), "replicas": dict(states)}
        rows[name] = {"status": status_name(app.get("status", "")), "deployments": deployments}
    return rows


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

    The status is the overview's (the details say the same; the overview is what the deploy waits read)."""
    statuses = {name: status_name(app.status) for name, app in applications().items()}
    result = {}
    for name, app in serve_details().get("applications", {}).items():
        deployments = list(app.get("deployments", {}).values())
        user_config = ((deployments[0].get("deployment_config") or {}).get("user_config") or {}) if deployments else {}
        result[name] = LiveApp(app.get("route_prefix"), statuses.get(name, status_name(app.get("status", ""))),
                               running_in(app), user_config.get(CONFIG_ID) if isinstance(user_config, dict) else None)
    return result
