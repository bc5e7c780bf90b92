"""How a driver tells a loopback-only Ray head from one on every interface, and keeps Ray's address on loopback
for it. Real sockets and Ray's own address resolution; no Ray cluster (tests/integration/test_loopback_only.py
starts one and lists its sockets)."""
from __future__ import annotations

import os
import socket

import pytest
from ray._private import ray_constants, services

from modelpool.cluster import ray_loopback
from modelpool.cluster.net import free_port


def listening(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("host, only", [("127.0.0.1", True), ("::1", True), ("0.0.0.0", False), ("::", False)])
def test_a_port_counts_as_loopback_only_when_every_listener_on_it_is(host, only):
    with listening(host) as sock:
        assert ray_loopback.listens_on_loopback_only(sock.getsockname()[1]) is only


def test_a_port_nobody_listens_on_is_not_a_loopback_head():
    assert ray_loopback.listens_on_loopback_only(free_port()) is False


def test_a_driver_of_a_loopback_head_keeps_its_address_and_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)  # restored after
    monkeypatch.delenv(ray_loopback.CLUSTERS_SETTING, raising=False)
    ray_loopback.join_loopback_only(True)
    assert services.canonicalize_bootstrap_address("127.0.0.1:6379") == "127.0.0.1:6379", "Ray's own resolution"
    assert ray_loopback.CLUSTERS_SETTING not in os.environ, "a `ray start --address` run from here must not inherit it"
    ray_loopback.join_loopback_only(False)  # then a head of several nodes, joined on its loopback address
    assert ray_constants.ENABLE_RAY_CLUSTER is True
