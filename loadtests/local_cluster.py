"""A throwaway modelpool cluster for a benchmark: private home, free ports, always stopped."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from modelpool.cluster.net import free_port
from modelpool.cluster.paths import token_path

CLI = [sys.executable, "-m", "modelpool.cli"]


@dataclass(frozen=True)
class BenchCluster:
    url: str
    home: Path
    env: dict
    grpc_target: str = ""          # the V2 gRPC front (--grpc-port)
    grpc_ingress_target: str = ""  # Serve's own gRPC ingress behind it (routes by the `application` header)
    ray_address: str = ""          # for a driver that inspects the cluster (before any load)

    @property
    def token(self) -> str:
        return token_path(self.home).read_text().strip()


@contextmanager
def bench_cluster(extra_env: Optional[dict] = None) -> Iterator[BenchCluster]:
    """``modelpool start`` in a temp home on free ports; ``modelpool stop`` and cleanup whatever happens."""
    with tempfile.TemporaryDirectory(prefix="modelpool-bench-") as tmp:
        home = Path(tmp)
        port, ray_port, metrics_port, grpc_port, ingress_port, serve_http_port = (free_port() for _ in range(6))
        env = {**os.environ, "MODELPOOL_HOME": str(home), "MODELPOOL_HTTP_PORT": str(port),
               "MODELPOOL_RAY_PORT": str(ray_port), "MODELPOOL_METRICS_PORT": str(metrics_port),
               "MODELPOOL_GRPC_PORT": str(grpc_port), "MODELPOOL_GRPC_INGRESS_PORT": str(ingress_port),
               "MODELPOOL_SERVE_HTTP_PORT": str(serve_http_port),
               **(extra_env or {})}
        started = subprocess.run([*CLI, "start"], env=env, capture_output=True, text=True)
        try:
            if started.returncode != 0:
                raise RuntimeError(f"modelpool start failed:\n{started.stdout}\n{started.stderr}")
            yield BenchCluster(f"http://127.0.0.1:{port}", home, env, f"127.0.0.1:{grpc_port}",
                               f"127.0.0.1:{ingress_port}", f"127.0.0.1:{ray_port}")
        finally:
            subprocess.run([*CLI, "stop"], env=env, capture_output=True)
