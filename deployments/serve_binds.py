"""Serve's gRPC servers in a replica listen on the node's address when that address is loopback.

Serve binds two gRPC servers in every replica to ``[::]``, every interface, in code that no setting reaches
(``ray.serve._private.replica``): the server other deployments' handles call (``[::]:0``) and, with Serve's gRPC
ingress on, the replica's direct-ingress server (``[::]:40000`` and up). On a head started for one machine
(``cluster/ray_loopback.py``: node address 127.0.0.1) nothing should be reachable from the network, and every
caller of these servers (handles, Serve's HAProxy) dials the node's address anyway.

Both servers are bound after the replica's constructor has run, so the constructor calls :func:`pin_grpc_binds`
first: from then on, a gRPC server of this process asked for every interface gets the node's loopback address.
On a node with a network address nothing changes: other nodes must reach these servers.

Serve's proxies bind one more, their gRPC ingress (the head's fallback proxy: ``[::]:9500``), and run none of
modelpool's code but one hook: Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``), which
each proxy calls at its start, before its gRPC server binds, for the middlewares it should add.
:func:`proxy_started` is that callback: it pins the binds and adds no middleware.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from modelpool.cluster.net import is_loopback_host

#: How gRPC names "every interface" in a bind address (Serve uses the first).
WILDCARD_HOSTS = ("[::]", "0.0.0.0", "")


def pinned_address(address: str, node_ip: str) -> str:
    """``address`` with a wildcard host replaced by ``node_ip`` (``[::]:0`` -> ``127.0.0.1:0``); others unchanged."""
    host, separator, port = address.rpartition(":")
    if not separator or host not in WILDCARD_HOSTS:
        return address
    return f"[{node_ip}]:{port}" if ":" in node_ip else f"{node_ip}:{port}"


def _pinning(bind: Callable[..., Any], node_ip: str) -> Callable[..., Any]:
    @functools.wraps(bind)
    def pinned(server: Any, address: str, *args: Any, **kwargs: Any) -> Any:
        return bind(server, pinned_address(address, node_ip), *args, **kwargs)

    pinned.modelpool_pinned_to = node_ip  # type: ignore[attr-defined]
    return pinned


def pin_grpc_binds(node_ip: str | None = None) -> bool:
    """In this process, gRPC servers asked for every interface bind ``node_ip`` (default: this Ray node's address)
    when it is a loopback address; True when pinned. Idempotent; both gRPC server classes (sync and asyncio)."""
    if node_ip is None:
        import ray

        if not ray.is_initialized():  # not in a Ray worker (a unit test): no Serve servers to bind
            return False
        node_ip = ray.util.get_node_ip_address()
    if not is_loopback_host(node_ip):
        return False
    import grpc._server
    import grpc.aio._server

    for server_class in (grpc._server._Server, grpc.aio._server.Server):
        for method in ("add_insecure_port", "add_secure_port"):
            bind = getattr(server_class, method)
            if getattr(bind, "modelpool_pinned_to", None) is None:
                setattr(server_class, method, _pinning(bind, node_ip))
    return True


def proxy_started() -> list:
    """Serve's HTTP proxy callback (``PROXY_CALLBACK``): pins this proxy's gRPC binds; no middleware to add."""
    pin_grpc_binds()
    return []
