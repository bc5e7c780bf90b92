"""Puts applications on Serve: the only place that turns an ``AppConfig`` into running replicas."""
from __future__ import annotations

import logging
import time
from typing import Iterable, Optional

from ray import serve
from ray.serve.api import RunTarget

from deployments.generic_pool import GenericPool
from deployments.http_routes import GENERIC_POOL_DEPLOYMENT
from deployments.model_deployment import ModelServer
from management.serve_configs import MODEL_APP_PREFIX, AppConfig
from modelpool import __version__

logger = logging.getLogger(__name__)


def code_version() -> str:
    """Part of every deployment fingerprint: a new modelpool release restarts replicas on its code."""
    return __version__


def _bind(app: AppConfig):
    options = dict(app.deployment_options)
    version = options.pop("version")
    target = GenericPool if app.deployment_name == GENERIC_POOL_DEPLOYMENT else ModelServer
    deployment = serve.deployment(target).options(version=version, _internal=True, **options)
    return deployment.bind(**app.init_kwargs)


def deploy_apps(apps: Iterable[AppConfig], wait: bool = False) -> None:
    """Deploy (or update in place) applications in one call, so route moves are validated together."""
    targets = [RunTarget(target=_bind(app), name=app.app_name, route_prefix=app.route_prefix) for app in apps]
    if targets:
        serve.run_many(targets, wait_for_applications_running=wait)


def model_app_names() -> list[str]:
    return [name for name in serve.status().applications if name.startswith(MODEL_APP_PREFIX)]


def delete_app(app_name: str, wait: bool = True) -> None:
    serve.delete(app_name, _blocking=wait)


def wait_until_running(app_names: Iterable[str], timeout_s: float) -> None:
    """Block until every named app is RUNNING; raise with the apps' messages otherwise."""
    pending = set(app_names)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        status = serve.status()
        for name in list(pending):
            app = status.applications.get(name)
            if app is not None and app.status == "RUNNING":
                pending.discard(name)
            elif app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"application {name} failed to deploy: {app.message}")
        if pending:
            time.sleep(0.25)
    if pending:
        raise TimeoutError(f"applications not running after {timeout_s:.0f}s: {sorted(pending)}")


def running_replicas(app_name: str) -> int:
    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def wait_for_replicas(app_name: str, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while running_replicas(app_name) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app_name} has {running_replicas(app_name)} running replicas, wanted {at_least}, after {timeout_s:.0f}s")
        time.sleep(0.25)


def delete_all(prefix: Optional[str] = None) -> None:
    for name in list(serve.status().applications):
        if prefix is None or name.startswith(prefix):
            serve.delete(name, _blocking=False)
