"""Read your writes through the ingress: wait until HAProxy sends changed routes to their new owners.

Serve tells its HAProxy about route changes (an app deployed at a new prefix, a default version moving,
an app deleted) asynchronously: the controller broadcasts, HAProxy's manager coalesces and reloads.
Until then a request for ``/v2/models/iris`` can still reach the version that was the default, or an
unregistered model's replicas, which keep serving while they drain. So after a deploy that moves
routes, management asks the ingress itself which application answers each moved prefix, and answers
its caller once every one is answered by the app that now owns it.

The probe is ``GET {prefix}/-`` on a fresh connection: every model route answers it with a 404 from the
replica that received it (no model is loaded, no handler runs), and the ``x-modelpool-replica`` header
names that replica, which Serve's details map to its application. Only this node's ingress is asked
(the one management can reach); a route whose owner has no running replica yet is not probed (its
requests wait for the replica in Serve's proxy, which is not a stale answer). An answer from an app
being deleted counts as the owner's: Serve keeps routing to its draining replicas for a while, and they
answer what the registry says (an unregistered version's are ``retired``: 404; a version moved to the
generic pool is the same model there).
"""
from __future__ import annotations

import http.client
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional
from urllib.parse import urlsplit

from modelpool.deployments.app_names import REPLICA_HEADER

logger = logging.getLogger(__name__)

PROBE_SUFFIX = "/-"
TIMEOUT_S = 5.0
_POLL_S = 0.02
_REQUEST_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Ingress:
    """Where this node's HTTP ingress listens, and the headers a probe needs (a token, when one is set)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


def owner_of(path: str, routes: Mapping[str, str]) -> Optional[str]:
    """The app whose route prefix is the longest whole-segment prefix of ``path`` (Serve's HAProxy rule)."""
    best, best_length = None, -1
    for app, prefix in routes.items():
        base = prefix.rstrip("/")
        if (path == prefix or path.startswith(base + "/") or prefix == "/") and len(base) > best_length:
            best, best_length = app, len(base)
    return best


def moved_prefixes(before: Mapping[str, Optional[str]], after: Mapping[str, Optional[str]]) -> set[str]:
    """Prefixes whose owner may differ: taken by an app that did not hold them, or given up by one."""
    moved = set()
    for app, prefix in after.items():
        if prefix and before.get(app) != prefix:
            moved.add(prefix)
            if before.get(app):
                moved.add(before[app])  # type: ignore[arg-type]
    moved |= {prefix for app, prefix in before.items() if prefix and app not in after}
    return moved


class Unreachable(Exception):
    """This node's ingress refuses connections (management runs where no HAProxy listens): nothing to probe."""


def answering_replica(ingress: Ingress, prefix: str) -> Optional[str]:
    """The replica that answers ``{prefix}/-`` at the ingress now; None when none answers in time."""
    parts = urlsplit(ingress.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                            timeout=_REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", prefix.rstrip("/") + PROBE_SUFFIX, headers={**ingress.headers, "Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.getheader(REPLICA_HEADER)
    except ConnectionRefusedError:
        raise Unreachable(ingress.url) from None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_for_owners(ingress: Ingress, owners: Mapping[str, str], replica_apps: Callable[[], Mapping[str, str]],
                    timeout_s: float = TIMEOUT_S, draining: Iterable[str] = ()) -> list[str]:
    """Wait until each prefix in ``owners`` is answered by its app (or by a ``draining`` one, an app being
    deleted); returns the prefixes that were not in time.

    ``replica_apps`` maps replica ids to their apps (Serve's details), read once per round."""
    accepted = set(draining)
    pending = dict(owners)
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            apps = replica_apps()
            for prefix, app in list(pending.items()):
                if apps.get(answering_replica(ingress, prefix) or "") in accepted | {app}:
                    del pending[prefix]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(_POLL_S)
    except Unreachable:
        logger.info("the ingress at %s refuses connections here; route changes are not waited for", ingress.url)
        return []
    return sorted(pending)
