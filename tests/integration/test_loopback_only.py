"""A local cluster started without a wide --http-host listens on loopback only, read from the kernel as `ss -ltnp`
would show it: every Ray process of the head (GCS, raylet, agents, the metrics export, each worker's gRPC port),
Serve's proxies and replicas, modelpool's own replica ports, Serve's HAProxy with its stats page and exporter, the
front, and this test's own driver, which joined the head through ``runtime.connect``. Every one of those sockets
is in the README's port table for one machine."""
from __future__ import annotations

import os

import pytest

from modelpool.cluster.net import is_loopback_host
from tests.listening import cluster_processes, listening_sockets, listing
from tests.readme_ports import table, undocumented

pytestmark = pytest.mark.integration


def test_every_socket_of_the_local_cluster_listens_on_loopback_and_is_in_the_readme(ray_client):
    cluster = ray_client
    sockets = listening_sockets(cluster_processes(this_driver=True))
    ports = {port for _, port in sockets}
    expected = {int(cluster.env[f"MODELPOOL_{name}_PORT"]) for name in ("RAY", "METRICS", "HTTP", "GRPC", "SERVE_HTTP")}
    expected |= {8404, 9101, 9500}  # Serve's HAProxy stats page and Prometheus exporter; Serve's fallback gRPC proxy
    assert expected <= ports, f"missing {sorted(expected - ports)} among the listening sockets:\n{listing(sockets)}"
    assert len(sockets) >= 30, f"every worker listens for Ray's gRPC: too few sockets to prove much:\n{listing(sockets)}"
    public = {address: owner for address, owner in sockets.items() if not is_loopback_host(address[0])}
    assert not public, f"listening beyond loopback:\n{listing(public)}"
    # The cluster's own: not this driver's. The test settings move the fixed ports of modelpool's flags; those are
    # checked above, from the settings, not against the README's defaults.
    moved = {int(cluster.env[f"MODELPOOL_{name}_PORT"]) for name in
             ("RAY", "METRICS", "HTTP", "GRPC", "SERVE_HTTP", "GRPC_INGRESS")}
    its_own = {address: owner for address, owner in sockets.items()
               if address[1] not in moved and owner.split()[0] != str(os.getpid())}
    missing = undocumented(its_own, table("One machine"))
    assert not missing, f"listening, but not in the README's port table for one machine:\n{listing(missing)}"
