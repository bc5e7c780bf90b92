"""Ray and Serve processes on this machine: ``ray start``, connecting, Serve with HAProxy, ``ray stop``.

A local Ray head is started with ``ray start`` (a separate process tree that outlives the CLI, like
``ray start`` itself). The HAProxy ingress is switched on through environment variables that every
Ray process inherits from the head. Stopping must also end the haproxy children, which ``ray stop``
can leave behind on their ports. The order of a start or stop, and the state file that remembers it,
are ``modelpool.cluster.local_cluster``'s.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psutil

from modelpool.cluster import paths, ray_loopback, tracing
from modelpool.cluster.front_directories import FRONT_DIRECTORY_PREFIX, remove_stale_front_directories
from modelpool.cluster.haproxy_loopback import BINARY_SETTING, write_wrapper
from modelpool.cluster.net import is_loopback_host

from modelpool.cluster.settings import Settings

logger = logging.getLogger(__name__)

# Serve's HAProxy ingress and throughput mode: a 10x lever on this machine (ARCHITECTURE.md).
SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray's token authentication (a token in ~/.ray/auth_token): nobody joins without it.
    "RAY_AUTH_MODE": "token",
    # A lost node is declared dead after 1 s x 5 missed health checks (Ray: 3 s x 5), so Serve moves its
    # replicas ~10 s sooner (BENCHMARKS.md, faults). Read by the GCS on the head; cluster configs set it too.
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
    # Serve's controller loop every 0.5 s instead of 0.1 s: its idle CPU drops from 13% to 5% of a core (BENCHMARKS.md,
    # issue 15); deploys and autoscaling decisions, which take seconds, start up to 0.4 s later
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}
NAMESPACE = "modelpool"


def prepare_environment() -> None:
    """Export the Serve and auth settings; Ray reads them once, when it is first imported."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


prepare_environment()  # before anything imports ray in this process


def ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


def ensure_ray_token(env: dict) -> None:
    """Make sure Ray's auth token exists before ``ray start --head`` (which refuses to make one).

    ``ray.init()`` generates a token for a new local cluster, ``ray start`` does not: on a fresh machine
    it fails with "token authentication is enabled but no token was found". Ray's own
    ``ray get-auth-token --generate`` writes one to ~/.ray/auth_token (and leaves an existing one alone).
    """
    if env.get("RAY_AUTH_MODE", "").lower() != "token" or env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    result = subprocess.run([ray_executable(), "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`ray get-auth-token --generate` failed:\n{result.stderr}")
    token_file = Path(env.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    if token_file.exists():
        token_file.chmod(0o600)  # Ray writes it world-readable; it is the key to the whole cluster


def start_local_head(settings: Settings) -> str:
    """Run ``ray start --head`` with the Serve environment, on 127.0.0.1 only; return the cluster address.

    Every process of the head listens on loopback (``ray_loopback``), and Serve's HAProxy keeps its stats page and
    exporter there too (``haproxy_loopback``). A cluster of several machines is started with ``ray start`` (as
    ``ray up`` does) and joined with ``--address``."""
    env = {**SERVE_ENV, **os.environ, **ray_loopback.head_environment(os.environ)}
    ensure_ray_token(env)
    if BINARY_SETTING not in env:  # someone who chose their own HAProxy binary chose its binds too
        env[BINARY_SETTING] = str(write_wrapper(paths.bin_dir(settings.home_path)))
    command = [
        ray_executable(), "start", "--head",
        f"--node-ip-address={ray_loopback.NODE_IP}",
        f"--port={settings.ray_port}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--metrics-export-port={settings.metrics_port}",
    ]
    if settings.num_cpus:
        command.append(f"--num-cpus={settings.num_cpus}")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`ray start` failed: {ray_start_cause(result.stdout + result.stderr)}\n"
                           f"{' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return f"{ray_loopback.NODE_IP}:{settings.ray_port}"  # Ray prints no join command for a loopback head


def ray_start_cause(output: str) -> str:
    """The line of ``ray start``'s output that says what went wrong: its last error line (a Python exception's
    ``SomethingError: ...``, or Ray's own ``Error: ...``), else its last line. A user reads one line; --debug shows
    the rest."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^([A-Za-z_.]*Error|Exception)\b:?", line)]
    return (errors or lines or ["no output"])[-1]


def connect(address: str) -> None:
    """Join the cluster at ``address`` as a driver; a loopback-only head is joined on loopback (``ray_loopback``)."""
    import ray

    if ray.is_initialized():
        return
    host, _, port = address.rpartition(":")
    ray_loopback.join_loopback_only(is_loopback_host(host.strip("[]")) and port.isdigit()
                                    and ray_loopback.listens_on_loopback_only(int(port)))
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)


def start_serve(settings: Settings, grpc_servicer_functions: Sequence[str] = ()) -> None:
    """Serve with the HAProxy ingress on its internal HTTP port (the front has --http-port); with gRPC on, Serve's
    own gRPC ingress too, on its internal port.

    ``grpc_servicer_functions`` are import paths (the caller's, so this layer imports no service code).
    """
    from ray import serve

    # with the front on --http-port, Serve's ingress listens on loopback only: the front passes it what it does not
    # send to a replica port itself
    http_options = {"host": "127.0.0.1" if settings.http_front else settings.http_host,
                    "port": settings.serve_http_port if settings.http_front else settings.http_port,
                    "keep_alive_timeout_s": settings.keep_alive_s}
    if settings.request_timeout_s:
        http_options["request_timeout_s"] = settings.request_timeout_s
    grpc_options = None
    if settings.grpc_enabled and grpc_servicer_functions:  # the gRPC front on --grpc-port forwards to this one
        # no reflection: the service lives under its protocol name but its messages under modelpool's
        # package (deployments/protos), so reflection could list it but not describe it
        grpc_options = {"port": settings.grpc_ingress_port, "grpc_servicer_functions": list(grpc_servicer_functions),
                        "enable_reflection": False}
    export = tracing.export_of(settings)
    tracing.publish(export)  # before any replica starts: each reads it when Serve sets up its tracing
    serve.start(proxy_location=settings.proxy_location, http_options=http_options, grpc_options=grpc_options,
                logging_config=settings.logging_config(), tracing_config=tracing.serve_tracing_config(export))


def haproxy_processes() -> list[psutil.Process]:
    """haproxy processes started by Serve or as modelpool's gRPC front (recognised by their config directories)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = " ".join(process.info.get("cmdline") or [])
            if (process.info.get("name") == "haproxy" or "haproxy" in cmdline.split(" ")[0]) and ("haproxy-serve" in cmdline
                                                                                     or FRONT_DIRECTORY_PREFIX in cmdline):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def ray_processes() -> list[psutil.Process]:
    """The Ray daemons running on this machine (what `ray stop` is expected to end). A zombie has ended and is not
    counted: `stop` does not wait for the machine's init to reap it (which this one does 1-2 s late)."""
    found = []
    for process in psutil.process_iter(["name", "status"]):
        if process.info.get("name") in ("raylet", "gcs_server") and process.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def gcs_server_pid(ray_port: int) -> int:
    """PID of the GCS server of the local head listening on ``ray_port`` (``--pidfile`` names it without --block).

    Matched by its port flag, not just its name: another Ray cluster on this machine has a GCS server too.
    """
    flag = f"--gcs_server_port={ray_port}"
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info.get("name") == "gcs_server" and flag in (process.info.get("cmdline") or []):
            return process.pid
    raise RuntimeError(f"no GCS server with {flag} on this machine: the local Ray head did not start or has "
                       "stopped (see /tmp/ray/session_latest/logs/gcs_server.err)")


def _exited(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_exited(processes: Sequence[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until each process has exited; return those still running after ``timeout_s``.

    A zombie has exited: waiting for it to be reaped is waiting for its parent. The haproxys outlive their Ray
    parents, so theirs is the machine's init, and in a container that init may reap late or never (this
    machine's reaps an orphan 1-2 s after it exits: psutil.wait_procs, which waits for that, took 1.5 s of each
    ``modelpool stop``).
    """
    deadline = time.monotonic() + timeout_s
    alive = list(processes)
    while True:
        alive = [process for process in alive if not _exited(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def kill_haproxy(timeout_s: float = 5.0, rounds: int = 3) -> int:
    """Stop Serve's and the gRPC fronts' haproxys, then remove the directories the fronts leave behind.

    Scans again after each round: one started while Ray was going down (Serve's reload, a front
    restarted with its replica) is not in the first list. Returns how many were stopped.
    """
    stopped = 0
    for _ in range(rounds):
        processes = haproxy_processes()
        if not processes:
            break
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        alive = wait_exited(processes, timeout_s)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        wait_exited(alive, timeout_s)
        stopped += len(processes)
    remove_stale_front_directories(min_age_s=0)
    return stopped


def ray_processes_to_stop() -> list[psutil.Process]:
    """Every process `ray stop` would end on this machine (matched by Ray's own list, as it matches them)."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.pid == os.getpid():
            continue
        name = process.info.get("name") or ""
        args = subprocess.list2cmdline(process.info.get("cmdline") or [])
        if any(keyword in (name if by_name else args) for keyword, by_name in RAY_PROCESSES):
            found.append(process)
    return found


def stop_local_head() -> None:
    """End every Ray process of this machine (``ray stop --force``), then the haproxys.

    The processes are SIGKILLed here first, all at once, and ``ray stop --force`` then sweeps up (and resets Ray's
    address file). On its own it kills in three rounds (raylets, the rest, the GCS) and waits after each until its
    processes are reaped, which the machine's init does for these orphans: on this one 1-2 s late, so ~7 s of each
    ``modelpool stop`` went to waiting (in a container whose init does not reap, a round's whole grace period).
    """
    killed = []
    for process in ray_processes_to_stop():
        try:
            process.kill()
            killed.append(process)
        except psutil.Error:  # gone already, or not ours to end (`ray stop` then reports it)
            pass
    wait_exited(killed, 5.0)
    subprocess.run([ray_executable(), "stop", "--force"], capture_output=True, text=True)
    kill_haproxy()

