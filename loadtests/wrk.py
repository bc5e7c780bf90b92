"""Run wrk against a URL with a JSON POST body and parse req/s and latency percentiles."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: `apt-get install -y wrk` (Debian) and run again")
    return path


# wrk's own summary is human-formatted; a done() hook prints exact numbers (latency in microseconds).
_SCRIPT = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MODELPOOL_WRK %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def run_wrk(url: str, body: str, connections: int, seconds: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(_SCRIPT % body)
        out = subprocess.run([require_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                              "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"MODELPOOL_WRK (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"could not read wrk's summary:\n{out}")
    requests, duration_us, p50_us, p99_us, errors = map(int, match.groups())
    return LoadResult(requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, errors)
