"""A local cluster started without a wide --http-host listens on loopback only, read from the kernel as `ss -ltnp`
would show it: every Ray process of the head (GCS, raylet, agents, the metrics export, each worker's gRPC port),
the replicas' own ports, Serve's HAProxy with its stats page and exporter, the front, and this test's own driver,
which joined the head through ``runtime.connect``."""
from __future__ import annotations

import os

import psutil
import pytest

from modelpool.cluster.net import is_loopback_host
from modelpool.cluster.runtime import haproxy_processes, ray_processes_to_stop

pytestmark = pytest.mark.integration

#: Serve's fallback proxy binds its gRPC port on every interface in code (``grpc_util.start_grpc_server``), in a
#: process that runs none of modelpool's code; it goes when modelpool stops using Serve's gRPC ingress (issue 19).
SERVE_FALLBACK_GRPC = ("ray::ProxyActor", 9500)


def cluster_processes() -> list[psutil.Process]:
    """Every process of the local cluster: Ray's (as `ray stop` finds them), what they started, the haproxys, and
    this process (a driver of the cluster)."""
    found = {p.pid: p for p in [*ray_processes_to_stop(), *haproxy_processes(), psutil.Process(os.getpid())]}
    for process in list(found.values()):
        try:
            found.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def listening_sockets(processes: list[psutil.Process]) -> dict[tuple[str, int], str]:
    """(address, port) -> the process listening there, for the TCP sockets of ``processes`` (a UDP socket only sends:
    HAProxy's log lines)."""
    found = {}
    for process in processes:
        try:
            for connection in process.net_connections("inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found[(connection.laddr.ip, connection.laddr.port)] = f"{process.pid} {' '.join(process.cmdline())[:100]}"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_every_socket_of_the_local_cluster_listens_on_loopback(ray_client):
    cluster = ray_client
    sockets = listening_sockets(cluster_processes())
    ports = {port for _, port in sockets}
    expected = {int(cluster.env[f"MODELPOOL_{name}_PORT"]) for name in ("RAY", "METRICS", "HTTP", "GRPC", "SERVE_HTTP")}
    expected |= {8404, 9101}  # Serve's HAProxy stats page and Prometheus exporter
    assert expected <= ports, f"missing {sorted(expected - ports)} among the listening sockets: {sockets}"
    assert len(sockets) >= 30, f"every worker listens for Ray's gRPC: too few sockets found to prove much: {sockets}"
    public = {address: owner for address, owner in sockets.items() if not is_loopback_host(address[0])}
    known = {address: owner for address, owner in public.items()
             if address[1] == SERVE_FALLBACK_GRPC[1] and SERVE_FALLBACK_GRPC[0] in owner}
    assert public == known and len(known) == 1, "listening beyond loopback:\n" + "\n".join(
        f"{ip}:{port}  {owner}" for (ip, port), owner in sorted(public.items()))
