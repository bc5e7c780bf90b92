"""A Ray head for one machine that listens on 127.0.0.1 only, and the drivers that join it.

``ray start --head --node-ip-address=127.0.0.1`` alone changes nothing: Ray turns a loopback node address into
the machine's network address (``services.resolve_ip_for_localhost``) so that other nodes could reach it, and its
GCS, raylet, agents, metrics export and Ray Client server then bind that address. Ray keeps loopback only where
it knows clusters are off, its macOS and Windows mode: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. With it set in
``ray start``'s environment every process of the head (workers inherit it) binds 127.0.0.1, Ray prints no join
command, and a worker node is refused, which is right for a cluster of one machine.

Every driver of such a head needs the setting too: ``ray.init("127.0.0.1:PORT")`` turns the address into the
network address as well, and then waits for a GCS that is not there. A driver cannot know from the address
alone (a head started by ``ray start --head`` answers on 127.0.0.1 as well, but on every interface), so
:func:`join_loopback_only` reads it from the kernel: the head is loopback-only when its GCS port listens on
loopback addresses only.
"""
from __future__ import annotations

from typing import Mapping, Optional

import psutil

from modelpool.cluster.net import is_loopback_host

#: Ray's own switch (``ray_constants.ENABLE_RAY_CLUSTER``); "0" keeps every address of a node on loopback.
CLUSTERS_SETTING = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
NODE_IP = "127.0.0.1"
#: Serve's HTTP proxy callback, called in each of its proxies at start; ours is ``serve_binds.proxy_started`` (named
#: here as text: this layer imports no service code)
PROXY_CALLBACK_SETTING = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "modelpool.deployments.serve_binds.proxy_started"


def head_environment(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """What ``ray start --head`` needs in its environment (with ``--node-ip-address=127.0.0.1``): Ray's setting, and
    Serve's proxy callback, which pins the gRPC port Serve's proxies bind to every interface in code
    (``deployments/serve_binds.py``; a callback of your own in ``environ`` is kept, and that port then stays wide)."""
    return {CLUSTERS_SETTING: "0", PROXY_CALLBACK_SETTING: (environ or {}).get(PROXY_CALLBACK_SETTING, PROXY_CALLBACK)}


def listens_on_loopback_only(port: int) -> bool:
    """True when something listens on TCP ``port`` and only on loopback addresses (read from /proc/net/tcp{,6})."""
    hosts = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
             if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    return bool(hosts) and all(is_loopback_host(host) for host in hosts)


def join_loopback_only(loopback_only: bool) -> None:
    """Make this process's next ``ray.init`` keep (or not keep) a loopback address as it is.

    Ray reads the setting into a constant when it is imported, and a process that imported Ray already (the CLI, a
    test session joining one cluster after another) must change the constant itself. The environment is left alone:
    what this process starts (``ray start`` for another cluster's worker node) must not inherit a choice made for
    this driver; a driver started from here joins through :func:`modelpool.cluster.runtime.connect` itself.
    """
    import ray._private.ray_constants as constants
    from ray._common.utils import env_bool

    constants.ENABLE_RAY_CLUSTER = not loopback_only and env_bool(CLUSTERS_SETTING, not constants.IS_WINDOWS_OR_OSX)
