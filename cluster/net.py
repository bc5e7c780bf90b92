"""Small network helpers shared by the CLI, the settings, the benchmarks and the tests."""
from __future__ import annotations

import ipaddress
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (tests and benchmarks use it to avoid clashes)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_loopback_host(host: str) -> bool:
    """True when a server bound to ``host`` is reachable from this machine only.

    ``localhost``, 127.0.0.0/8, ``::1`` and IPv4-mapped loopback count; ``0.0.0.0``, ``::`` and
    any other address do not. Another name counts only if every address it resolves to is
    loopback, and a name that does not resolve does not count (binding it would fail anyway).
    """
    host = host.strip().strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        addresses = [host]
    except ValueError:
        try:
            addresses = [info[4][0] for info in socket.getaddrinfo(host, None)]
        except (OSError, UnicodeError):
            return False
    return bool(addresses) and all(_is_loopback_address(address) for address in addresses)


def _is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
