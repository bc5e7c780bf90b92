"""Time HTTP/1.1 exchanges on the loopback wire, apart from the client that sent them.

A client on the same two cores as the server (the overload benchmark's probe) adds its own waits to what it
times: a Python thread woken by an answer still needs a core and the interpreter, and under load both are busy.
``tcpdump`` stamps each segment as the kernel passes it over ``lo``, so the time from a request's first segment
to its answer's first segment is the server's share (HAProxy's queue, poll and work included), and the rest of
what the client saw is the client's. The client sends from its own loopback address (``PROBE_SOURCE``; all of
127.0.0.0/8 is loopback on Linux), so the capture filter picks its connections out of wrk's thousands in the
kernel, and only segments that carry data are kept (at most ``SNAP_BYTES`` of each).

Needs tcpdump and the right to capture (root or CAP_NET_RAW); tests/ensure_system_packages.sh installs it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import dpkt
from requests.adapters import HTTPAdapter

PROBE_SOURCE = "127.0.0.2"
SNAP_BYTES = 200  # link, IP and TCP headers with options, and the status line's first 12 bytes
_PAYLOAD_ONLY = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0"


@dataclass(frozen=True)
class Exchange:
    """One request and its answer as the wire saw them: ``sent`` on time.monotonic()'s clock."""

    sent: float
    status: int  # 0: the status line's code was unreadable
    ms: float


def pair_exchanges(segments: Iterable[tuple[float, int, int, bytes]], server_port: int) -> list[Exchange]:
    """Each request's first segment paired with its answer's first segment, per connection.

    ``segments`` are (timestamp, source port, destination port, payload) in capture order. A connection carries
    one request at a time (HTTP/1.1 keep-alive without pipelining): a segment that starts with a method starts an
    exchange, one that starts with a status line ends it, and the segments between (bodies) are skipped. A
    request whose answer the capture missed is dropped when its connection's next request starts, so it never
    pairs with a later answer (a client port is used again by later connections).
    """
    waiting: dict[int, float] = {}
    exchanges = []
    for stamp, source_port, destination_port, payload in segments:
        if destination_port == server_port and payload.split(b" ", 1)[0] in _METHODS:
            waiting[source_port] = stamp
        elif source_port == server_port and destination_port in waiting and payload.startswith(b"HTTP/1."):
            sent = waiting.pop(destination_port)
            exchanges.append(Exchange(sent, _status(payload), (stamp - sent) * 1000))
    return exchanges


_METHODS = {b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"}


def _status(payload: bytes) -> int:
    code = payload[9:12]
    return int(code) if code.isdigit() else 0


def _segments(pcap: Path) -> Iterator[tuple[float, int, int, bytes]]:
    with pcap.open("rb") as file:
        for stamp, frame in dpkt.pcap.Reader(file):
            packet = dpkt.ethernet.Ethernet(frame).data
            if isinstance(packet, dpkt.ip.IP) and isinstance(packet.data, dpkt.tcp.TCP):
                yield stamp, packet.data.sport, packet.data.dport, bytes(packet.data.data)


class FromAddress(HTTPAdapter):
    """A requests adapter whose connections leave from ``host`` (a port of the kernel's choosing)."""

    def __init__(self, host: str) -> None:
        self._source = (host, 0)
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)


class LoopbackCapture:
    """tcpdump on ``lo`` for the data segments between ``client_host`` and ``server_port``, while in the block;
    ``exchanges()`` afterwards."""

    def __init__(self, server_port: int, client_host: str = PROBE_SOURCE) -> None:
        self.server_port = server_port
        self.client_host = client_host
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._process: Optional[subprocess.Popen] = None
        self._exchanges: list[Exchange] = []
        self.dropped = 0  # segments the kernel dropped before tcpdump read them (tcpdump's own count)

    def __enter__(self) -> "LoopbackCapture":
        tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
        if not Path(tcpdump).exists():
            raise RuntimeError("tcpdump is needed to time the wire: apt-get install tcpdump "
                               "(tests/ensure_system_packages.sh does)")
        self._tmp = tempfile.TemporaryDirectory(prefix="modelpool-wire-")
        pcap = Path(self._tmp.name) / "wire.pcap"
        rule = f"host {self.client_host} and tcp port {self.server_port} and {_PAYLOAD_ONLY}"
        # --immediate-mode and -U: each segment leaves the kernel's ring and reaches the file at once (by default
        # libpcap hands them over a block at a time, and a capture stopped mid-block loses the last ones)
        self._process = subprocess.Popen([tcpdump, "-i", "lo", "-n", "--immediate-mode", "-U", "-s", str(SNAP_BYTES), "-w", str(pcap),
                                          rule], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self._process.stderr.readline()  # "listening on lo ...": the filter is in place from here on
        if "listening" not in line:
            self._process.kill()
            self._process.wait()
            self._tmp.cleanup()
            raise RuntimeError(f"tcpdump did not start: {line.strip()} {self._process.stderr.read().strip()}")
        return self

    def __exit__(self, *_: object) -> None:
        assert self._process is not None and self._tmp is not None
        time.sleep(0.1)  # the last answers' segments are written
        self._process.terminate()
        _, summary = self._process.communicate(timeout=15)
        dropped = re.search(r"(\d+) packets dropped by kernel", summary)
        self.dropped = int(dropped.group(1)) if dropped else 0
        # pcap stamps are wall-clock; the probe's are time.monotonic(): one offset, read now, maps them
        offset = time.time() - time.monotonic()
        try:
            pcap = Path(self._tmp.name) / "wire.pcap"
            wall = pair_exchanges(_segments(pcap), self.server_port)
            self._exchanges = [Exchange(e.sent - offset, e.status, e.ms) for e in wall]
        finally:
            self._tmp.cleanup()

    def exchanges(self) -> list[Exchange]:
        return list(self._exchanges)

    def between(self, start: float, end: float) -> list[Exchange]:
        return [e for e in self._exchanges if start <= e.sent < end]
