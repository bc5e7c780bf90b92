"""A local start refuses a busy port before anything starts, naming the port and the flag that moves it."""
from __future__ import annotations

import socket
import time

import pytest

from modelpool.cluster import local_cluster, runtime
from modelpool.cluster.net import free_port
from modelpool.cluster.settings import load_settings, settings_from_args


def _settings(tmp_path, **changes):
    ports = {"http_port": free_port(), "grpc_port": free_port(), "serve_http_port": free_port(),
             "grpc_ingress_port": free_port()}
    return load_settings({"home": str(tmp_path), **ports, **changes}, {})


def test_free_ports_pass(tmp_path):
    assert local_cluster.busy_ports(_settings(tmp_path)) == []


@pytest.mark.parametrize("field, flag", [("http_port", "--http-port"), ("grpc_port", "--grpc-port"),
                                         ("serve_http_port", "--serve-http-port")])
def test_a_busy_port_stops_the_start_at_once_and_starts_nothing(tmp_path, monkeypatch, field, flag):
    settings = _settings(tmp_path)
    started = []
    monkeypatch.setattr(runtime, "start_local_head", lambda *_: started.append("ray"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", getattr(settings, field)))
        holder.listen()
        clock = time.monotonic()
        with pytest.raises(RuntimeError) as refused:
            local_cluster.start(settings, deploy=lambda token: started.append("deploy"))
    assert str(refused.value) == f"port {getattr(settings, field)} is in use: choose another with {flag}"
    assert time.monotonic() - clock < 2 and started == [], "refused before Ray or anything else starts"
    assert local_cluster.read_state(settings.home_path) is None


def test_ports_that_stay_closed_are_not_checked(tmp_path):
    settings = _settings(tmp_path, grpc_workers=0, http_front=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.grpc_port))
        holder.listen()
        assert local_cluster.busy_ports(settings) == [], "gRPC off: its port is not modelpool's"


def test_a_cluster_started_here_gets_one_replica_per_core_beyond_the_first() -> None:
    """fit_to_machine: the autoscaler's bound follows the machine unless the user set it or joined a cluster."""
    defaults = load_settings({}, environ={})
    assert defaults.max_workers == 2
    assert local_cluster.fit_to_machine(defaults, cores=2).max_workers == 1
    assert local_cluster.fit_to_machine(defaults, cores=8).max_workers == 2
    assert local_cluster.fit_to_machine(load_settings({"workers": 2}, environ={}), cores=2).max_workers == 2
    assert local_cluster.fit_to_machine(load_settings({"max_workers": 2}, environ={}), cores=2).max_workers == 2
    assert local_cluster.fit_to_machine(load_settings({}, environ={"MODELPOOL_MAX_WORKERS": "3"}), cores=2).max_workers == 3
    assert local_cluster.fit_to_machine(load_settings({"address": "10.0.0.5:6379"}, environ={}), cores=2).max_workers == 2
    assert local_cluster.fit_to_machine(load_settings({"num_cpus": 3}, environ={})).max_workers == 2


def test_the_start_command_fits_its_settings_to_the_machine() -> None:
    from modelpool.cli import build_parser

    args = build_parser().parse_args(["start"])
    assert "max_workers" not in settings_from_args(args).model_fields_set, "no flag: the machine decides"
    args = build_parser().parse_args(["start", "--max-workers", "2"])
    assert local_cluster.fit_to_machine(settings_from_args(args), cores=2).max_workers == 2


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_never_repeat():
    """A port handed to a server that binds it later must not be one the kernel gives out meanwhile."""
    import socket

    from modelpool.cluster.net import ephemeral_range, free_port

    low, _ = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(20000 <= port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # and free when handed out
    assert ephemeral_range("/nonexistent") == (49152, 65535)


def test_parallel_test_workers_hand_out_ports_from_disjoint_slices(monkeypatch):
    """Two processes picking ports side by side (the suite's two workers) never choose the same one."""
    from modelpool.cluster import net

    picked = {}
    for index in (0, 1):
        monkeypatch.setattr(net, "PORT_SHARD", (index, 2))
        picked[index] = {net.free_port() for _ in range(40)}
    low, _ = net.ephemeral_range()
    middle = 20000 + (low - 20000) // 2
    assert all(port < middle for port in picked[0]) and all(port >= middle for port in picked[1])
