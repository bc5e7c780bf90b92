"""Waiting, for a synchronous management call, until Serve runs what the call changed.

The deployer waits and raises Python errors; a management answer needs the error shape instead:
a wait that runs out is a 504 that names the parameter bounding it and says the change still
happens (it is recorded, the replicas keep starting), and a deployment Serve reports failed is a 500.
"""
from __future__ import annotations

import logging
from typing import Optional

from modelpool.deployments.errors import RequestError
from modelpool.deployments import app_names
from modelpool.management import deployer, route_probe

logger = logging.getLogger(__name__)


def wait_for_rollout(apps: list[str], timeout_s: float, what: str,
                     min_running: Optional[tuple[str, str, int]] = None, field: str = "synchronous",
                     ingress: Optional[route_probe.Ingress] = None) -> None:
    """Until ``apps`` run and, with ``min_running`` (name, version, n), that version has n replicas; given this
    node's ``ingress``, until it also routes each model or graph app's prefix to that app (the caller's next request
    is answered by what it just started).

    ``what`` begins the error message (e.g. ``model 'iris'``); ``field`` is the parameter a 504 names.
    """
    try:
        deployer.wait_until_running(apps, timeout_s)
        if min_running is not None:
            name, version, replicas = min_running
            deployer.wait_for_replicas(app_names.app_name(name, version), replicas, timeout_s)
        if ingress is not None:
            late = deployer.wait_for_routes(ingress, apps)
            if late:
                logger.warning("%s: the ingress does not route %s to its new replicas yet", what, late)
    except TimeoutError as exc:
        raise RequestError(f"{what}: {exc}; the request is recorded and its replicas keep starting",
                           status=504, field=field) from None
    except RuntimeError as exc:
        raise RequestError(f"{what}: {exc}", status=500, field=None) from None
