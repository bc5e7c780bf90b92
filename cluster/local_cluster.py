"""The life of the cluster ``modelpool start`` brings up: start (or join), stop, and the state file.

``start`` runs a Ray head (or joins ``--address``), starts Serve, hands the management token to
the caller's ``deploy`` and returns once the HTTP ingress answers; whatever fails on the way is
stopped again, so a failed start leaves nothing running. What gets deployed is the caller's
(the CLI's): this layer knows Ray and Serve, not the applications above it. The state file
(``HOME/cluster.json``) records what was started, so ``stop`` ends exactly that (a joined cluster
keeps running, only Serve goes) and ``status`` and the remote commands find the cluster.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

from modelpool.cluster import paths, pidfile, runtime, start_checks
from modelpool.cluster.settings import Settings, check_exposure

#: Lines for the person starting the cluster (progress); what went wrong is raised, for the caller's one line.
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default ``Say``: a library caller gets no output."""


# ------------------------------------------------------------------------------------------ state file
def read_state(home: Path) -> Optional[dict]:
    """What ``modelpool start`` recorded in ``home``, None when nothing runs from there."""
    try:
        return json.loads(paths.state_path(home).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_state(home: Path, state: dict) -> None:
    path = paths.state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ token
def fit_to_machine(settings: Settings, cores: Optional[int] = None) -> Settings:
    """On a cluster started here (one machine), at most one replica per model version per core beyond the first.

    Why: a replica under load keeps a core busy, and the front, the clients and Ray need the rest. On the
    2-core machine of BENCHMARKS.md, iris at c=64 answered 1,514 req/s with one replica and 1,065 with two
    (pinned, same cluster, same hour), and the autoscaler moved between one and two under steady load. TorchServe
    sizes its default workers by the machine's CPUs too. ``--max-workers`` given (flag or environment), or a
    joined cluster (``--address``), where replicas can go to other machines: unchanged.
    """
    if settings.address or "max_workers" in settings.model_fields_set:
        return settings
    cores = cores or int(settings.num_cpus or 0) or len(os.sched_getaffinity(0))
    cap = max(settings.workers, min(settings.max_workers, cores - 1))
    return settings if cap == settings.max_workers else settings.model_copy(update={"max_workers": cap})


def management_token(settings: Settings) -> str:
    """The configured token, else the one saved in HOME, else a new one saved there (mode 0600)."""
    if settings.management_token:
        return settings.management_token
    path = settings.token_path
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    return token


# ------------------------------------------------------------------------------------------ start and stop
def prepare_home(settings: Settings, block: bool = False) -> None:
    """Refuse an unsafe exposure, an unusable ``--pidfile``, a running cluster or a busy port before anything
    exists (a refused start leaves nothing behind), then make the home folder and the model store.
    ``block``: ``start --block``."""
    check_exposure(settings)
    pidfile.check_pidfile(settings.pidfile, block=block, joined=bool(settings.address))
    check_can_start(settings)
    settings.home_path.mkdir(parents=True, exist_ok=True)
    settings.model_store_path.mkdir(parents=True, exist_ok=True)


def wait_until_ready(url: str, timeout_s: float) -> None:
    """Wait until the ingress answers /v2/health/ready with 200 (HAProxy learns routes a bit after Serve)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/v2/health/ready not ready after {timeout_s:.0f}s ({last})")


def check_can_start(settings: Settings) -> None:
    """Refuse at once, in one line, a start that cannot succeed (``start_checks``): this home's cluster already
    runs, or a port the start binds is taken. Nothing has started yet, so nothing is left behind."""
    start_checks.check(settings, read_state(settings.home_path), os.environ)


def start(settings: Settings, deploy: Callable[[str], None], grpc_servicer_functions: Sequence[str] = (),
          progress: Say = _quiet, block: bool = False) -> None:
    """Start a local Ray head (or join ``settings.address``) and Serve, ``deploy(token)``, wait until served,
    then write ``--pidfile``.

    ``grpc_servicer_functions`` are import paths for Serve's gRPC ingress (the caller's, like ``deploy``).
    ``block``: the caller stays in the foreground and stops the cluster on SIGTERM (``start --block``), so the
    pidfile names the caller's process; otherwise the local head's GCS server.
    On any failure, what was started is stopped again and the error raised.
    """
    started_here = not settings.address
    # again here for callers that skip prepare_home: a refused pidfile must stop the start before Ray does
    pidfile.check_pidfile(settings.pidfile, block=block, joined=not started_here)
    check_can_start(settings)
    if started_here:
        progress(f"starting a local Ray head on 127.0.0.1:{settings.ray_port} ...")
        address = runtime.start_local_head(settings)
    else:
        address = settings.address
    write_state(settings.home_path, {"address": address, "started_here": started_here, "url": settings.http_url})
    try:
        token = management_token(settings)
        runtime.connect(address)
        runtime.start_serve(settings, grpc_servicer_functions)
        deploy(token)
        wait_until_ready(settings.http_url, settings.start_timeout_s)
        if block:
            catch_stop_signals()
        if settings.pidfile:
            holder = os.getpid() if block else runtime.gcs_server_pid(settings.ray_port)
            written = pidfile.write_pidfile(settings.pidfile, holder)
            # recorded, so `stop` removes it without being given --pidfile again
            write_state(settings.home_path, {**(read_state(settings.home_path) or {}), "pidfile": str(written),
                                             "pid": holder})
    except BaseException:
        progress("start failed; stopping what was started")  # the error itself is the caller's one line
        stop(settings)
        raise


def stop(settings: Settings) -> None:
    """End what ``start`` started from this home: the local Ray head (haproxy included), or Serve alone
    on a joined cluster, and remove its pidfile. Without a state file, ``--address`` says which it was, and
    ``--pidfile`` which file to remove (once the process it names is gone)."""
    state = read_state(settings.home_path) or {"started_here": not settings.address, "address": settings.address}
    if state.get("started_here", True):
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        runtime.stop_local_head()
    else:
        runtime.connect(state["address"])
        from ray import serve

        serve.shutdown()
    recorded = state.get("pidfile") or settings.pidfile
    if recorded:
        pidfile.remove_pidfile(recorded, state.get("pid"))
    paths.state_path(settings.home_path).unlink(missing_ok=True)


_stop_requested = threading.Event()


def catch_stop_signals() -> None:
    """From now on SIGINT and SIGTERM ask this process to stop the cluster rather than kill it.

    ``start --block`` installs this before it writes the pidfile: a supervisor that reads the file and
    sends SIGTERM at once must get a clean stop, not a dead process and a cluster left running.
    """
    def handler(*_: object) -> None:
        _stop_requested.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (``start --block``: a container's foreground process)."""
    catch_stop_signals()
    while not _stop_requested.wait(0.5):
        pass
