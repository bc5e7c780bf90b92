"""The TCP sockets a cluster's processes listen on, read from the kernel as `ss -ltnp` shows them (psutil)."""
from __future__ import annotations

import os

import psutil

from modelpool.cluster.runtime import haproxy_processes, ray_processes_to_stop


def cluster_processes(*, this_driver: bool = False) -> list[psutil.Process]:
    """Every process of the cluster on this machine: Ray's (as `ray stop` finds them), what they started, the
    haproxys, and with ``this_driver`` this process (when it joined the cluster as a driver)."""
    found = {p.pid: p for p in [*ray_processes_to_stop(), *haproxy_processes()]}
    for process in list(found.values()):
        try:
            found.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    if this_driver:  # itself only: what a test started (an S3 server, say) is not the cluster's
        found[os.getpid()] = psutil.Process(os.getpid())
    return list(found.values())


def listening_sockets(processes: list[psutil.Process]) -> dict[tuple[str, int], str]:
    """(address, port) -> "pid name command line" of the process listening there, for the TCP sockets of
    ``processes`` (a UDP socket only sends: HAProxy's log lines)."""
    found = {}
    for process in processes:
        try:
            owner = f"{process.pid} {process.name()} {' '.join(process.cmdline())}"
            for connection in process.net_connections("inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found[(connection.laddr.ip, connection.laddr.port)] = owner
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def listing(sockets: dict[tuple[str, int], str]) -> str:
    """One line per socket, for a failure message."""
    return "\n".join(f"{ip}:{port}  {owner[:120]}" for (ip, port), owner in sorted(sockets.items()))
