"""Puts applications on Serve: the only place that turns an ``AppConfig`` into running replicas."""
from __future__ import annotations

import logging
import time
from typing import Iterable

from ray import serve
from ray.serve.api import RunTarget

from deployments.generic_pool import GenericPool
from deployments.grpc_front import GRPC_FRONT_DEPLOYMENT, GrpcFront
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
    target = {GENERIC_POOL_DEPLOYMENT: GenericPool, GRPC_FRONT_DEPLOYMENT: GrpcFront}.get(app.deployment_name, ModelServer)
    deployment = serve.deployment(target).options(version=version, _internal=True, **options)
    return deployment.bind(**app.init_kwargs)


def deploy_apps(apps: Iterable[AppConfig], wait: bool = False) -> None:
    """Deploy (or update in place) applications.

    Serve refuses a route prefix another app still holds, even within one call, so when the
    default version changes, the app giving up the short route moves first, then the rest.
    """
    apps = list(apps)
    if not apps:
        return
    for batch in _route_safe_batches(apps, current_routes()):
        targets = [RunTarget(target=_bind(app), name=app.app_name, route_prefix=app.route_prefix) for app in batch]
        serve.run_many(targets, wait_for_applications_running=wait)


def current_routes() -> dict[str, str]:
    """App name -> route prefix of what Serve runs now."""
    from ray.serve.context import _get_global_client
    import ray

    details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote())
    return {name: app.get("route_prefix") for name, app in details.get("applications", {}).items()}


def _route_safe_batches(apps: list[AppConfig], routes: dict[str, str]) -> list[list[AppConfig]]:
    """Apps that vacate a route someone else in ``apps`` wants go in a first batch."""
    wanted = {app.route_prefix: app.app_name for app in apps}
    movers = [app for app in apps
              if routes.get(app.app_name) not in (None, app.route_prefix)
              and wanted.get(routes.get(app.app_name), app.app_name) != app.app_name]
    rest = [app for app in apps if app not in movers]
    return [batch for batch in (movers, rest) if batch]


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
