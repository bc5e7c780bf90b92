"""A local cluster started without a wide --http-host listens on loopback only, read from the kernel as `ss -ltnp`
would show it. So far for its HAProxys (Serve's, with its stats page and exporter, and the front); Ray's own
processes still bind the node's network address (issue 19)."""
from __future__ import annotations

import psutil
import pytest

from modelpool.cluster.net import is_loopback_host
from modelpool.cluster.runtime import haproxy_processes

pytestmark = pytest.mark.integration


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


def test_every_socket_the_clusters_haproxys_listen_on_is_loopback(cluster):
    processes = haproxy_processes()
    sockets = listening_sockets(processes)
    ports = {port for _, port in sockets}
    assert len(processes) >= 2 and len(sockets) >= 4, f"Serve's HAProxy and the front, and their sockets: {sockets}"
    assert {8404, 9101} <= ports, f"Serve's stats page and exporter were found: {sockets}"
    public = {address: owner for address, owner in sockets.items() if not is_loopback_host(address[0])}
    assert not public, "listening beyond loopback:\n" + "\n".join(f"{ip}:{port}  {owner}"
                                                                 for (ip, port), owner in sorted(public.items()))
