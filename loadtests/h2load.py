"""Run h2load (nghttp2's load generator) over HTTP/1.1 or HTTP/2 and read throughput and latency percentiles.

One C load generator for every protocol in a comparison: REST over HTTP/1.1 and gRPC over HTTP/2
(a gRPC call is an HTTP/2 POST of a length-prefixed message), so the client costs the same on
each side of a ratio. h2load prints no percentiles, so its per-request log is read instead.
Debian's ``nghttp2-client`` package ships it (``require_h2load`` installs it when missing).
"""
from __future__ import annotations

import re
import shutil
import statistics
import struct
import subprocess
import tempfile
from pathlib import Path
from loadtests.wrk import LoadResult

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def require_h2load() -> str:
    path = shutil.which("h2load")
    if path is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], capture_output=True)
        path = shutil.which("h2load")
    if path is None:
        raise SystemExit("h2load is not installed: `apt-get install -y nghttp2-client` and run again")
    return path


def grpc_frame(message: bytes) -> bytes:
    """A gRPC request body: uncompressed flag, 4-byte big-endian length, the serialized message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def run_h2load(url: str, body: bytes, connections: int, seconds: float, *, headers: tuple[str, ...] = (),
               http1: bool = True, streams: int = 1, requests: int = 0) -> LoadResult:
    """``connections`` clients, each with ``streams`` requests in flight, for ``seconds`` (or, given ``requests``,
    until that many are answered); non-2xx count as errors."""
    with tempfile.TemporaryDirectory(prefix="modelpool-h2load-") as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log.tsv"
        data.write_bytes(body)
        length = ["-n", str(requests)] if requests else ["-D", f"{max(1, round(seconds))}s"]
        command = [require_h2load(), "-c", str(connections), "-m", str(streams), "-t", "1", *length,
                   "-d", str(data), "--log-file", str(log), "-T", "10s"]
        command += ["--h1"] if http1 else []
        for header in headers:
            command += ["-H", header]
        done = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60)
        return _result(done.stdout + done.stderr, log.read_text() if log.exists() else "")


def _result(out: str, log: str) -> LoadResult:
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if rate is None:
        raise RuntimeError(f"could not read h2load's summary:\n{out}")
    durations_us, errors = [], 0
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            status, duration = int(fields[1]), int(fields[2])
            durations_us.append(duration)
            errors += not 200 <= status < 300
    failed = re.search(r"requests: .* (\d+) failed, (\d+) errored", out)
    errors += sum(map(int, failed.groups())) if failed else 0
    return LoadResult(float(rate.group(1)), _percentile(durations_us, 50) / 1000, _percentile(durations_us, 99) / 1000,
                      errors)


def _percentile(values: list[int], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
