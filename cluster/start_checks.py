"""What ``modelpool start`` checks before it starts anything: a cluster already running from this home, and every
port a local start will bind.

Why up front: without them a start that cannot succeed fails a minute later in another program's words (Ray's
"already running" traceback, HAProxy's "cannot bind socket" inside a ``RayTaskError``). Each check is a bind or a
connect on this machine, and the process holding a busy port is looked up only when one is busy, so all of them
take milliseconds. Each refusal is one line that names the cause and the fix: the port, what it is for, who holds
it, and the setting that moves it.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import psutil

from modelpool.cluster.settings import Settings, env_name, flag_name

#: Ports Serve binds on a local head whatever modelpool's settings say: (the variable that moves it, its default,
#: what it is for). Serve reads its variables in each of its processes, so a value in start's environment reaches them.
RAY_FIXED_PORTS = (
    ("RAY_SERVE_HAPROXY_STATS_PORT", 8404, "Serve's HAProxy stats page"),
    ("RAY_SERVE_HAPROXY_METRICS_PORT", 9101, "Serve's HAProxy exporter"),
    ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", 8500, "Serve's fallback HTTP proxy"),
    ("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500, "Serve's fallback gRPC proxy"),
)
#: Ray's own, which ``ray start`` always takes on a head and no modelpool setting moves.
RAY_UNMOVABLE_PORTS = ((52365, "Ray's dashboard agent"), (10001, "Ray Client"))
#: Processes of a Ray or modelpool cluster: a port held by one of them is most likely another cluster's.
CLUSTER_PROCESSES = ("haproxy", "gcs_server", "raylet", "ray::")
LOOPBACK = "127.0.0.1"
_CONNECT_TIMEOUT_S = 0.3


class StartRefused(RuntimeError):
    """A start that cannot succeed, refused before anything started; the message is one line for the user."""


@dataclass(frozen=True)
class PortUse:
    """A port a local start binds: where, what for, and how the user moves it."""

    port: int
    host: str
    what: str
    change: Optional[str]  # the flag or variable that moves it; None: only freeing it helps


def _setting(field: str) -> str:
    return f"{flag_name(field)} (or {env_name(field)})"


def ports_a_start_binds(settings: Settings, environ: Mapping[str, str]) -> list[PortUse]:
    """Every port a local start binds on this machine, with the setting that moves each one."""
    http_what = "the HTTP front" if settings.http_front else "Serve's HTTP ingress"
    uses = [PortUse(settings.http_port, settings.http_host, http_what, _setting("http_port"))]
    if settings.http_front:
        uses.append(PortUse(settings.serve_http_port, LOOPBACK, "Serve's HTTP ingress behind the front",
                            _setting("serve_http_port")))
    if settings.grpc_enabled:
        uses.append(PortUse(settings.grpc_port, settings.http_host, "the gRPC front", _setting("grpc_port")))
        uses.append(PortUse(settings.grpc_ingress_port, settings.http_host, "Serve's gRPC ingress behind the front",
                            _setting("grpc_ingress_port")))
    uses.append(PortUse(settings.ray_port, LOOPBACK, "Ray's GCS", _setting("ray_port")))
    uses.append(PortUse(settings.metrics_port, LOOPBACK, "the Prometheus metrics", _setting("metrics_port")))
    for variable, default, what in RAY_FIXED_PORTS:
        value = environ.get(variable, "")
        uses.append(PortUse(int(value) if value.isdigit() else default, LOOPBACK, what, f"the variable {variable}"))
    uses += [PortUse(port, LOOPBACK, what, None) for port, what in RAY_UNMOVABLE_PORTS]
    return uses


def clashes(uses: Iterable[PortUse]) -> list[str]:
    """Settings that give two uses one port (the second start of a server on it would fail)."""
    first: dict[int, PortUse] = {}
    found = []
    for use in uses:
        if use.port in first:
            other = first[use.port]
            found.append(f"{other.what} and {use.what} are both set to port {use.port}: "
                         f"move one with {use.change or other.change}")
        else:
            first[use.port] = use
    return found


def is_free(host: str, port: int) -> bool:
    """True when a server could bind ``host:port`` now (SO_REUSEADDR as servers set it: TIME_WAIT is no conflict)."""
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def holders(ports: Iterable[int]) -> dict[int, str]:
    """Port -> "name (pid N)" of the process listening on it, where this user may see it."""
    wanted = set(ports)
    found: dict[int, str] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return found
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port in wanted:
            if connection.pid is None or connection.laddr.port in found:
                continue
            try:
                name = psutil.Process(connection.pid).name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                name = "a process"
            found[connection.laddr.port] = f"{name} (pid {connection.pid})"
    return found


def is_cluster_process(holder: Optional[str]) -> bool:
    return bool(holder) and any(holder.startswith(name) for name in CLUSTER_PROCESSES)  # type: ignore[union-attr]


def busy_port_message(use: PortUse, holder: Optional[str]) -> str:
    """The refusal for one busy port: the port, what it is for, who holds it, and the fix."""
    line = f"port {use.port} ({use.what}) " + (f"is held by {holder}" if holder else "is in use")
    if is_cluster_process(holder):
        line += ", likely another Ray or modelpool cluster (`modelpool status` with its MODELPOOL_HOME shows it)"
    if use.change:
        return f"{line}: choose another port with {use.change}"
    return f"{line}: stop that process first (Ray binds this port on every head)"


def busy_ports_message(busy: list[tuple[PortUse, Optional[str]]]) -> str:
    """The refusal for several busy ports, still one line: the ports, who holds them and the fix. Most often they
    are another cluster's (a second start with other homes but the default ports), and stopping it is the fix."""
    if len(busy) == 1:
        return busy_port_message(*busy[0])
    ports = ", ".join(str(use.port) for use, _ in busy)
    held_by = sorted({holder for _, holder in busy if holder})
    line = f"ports {ports} are in use" + (f" (by {', '.join(held_by)})" if held_by else "")
    flags = ", ".join(use.change.split(" ")[0] for use, _ in busy if use.change and use.change.startswith("--"))
    move = f"move modelpool's with {flags}" if flags else "free them"
    if any(is_cluster_process(holder) for _, holder in busy):
        return (f"{line}: another Ray or modelpool cluster runs on this machine; stop it (`modelpool stop` with its "
                f"MODELPOOL_HOME, or `ray stop`), or {move}")
    return f"{line}: {move}"


def busy_ports(uses: Iterable[PortUse]) -> list[tuple[PortUse, Optional[str]]]:
    """The busy ones among ``uses``, each with the process that holds it when it can be seen."""
    busy = [use for use in uses if not is_free(use.host, use.port)]
    known = holders(use.port for use in busy) if busy else {}
    return [(use, known.get(use.port)) for use in busy]


def listens(address: str) -> bool:
    """True when something accepts connections at ``host:port`` now."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def running_here(state: Optional[Mapping], home: str) -> Optional[str]:
    """The refusal when the cluster this home started (its state file) is still up, else None."""
    if not state or not state.get("started_here") or not state.get("address") or not listens(state["address"]):
        return None
    return (f"modelpool is already running at {state.get('url', '?')} (Ray at {state['address']}, home {home}): "
            "see `modelpool status`, or run `modelpool stop` first")


def refusals(settings: Settings, state: Optional[Mapping], environ: Mapping[str, str]) -> list[str]:
    """Why a local start from ``settings`` cannot succeed; empty when it can. A start joining ``--address`` binds
    nothing here and may run again (it redeploys management onto the running cluster)."""
    if settings.address:
        return []
    running = running_here(state, settings.home)
    if running:
        return [running]
    uses = ports_a_start_binds(settings, environ)
    clashing = clashes(uses)
    if clashing:
        return clashing
    busy = busy_ports(uses)
    return [busy_ports_message(busy)] if busy else []


def check(settings: Settings, state: Optional[Mapping], environ: Mapping[str, str]) -> None:
    """Raise :class:`StartRefused` with every refusal in one line."""
    found = refusals(settings, state, environ)
    if found:
        raise StartRefused("; ".join(found))
