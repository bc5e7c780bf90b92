"""``make test``: the whole suite in two pytest processes side by side, one exit status.

The cluster tests (tests/integration, then tests/multinode) run in order in the foreground: they share one
real Ray cluster, then start clusters of their own and need the machine to themselves. The unit tests need
no cluster, so they run beside them in a second process (a tenth of the suite's time, on the core the cluster
leaves idle between calls); their report follows the cluster tests'. Each process picks free ports from its
own slice of the range (``MODELPOOL_TEST_PORT_SHARD``, read by tests/conftest.py), so the two never choose the
same port. Arguments after ``--`` go to both pytest runs (``python -m tests.run_suite -- -x``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

CLUSTER_TESTS = ["tests/integration", "tests/multinode"]
UNIT_TESTS = ["tests/unit"]
SHARD_ENV = "MODELPOOL_TEST_PORT_SHARD"


def pytest_command(paths: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", *extra, *paths]


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as unit_log:
        unit = subprocess.Popen(pytest_command(UNIT_TESTS, extra), stdout=unit_log, stderr=subprocess.STDOUT,
                                env={**os.environ, SHARD_ENV: "1/2"})
        try:
            cluster_status = subprocess.call(pytest_command(CLUSTER_TESTS, extra),
                                             env={**os.environ, SHARD_ENV: "0/2"})
            unit_status = unit.wait()
        except BaseException:
            unit.terminate()
            unit.wait(timeout=30)
            raise
        unit_log.seek(0)
        print(f"\n===== tests/unit (run beside the cluster tests) =====\n{unit_log.read()}", flush=True)
    took = time.monotonic() - started
    print(f"make test: cluster tests exit {cluster_status}, unit tests exit {unit_status}, "
          f"{took / 60:.1f} min in all", flush=True)
    return cluster_status or unit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
