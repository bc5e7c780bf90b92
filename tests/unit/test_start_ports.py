"""A local start refuses what cannot succeed before anything starts, in one line: a busy port (naming it, its
holder and the flag that moves it), two settings on one port, the cluster this home started still running."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil

import pytest

from modelpool.cluster import local_cluster, runtime, start_checks
from modelpool.cluster.net import free_port
from modelpool.cluster.settings import load_settings, settings_from_args


def _settings(tmp_path, **changes):
    ports = {field: free_port() for field in ("http_port", "grpc_port", "serve_http_port", "grpc_ingress_port",
                                              "ray_port", "metrics_port")}
    return load_settings({"home": str(tmp_path), **ports, **changes}, {})


def _serve_ports() -> dict[str, str]:
    """Serve's fixed ports moved to free ones: a cluster the suite runs beside this test holds the defaults."""
    return {variable: str(free_port()) for variable, _, _ in start_checks.RAY_FIXED_PORTS}


def _refusals(settings) -> list[str]:
    """What a start would refuse on, Ray's unmovable ports left out (the cluster beside this test holds them)."""
    uses = [use for use in start_checks.ports_a_start_binds(settings, _serve_ports()) if use.change]
    return [start_checks.busy_ports_message([busy]) for busy in start_checks.busy_ports(uses)]


def test_free_ports_pass(tmp_path):
    assert _refusals(_settings(tmp_path)) == []


@pytest.mark.parametrize("field, flag", [("http_port", "--http-port"), ("grpc_port", "--grpc-port"),
                                         ("serve_http_port", "--serve-http-port"), ("ray_port", "--ray-port"),
                                         ("metrics_port", "--metrics-port")])
def test_a_busy_port_is_named_with_its_holder_and_the_flag_that_moves_it(tmp_path, field, flag):
    settings = _settings(tmp_path)
    port = getattr(settings, field)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        refused = _refusals(settings)
    name = psutil.Process().name()
    assert len(refused) == 1 and refused[0].startswith(f"port {port} (")
    assert f"is held by {name} (pid {os.getpid()})" in refused[0]
    assert refused[0].endswith(f"choose another port with {flag} (or MODELPOOL_{field.upper()})")


def test_a_busy_port_stops_the_start_at_once_and_starts_nothing(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    started = []
    monkeypatch.setattr(runtime, "start_local_head", lambda *_: started.append("ray"))
    monkeypatch.setattr(start_checks, "RAY_UNMOVABLE_PORTS", ())
    for variable, port in _serve_ports().items():
        monkeypatch.setenv(variable, port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.http_port))
        holder.listen()
        clock = time.monotonic()
        with pytest.raises(start_checks.StartRefused) as refused:
            local_cluster.start(settings, deploy=lambda token: started.append("deploy"))
    assert str(refused.value).startswith(f"port {settings.http_port} (the HTTP front")
    assert time.monotonic() - clock < 1 and started == [], "refused before Ray or anything else starts"
    assert local_cluster.read_state(settings.home_path) is None


def test_ports_that_stay_closed_are_not_checked(tmp_path):
    settings = _settings(tmp_path, grpc_workers=0, http_front=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.grpc_port))
        holder.listen()
        assert _refusals(settings) == [], "gRPC off: its port is not modelpool's"


def test_two_settings_on_one_port_are_refused_naming_both(tmp_path):
    settings = _settings(tmp_path)
    settings = settings.model_copy(update={"grpc_port": settings.http_port})
    assert start_checks.clashes(start_checks.ports_a_start_binds(settings, {})) == [
        f"the HTTP front and the gRPC front are both set to port {settings.http_port}: "
        "move one with --grpc-port (or MODELPOOL_GRPC_PORT)"]


def test_serves_fixed_ports_follow_their_variables():
    uses = {use.what: use for use in start_checks.ports_a_start_binds(load_settings({}, {}),
                                                                      {"RAY_SERVE_HAPROXY_STATS_PORT": "18404"})}
    assert (uses["Serve's HAProxy stats page"].port, uses["Serve's HAProxy exporter"].port) == (18404, 9101)
    assert uses["Serve's HAProxy stats page"].change == "the variable RAY_SERVE_HAPROXY_STATS_PORT"
    assert uses["Ray's dashboard agent"].port == 52365 and uses["Ray's dashboard agent"].change is None


def test_several_busy_ports_of_another_cluster_make_one_line_saying_so():
    settings = load_settings({}, {})
    uses = {use.port: use for use in start_checks.ports_a_start_binds(settings, {})}
    line = start_checks.busy_ports_message([(uses[8000], "haproxy (pid 7)"), (uses[6379], "gcs_server (pid 8)"),
                                            (uses[52365], "ray::DashboardAgent (pid 9)")])
    assert line == ("ports 8000, 6379, 52365 are in use (by gcs_server (pid 8), haproxy (pid 7), ray::DashboardAgent "
                    "(pid 9)): another Ray or modelpool cluster runs on this machine; stop it (`modelpool stop` with "
                    "its MODELPOOL_HOME, or `ray stop`), or move modelpool's with --http-port, --ray-port")
    assert "\n" not in line
    assert start_checks.busy_ports_message([(uses[8000], None), (uses[8001], None)]) == (
        "ports 8000, 8001 are in use: move modelpool's with --http-port, --grpc-port")


def test_a_cluster_this_home_started_is_reported_running_only_while_it_listens(tmp_path):
    settings = _settings(tmp_path)
    with socket.socket() as gcs:
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = f"127.0.0.1:{gcs.getsockname()[1]}"
        state = {"address": address, "started_here": True, "url": "http://127.0.0.1:8000"}
        assert start_checks.refusals(settings, state, {}) == [
            f"modelpool is already running at http://127.0.0.1:8000 (Ray at {address}, home {tmp_path}): "
            "see `modelpool status`, or run `modelpool stop` first"]
        joined = {**state, "started_here": False}  # start --address again redeploys onto the cluster: allowed
        assert start_checks.running_here(joined, str(tmp_path)) is None
    assert start_checks.running_here(state, str(tmp_path)) is None, "a state file left by a stopped cluster"


def test_the_start_command_refuses_a_busy_port_in_one_line_within_two_seconds(tmp_path):
    """The real command, as a user runs it: one line on stderr, exit 1, and nothing started or written."""
    settings = _settings(tmp_path / "home")
    env = {**os.environ, **_serve_ports(), "MODELPOOL_HOME": settings.home, "RAY_ADDRESS": ""}
    env.update({f"MODELPOOL_{field.upper()}": str(getattr(settings, field))
                for field in ("http_port", "grpc_port", "serve_http_port", "grpc_ingress_port", "ray_port",
                              "metrics_port")})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.http_port))
        holder.listen()
        clock = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "modelpool.cli", "start"], env=env, capture_output=True,
                                text=True, timeout=60)
        took = time.monotonic() - clock
    assert result.returncode == 1, result.stderr
    assert took < 2, f"refused after {took:.1f}s"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelpool: "), result.stderr
    assert str(settings.http_port) in lines[0] and "--http-port" in lines[0]
    assert f"(pid {os.getpid()})" in lines[0], "the process holding the port is named"
    assert not (tmp_path / "home").exists(), "nothing written"
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"--gcs_server_port={settings.ray_port}" in (p.info["cmdline"] or [])], "no Ray started"


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
