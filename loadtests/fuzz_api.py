"""Fuzz every endpoint of the management API's OpenAPI description with schemathesis, on a throwaway cluster.

Usage: ``python -m loadtests.fuzz_api [--max-examples 50] [--out results/DIR]`` (BENCHMARKS.md "Robustness")

Starts a cluster with :func:`loadtests.local_cluster.bench_cluster` (127.0.0.1, free ports, always
stopped), scores one small batch (so that there are real results and artifacts to read), then runs
``schemathesis run`` against its ``/openapi.json`` with the management token, checking that no
answer is a 5xx and that every answer matches the status codes and schema the description
declares. Half the reads name real models, versions, the batch, its rows and an artifact
(``loadtests/fuzz_hooks.py``); the rest, and every write, get schemathesis's random values. Reports (JUnit XML, the NDJSON event stream) go under
``results/fuzz-<UTC time>/``; the summary line with the number of generated cases is printed.
Exit code: schemathesis's (0 when every check passed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from loadtests.local_cluster import bench_cluster

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def real_values(url: str, token: str) -> dict:
    """Score a small iris_report batch to completion; the names the hooks use for real reads."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        started = session.post(f"{url}/batches", json={"service": "iris_report", "records": ROWS}, timeout=60)
        started.raise_for_status()
        execution_id = started.json()["executionId"]
        deadline = time.monotonic() + 120
        while session.get(f"{url}/batches/{execution_id}", timeout=30).json()["state"] != "Complete":
            if time.monotonic() > deadline:
                raise SystemExit(f"the seed batch {execution_id} did not complete")
            time.sleep(0.5)
        artifact = session.get(f"{url}/batches/{execution_id}/results/1/artifacts", timeout=30).json()[0]
    return {"models": ["iris", "diabetes", "iris_report"], "versions": ["1", "2"], "execution_id": execution_id,
            "index": 1, "artifact": artifact}


def fuzz(url: str, token: str, out: Path, max_examples: int, seconds: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "loadtests.fuzz_hooks",
           "MODELPOOL_FUZZ_REAL": json.dumps(real_values(url, token))}
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
               "--header", f"Authorization: Bearer {token}", "--checks", CHECKS,
               "--max-examples", str(max_examples), "--max-time", str(seconds), "--workers", "2",
               "--request-timeout", "130", "--seed", "6", "--report", "junit,ndjson", "--report-dir", str(out),
               "--output-sanitize", "true"]
    with open(out / "schemathesis.log", "w") as log:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        log.write(finished.stdout)
    print(finished.stdout[-6000:])
    return finished.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=50, help="cases per operation and phase")
    parser.add_argument("--seconds", type=int, default=600, help="time budget of the whole run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path("results") / f"fuzz-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    with bench_cluster({"MODELPOOL_REPLICA_NUM_CPUS": "0.1"}) as cluster:
        code = fuzz(cluster.url, cluster.token, out, args.max_examples, args.seconds)
    print(f"reports: {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
