"""The cluster's processes for the soak run: which they are (a stable role each), their RSS and open file
descriptors over time, and the replicas it kills.

A cluster's processes are found from its GCS server (the one whose ``--gcs_server_port`` is the cluster's Ray
port): its ``--log_dir`` names the Ray session, every Ray daemon of that session has the session's directory on
its command line (raylet, dashboard, monitors, the client server), and everything else is a descendant of one of
them (workers and actors are the raylet's children, each haproxy a child of the actor that runs it). So another
Ray cluster on the machine, or the soak's own process, is never sampled and never killed.

Roles come from the process title Ray sets (``ray::ServeReplica:model:iris:1:iris_v1``, ``ray::BatchWorker``; a
``.method`` suffix while a method runs is dropped) or the executable (``raylet``, ``gcs_server``, ``haproxy:serve``
for Serve's ingress, ``haproxy:front`` for modelpool's front). A key is the role and an ordinal in order of first
sight (``ServeReplica:model:iris:1:iris_v1#2``): stable over the run, new for a replaced process, and new when
Ray turns an idle worker (``IDLE``) into an actor.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import psutil

from loadtests.soak_report import Sample

_METHOD = re.compile(r"\.[A-Za-z_]\w*$")
_DAEMONS = (("dashboard/dashboard.py", "dashboard"), ("log_monitor.py", "log_monitor"),
            ("autoscaler/_private/monitor.py", "monitor"), ("ray.util.client.server", "client_server"),
            ("dashboard/agent.py", "dashboard_agent"), ("runtime_env/agent", "runtime_env_agent"))


def role_of(cmdline: list[str], name: str = "") -> str:
    """A process's role from its command line (Ray's title in argv[0]) or its name."""
    first = (cmdline[0] if cmdline else name or "?").strip()
    if first.startswith("ray::"):
        return _METHOD.sub("", first[len("ray::"):].split(" ")[0]) or "ray-worker"
    joined = " ".join(cmdline)
    executable = os.path.basename(first.split(" ")[0])
    if executable == "haproxy":
        return "haproxy:front" if "modelpool-front-" in joined else "haproxy:serve" if "haproxy-serve" in joined \
            else "haproxy"
    for marker, role in _DAEMONS:
        if marker in joined:
            return role
    return executable


def replica_role_prefix(app: str) -> str:
    """Every replica of Serve application ``app`` has a role starting so (``ServeReplica:{app}:{deployment}``)."""
    return f"ServeReplica:{app}:"


class Keys:
    """(pid, role) -> ``role#n``, n counting the processes of that role in order of first sight."""

    def __init__(self) -> None:
        self._keys: dict[tuple[int, str], str] = {}
        self._counts: dict[str, int] = {}

    def key(self, pid: int, role: str) -> str:
        if (pid, role) not in self._keys:
            self._counts[role] = self._counts.get(role, 0) + 1
            self._keys[(pid, role)] = f"{role}#{self._counts[role]}"
        return self._keys[(pid, role)]


def session_dir(ray_port: int) -> str:
    """The Ray session directory of the cluster whose GCS listens on ``ray_port``."""
    flag = f"--gcs_server_port={ray_port}"
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if process.info.get("name") == "gcs_server" and flag in cmdline:
            for part in cmdline:
                if part.startswith("--log_dir="):
                    return str(Path(part.split("=", 1)[1]).parent)
    raise RuntimeError(f"no GCS server with {flag} on this machine: is the cluster running here?")


def cluster_processes(session: str) -> list[psutil.Process]:
    """Every process of the Ray session ``session``: its daemons and their descendants."""
    roots = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if session in " ".join(process.info.get("cmdline") or []):
                roots.append(process)
        except psutil.Error:
            continue
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update((child.pid, child) for child in root.children(recursive=True))
        except psutil.Error:
            continue
    return list(found.values())


def replicas(processes: list[psutil.Process], app: str) -> list[psutil.Process]:
    """The processes of ``app``'s replicas, oldest first."""
    prefix, found = replica_role_prefix(app), []
    for process in processes:
        try:
            if role_of(process.cmdline(), process.name()).startswith(prefix):
                found.append((process.create_time(), process.pid, process))
        except psutil.Error:
            continue
    return [process for _, _, process in sorted(found)]


def kill_replica(session: str, app: str) -> Optional[tuple[int, str, int]]:
    """SIGKILL the oldest replica of ``app``: (pid, role, replicas before), or None when it has none running."""
    running = replicas(cluster_processes(session), app)
    if not running:
        return None
    victim = running[0]
    role = role_of(victim.cmdline(), victim.name())
    os.kill(victim.pid, signal.SIGKILL)
    return victim.pid, role, len(running)


def wait_replaced(session: str, app: str, killed_pid: int, count: Callable[[], int], timeout_s: float,
                  ) -> Optional[float]:
    """Seconds until ``app`` has ``count()`` replica processes again without ``killed_pid`` (asked each time: a
    scale-down meanwhile lowers it); None past the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        alive = [p for p in replicas(cluster_processes(session), app) if p.pid != killed_pid]
        if len(alive) >= count():
            return time.monotonic() - started
        time.sleep(0.5)
    return None


class Sampler(threading.Thread):
    """Every ``every_s``: RSS and open file descriptors of each process of the session, as :class:`Sample` s."""

    def __init__(self, session: str, clock: Callable[[], float], every_s: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.session, self.clock, self.every_s = session, clock, every_s
        self.samples: list[Sample] = []
        self.keys = Keys()
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.sample_once()
            if self._halt.wait(self.every_s):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def sample_once(self) -> None:
        at = self.clock()
        for process in cluster_processes(self.session):
            try:
                with process.oneshot():
                    role = role_of(process.cmdline(), process.name())
                    rss, fds = process.memory_info().rss, process.num_fds()
            except psutil.Error:  # ended while sampled, or not ours to read
                self.errors += 1
                continue
            self.samples.append(Sample(at, self.keys.key(process.pid, role), process.pid, rss, fds))
