"""Small network helpers shared by the CLI, the settings, the benchmarks and the tests."""
from __future__ import annotations

import ipaddress
import random
import socket

#: Ports handed out by this process: two calls never return the same one.
_HANDED_OUT: set[int] = set()
_LOW_PORT = 20000
#: (index, count): this process hands out ports only from its own slice of the range, so processes that pick ports
#: side by side (the test suite's parallel workers, tests/conftest.py) never choose the same one.
PORT_SHARD: tuple[int, int] = (0, 1)


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux; the IANA range elsewhere)."""
    try:
        low, high = (int(part) for part in open(path).read().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now and outside the kernel's ephemeral range (tests and benchmarks use it to avoid clashes).

    Why not ``bind(0)``: that hands out an ephemeral port, and between choosing it and the server binding it any
    process opening a connection or an unnamed listener (Ray starts dozens) may be given the same one by the
    kernel; a start then failed with "Address already in use" (seen once in a full test run). The kernel never
    picks a port below its ephemeral range on its own, so a free one there stays free for whoever was told it.
    """
    low, high = _shard_range(_LOW_PORT, ephemeral_range()[0])
    for _ in range(200):
        port = random.randrange(low, high) if high > low + 100 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            chosen = sock.getsockname()[1]
        _HANDED_OUT.add(chosen)
        return chosen
    raise OSError(f"no free port between {low} and {high} on {host}")


def _shard_range(low: int, high: int) -> tuple[int, int]:
    """This process's slice (``PORT_SHARD``) of the ports from ``low`` up to ``high``."""
    index, count = PORT_SHARD
    width = (high - low) // max(count, 1)
    return low + index * width, low + (index + 1) * width


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
