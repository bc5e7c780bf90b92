"""Puts applications on Serve: the only place that turns an ``AppConfig`` into running replicas.

Read your writes: Serve applies a new config to running replicas after ``serve.run`` returns (its
control loop calls ``reconfigure`` on each replica). A management call that answered before that
left a window in which the generic pool still had its old catalog and answered 404 for a model it
had just been told about. So ``deploy_apps`` returns only once every application that was running
and changes in place (a new catalog, batching, versions, routes) has applied the change, which Serve
reports as the application being RUNNING again; applications that start replicas are not waited
for (that is what ``synchronous`` is for). Route changes (a default version moving, an app deleted) reach
Serve's HAProxy later still, so when a deploy moves routes it also waits until this node's ingress sends
each moved prefix to its new owner (``modelpool.management.route_probe``). Each deployment's ``user_config`` carries a fingerprint of
its whole config (``config_id``; replicas ignore it), so an app whose running config Serve reports
with the same fingerprint is not sent again: a call that changes nothing waits for nothing, and any
management replica can tell, because the fingerprint lives in Serve, not in a process. What Serve runs
is read through ``modelpool.management.serve_state``; this module deploys, deletes and waits.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import dataclasses
from typing import Iterable, Optional

from ray import serve
from ray.serve.api import RunTarget

from modelpool.deployments.generic_pool import GenericPool
from modelpool.deployments.app_names import (GENERIC_POOL_DEPLOYMENT, FRONT_DEPLOYMENT, GRAPH_DEPLOYMENT,
                                             PROTOCOL_FRONT_DEPLOYMENT)
from modelpool.deployments.front import Front
from modelpool.deployments.graph_deployment import GraphServer
from modelpool.deployments.model_deployment import ModelServer
from modelpool.deployments.protocol_front import ProtocolFront
from modelpool.management import route_probe
from modelpool.deployments.app_names import GRAPH_APP_PREFIX, MODEL_APP_PREFIX, parse_app_name
from modelpool.management.serve_configs import AppConfig
from modelpool.management.serve_state import CONFIG_ID, LiveApp, applications, live_apps, replica_apps, running_replicas
from modelpool.cluster.version import __version__

logger = logging.getLogger(__name__)


def code_version() -> str:
    """Part of every deployment fingerprint: a new modelpool release restarts replicas on its code."""
    return __version__


_BIND_ATTEMPTS = 3


def _bind(app: AppConfig):
    options = dict(app.deployment_options)
    options["user_config"] = {**(options.get("user_config") or {}), CONFIG_ID: fingerprint(app)}
    version = options.pop("version")
    target = {GENERIC_POOL_DEPLOYMENT: GenericPool, FRONT_DEPLOYMENT: Front, GRAPH_DEPLOYMENT: GraphServer,
              PROTOCOL_FRONT_DEPLOYMENT: ProtocolFront}.get(app.deployment_name, ModelServer)
    for attempt in range(_BIND_ATTEMPTS):
        try:
            deployment = serve.deployment(target).options(version=version, _internal=True, **options)
            break
        except ValueError as exc:
            # Ray Serve's RequestRouterConfig registers and unregisters a module with cloudpickle around
            # each construction, process-wide; one built at the same moment on another of the replica's
            # threads (Serve's own) unregisters it under this one: "... is not registered for pickle by
            # value". Building is pure, so building again is safe (seen once in ~20 full test runs).
            if "registered for pickle by value" not in str(exc) or attempt == _BIND_ATTEMPTS - 1:
                raise
            logger.info("building %s's deployment raced Ray's pickle registration; building it again", app.app_name)
    return deployment.bind(**app.init_kwargs)


#: How long a mutation waits for running applications to apply its change (a few control loops, normally).
APPLY_TIMEOUT_S = 10.0
_POLL_S = 0.02


def deploy_apps(apps: Iterable[AppConfig], wait: bool = False, ingress: Optional[route_probe.Ingress] = None,
                deleted: Iterable[str] = ()) -> None:
    """Deploy (or update in place) applications; return once the running ones have applied the change and,
    given this node's ``ingress``, once it routes every moved prefix to its new owner (``deleted``: the apps
    just deleted, whose routes move too; Serve may report them RUNNING for a moment).

    Serve refuses a route prefix another app still holds, even within one call, so when the
    default version changes, the app giving up the short route moves first, then the rest.
    """
    apps = list(apps)
    if not apps:
        return
    live = live_apps()
    for name in deleted:
        if name in live:
            live[name] = dataclasses.replace(live[name], status="DELETING")
    changed = [app for app in apps if not is_deployed(app, live.get(app.app_name))]
    for batch in _route_safe_batches(changed, {name: app.route_prefix for name, app in live.items()}):
        targets = [RunTarget(target=_bind(app), name=app.app_name, route_prefix=app.route_prefix) for app in batch]
        serve.run_many(targets, wait_for_applications_running=wait)
    in_place = [app.app_name for app in changed if changes_in_place(app, live.get(app.app_name))]
    started = time.monotonic()
    late = wait_until_applied(in_place, APPLY_TIMEOUT_S)
    if late:
        logger.warning("applications still applying their new config after %.0fs: %s", APPLY_TIMEOUT_S, late)
    applied = time.monotonic()
    owners = new_route_owners(apps, changed, live) if ingress is not None else {}
    if owners:
        deleting = [name for name, app in live.items() if app.status == "DELETING"]
        late = route_probe.wait_for_owners(ingress, owners, replica_apps, draining=deleting)
        if late:
            logger.warning("the ingress still routes %s elsewhere after %.0fs", late, route_probe.TIMEOUT_S)
    logger.debug("deployed %s; %s applied in %.2fs; routes %s in %.2fs", [app.app_name for app in changed], in_place,
                 applied - started, sorted(owners), time.monotonic() - applied)


def new_route_owners(apps: list[AppConfig], changed: list[AppConfig], live: dict[str, "LiveApp"]) -> dict[str, str]:
    """Moved prefix -> the app that owns it after this deploy, for owners that can answer now (running, and
    not waiting for new replicas: a request for a starting app waits in Serve's proxy, it is not answered stale)."""
    before = {name: app.route_prefix for name, app in live.items()}
    after = {name: app.route_prefix for name, app in live.items() if app.status != "DELETING" and app.route_prefix}
    after.update({app.app_name: app.route_prefix for app in apps if app.route_prefix})
    starting = {app.app_name for app in changed if not changes_in_place(app, live.get(app.app_name))}
    owners = {}
    for prefix in route_probe.moved_prefixes(before, after):
        owner = route_probe.owner_of(prefix, after)
        state = live.get(owner) if owner else None
        if state is not None and state.status == "RUNNING" and state.running and owner not in starting:
            owners[prefix] = owner
    return owners


def fingerprint(app: AppConfig) -> str:
    """Everything ``serve.run`` is given for an app: equal fingerprints deploy the same thing."""
    payload = [app.route_prefix, app.deployment_name, app.deployment_options, app.init_kwargs]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def is_deployed(app: AppConfig, live: Optional[LiveApp]) -> bool:
    """True when Serve runs ``app`` with exactly this config (and is not deleting it)."""
    return live is not None and live.status != "DELETING" and live.config_id == fingerprint(app)


def changes_in_place(app: AppConfig, live: Optional[LiveApp]) -> bool:
    """True when ``app`` runs already and keeps at least the replicas it has: the change lands on running
    replicas (config, routes) within a few control loops. New apps and scale-ups start replicas instead."""
    if live is None or live.status != "RUNNING":
        return False
    options = app.deployment_options
    wanted = (options.get("autoscaling_config") or {}).get("min_replicas", options.get("num_replicas", 1))
    return int(wanted or 0) <= live.running


def current_routes() -> dict[str, str]:
    """App name -> route prefix of what Serve runs now."""
    return {name: app.route_prefix for name, app in live_apps().items()}


def wait_until_applied(app_names: Iterable[str], timeout_s: float) -> list[str]:
    """Wait until Serve reports each app RUNNING again after a deploy; returns the ones that were not in time.

    Serve marks an application DEPLOYING when it is given a new config (synchronously, inside the
    deploy call) and RUNNING once every replica runs the new version, i.e. has been reconfigured.
    An app that fails or turns unhealthy is not waited for: its own status says what is wrong.
    """
    pending = set(app_names)
    deadline = time.monotonic() + timeout_s
    while pending:
        statuses = applications()
        for name in list(pending):
            app = statuses.get(name)
            if app is None or app.status != "DEPLOYING":
                pending.discard(name)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(_POLL_S)
    return sorted(pending)


def has_replicas(app_names: Iterable[str], app_name: str, at_least: int) -> bool:
    """True when the apps run and ``app_name`` has ``at_least`` RUNNING replicas: nothing is pending."""
    statuses = applications()
    if any(name in statuses and statuses[name].status != "RUNNING" for name in app_names):
        return False
    return running_replicas(app_name) >= at_least


def _route_safe_batches(apps: list[AppConfig], routes: dict[str, str]) -> list[list[AppConfig]]:
    """Apps that vacate a route someone else in ``apps`` wants go in a first batch."""
    wanted = {app.route_prefix: app.app_name for app in apps}
    movers = [app for app in apps
              if routes.get(app.app_name) not in (None, app.route_prefix)
              and wanted.get(routes.get(app.app_name), app.app_name) != app.app_name]
    rest = [app for app in apps if app not in movers]
    return [batch for batch in (movers, rest) if batch]


def model_app_names() -> list[str]:
    return [name for name in applications() if name.startswith(MODEL_APP_PREFIX)]


def graph_app_names() -> list[str]:
    return [name for name in applications() if name.startswith(GRAPH_APP_PREFIX)]


def delete_app(app_name: str, wait: bool = True) -> None:
    serve.delete(app_name, _blocking=wait)


def wait_until_running(app_names: Iterable[str], timeout_s: float) -> None:
    """Block until every named app is RUNNING; raise with the apps' messages otherwise."""
    pending = set(app_names)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        statuses = applications()
        for name in list(pending):
            app = statuses.get(name)
            if app is not None and app.status == "RUNNING":
                pending.discard(name)
            elif app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"application {name} failed to deploy: {app.message}")
        if pending:
            time.sleep(0.25)
    if pending:
        raise TimeoutError(f"applications not running after {timeout_s:.0f}s: {sorted(pending)}")


def wait_for_routes(ingress: route_probe.Ingress, app_names: Iterable[str]) -> list[str]:
    """Wait until this node's ingress sends each running model or graph app's route to that app; returns the late
    prefixes.

    A synchronous call's replicas can be RUNNING in the controller's eyes before Serve's HAProxy has reloaded with
    them (or with the route a concurrent registration just moved to them): the caller's next request would reach
    the prefix's previous owner or no server. Apps without running replicas are not probed, nor the generic pool
    and the fronts a call also deploys (their routes do not move)."""
    live = live_apps()
    owners = {state.route_prefix: name for name in app_names
              if (parse_app_name(name) is not None or name.startswith(GRAPH_APP_PREFIX))
              and (state := live.get(name)) is not None and state.status == "RUNNING" and state.running
              and state.route_prefix}
    return route_probe.wait_for_owners(ingress, owners, replica_apps) if owners else []


def wait_for_replicas(app_name: str, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while running_replicas(app_name) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app_name} has {running_replicas(app_name)} running replicas, wanted {at_least}, after {timeout_s:.0f}s")
        time.sleep(0.25)
