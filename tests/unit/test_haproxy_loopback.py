"""Serve's HAProxy with its stats page and exporter on loopback: the config rewrite against Ray's own template, and
the wrapper run for real in front of the real HAProxy binary."""
from __future__ import annotations

import subprocess
import time

import psutil
from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

from modelpool.cluster.haproxy_loopback import pin_host, real_binary, write_wrapper
from modelpool.cluster.net import free_port


def test_rays_template_has_the_two_hostless_binds_and_only_they_are_pinned():
    host_less = [line.strip() for line in HAPROXY_CONFIG_TEMPLATE.splitlines()
                 if line.strip().startswith(("bind *:", "bind :"))]
    assert host_less == ["bind :{{ config.metrics_port }}", "bind *:{{ config.stats_port }}"], \
        "Ray's template changed: check what it binds where before trusting the rewrite"
    rendered = ("frontend prometheus\n    bind :9101\n    mode http\n"
                "frontend http_frontend\n    bind 0.0.0.0:8000\n"
                "frontend grpc\n    bind 127.0.0.1:9000 proto h2\n"
                "listen stats\n  bind *:8404\n  stats enable\n")
    assert pin_host(rendered, "127.0.0.1") == (
        "frontend prometheus\n    bind 127.0.0.1:9101\n    mode http\n"
        "frontend http_frontend\n    bind 0.0.0.0:8000\n"  # asked for explicitly: kept
        "frontend grpc\n    bind 127.0.0.1:9000 proto h2\n"
        "listen stats\n  bind 127.0.0.1:8404\n  stats enable\n")
    assert "bind [::1]:8404" in pin_host("listen stats\n  bind *:8404\n", "::1")


def test_the_wrapper_starts_the_real_haproxy_as_itself_listening_on_loopback_only(tmp_path):
    stats, metrics = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"global\n    maxconn 64\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
                      f"    timeout server 5s\nfrontend prometheus\n    bind :{metrics}\n"
                      f"    http-request use-service prometheus-exporter\nlisten stats\n  bind *:{stats}\n"
                      f"  stats enable\n  stats uri /stats\n")
    wrapper = write_wrapper(tmp_path / "bin")
    process = subprocess.Popen([str(wrapper), "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        listening: set = set()
        deadline = time.monotonic() + 15
        while len(listening) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(process.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN}
        assert psutil.Process(process.pid).exe() == real_binary(), "the wrapper became HAProxy (same pid, as Serve tracks)"
        assert listening == {("127.0.0.1", stats), ("127.0.0.1", metrics)}, process.stderr.read() if process.poll() else listening
        assert f"bind 127.0.0.1:{stats}" in config.read_text()
    finally:
        process.kill()
        process.wait(10)
