"""Batch scoring benchmark: N iris rows from a Parquet file, scored with results written to storage.

Baseline, measured in the same run on the same machine: a single-process script doing the same
read -> predict -> write with pyarrow and scikit-learn. modelpool: ``POST /batches`` with the same
Parquet as ``input_uri`` in the cluster's object store, timed from the request to ``Complete``
(input conversion, scheduling, model load per worker, scoring, Parquet parts).

Usage: ``python -m loadtests.bench_batch [--rows 1000000 --rows 10000000] [--parallel 2]``
On a bigger cluster, raise ``--parallel`` (and give the cluster more CPUs): partitions are scored
by independent Ray tasks, so throughput grows with workers until storage is the limit.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from modelpool.cluster import runtime  # noqa: F401 (Ray's environment before ray is imported)
from modelpool.cluster.net import free_port
from modelpool.cluster.paths import token_path
from loadtests.report import publish

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def make_input(path: Path, rows: int) -> None:
    from sklearn.datasets import load_iris

    base = load_iris().data
    rng = np.random.default_rng(0)
    data = base[rng.integers(0, len(base), rows)] + rng.normal(0, 0.05, (rows, 4))
    pq.write_table(pa.table({name: data[:, i] for i, name in enumerate(COLUMNS)}), path)


def plain_script(model_file: Path, source: Path, out: Path) -> float:
    """The single-process baseline: read, predict, write."""
    import joblib

    model = joblib.load(model_file)
    started = time.perf_counter()
    table = pq.read_table(source)
    matrix = np.column_stack([table.column(name).to_numpy() for name in COLUMNS])
    predictions = model.predict(matrix)
    pq.write_table(pa.table({"index": np.arange(len(predictions)), "predict": predictions}), out)
    return time.perf_counter() - started


def modelpool_batch(base: str, token: str, store, source: Path, rows: int, parallel: int) -> tuple[float, dict]:
    """Seconds from POST to Complete, and the job's own phase timestamps (relative to its creation)."""
    key = f"inputs/{source.name}"
    store.upload_file(source, key)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    answer = session.post(f"{base}/batches", json={"service": "iris", "version": "1", "input_uri": f"objects://{key}",
                                                    "parallel_count": parallel})
    answer.raise_for_status()
    url = f"{base}/batches/{answer.json()['executionId']}"
    while True:
        state = session.get(url).json()
        if state["state"] in ("Complete", "Failed", "Cancelled"):
            break
        time.sleep(0.02)
    finished = time.perf_counter()
    if state["state"] != "Complete" or state["completedItems"] != rows:
        raise RuntimeError(f"batch ended {state}")
    created = state["createdAt"]
    phases = {"start": state["coordinatorStartedAt"] - created,
              "input": state.get("inputReadyAt", state["coordinatorStartedAt"]) - state["coordinatorStartedAt"],
              "score": state["finishedAt"] - state.get("inputReadyAt", state["coordinatorStartedAt"])}
    return finished - started, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="results/bench_batch.md")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000]
    with tempfile.TemporaryDirectory(prefix="modelpool-bench-") as tmp:
        home = Path(tmp)
        from modelpool.deployments.archive import unpack_archive
        from modelpool.deployments.examples import build_examples

        build_examples(home / "model_store")
        archive = unpack_archive(home / "model_store" / "iris-1.zip", home / "bench-cache")
        model_file = archive.model_dir / archive.manifest.model_file
        port, ray_port = free_port(), free_port()
        env = {**os.environ, "MODELPOOL_HOME": str(home), "MODELPOOL_HTTP_PORT": str(port),
               "MODELPOOL_RAY_PORT": str(ray_port), "MODELPOOL_WORKERS": "0"}  # models in the generic pool: CPUs for batch tasks
        cli = [sys.executable, "-m", "modelpool.cli"]
        started = subprocess.run([*cli, "start"], env=env, capture_output=True, text=True)
        rows_out = []
        try:
            if started.returncode != 0:
                raise RuntimeError(f"modelpool start failed:\n{started.stdout}\n{started.stderr}")
            from modelpool.cluster.object_store import object_store_from_settings

            store = object_store_from_settings(str(home / "objects"))
            token = token_path(home).read_text().strip()
            warm_up = home / "warm-up.parquet"  # a serving cluster is warm: workers hold the model
            make_input(warm_up, 4_000)  # 4 partitions: every worker loads the model
            modelpool_batch(f"http://127.0.0.1:{port}", token, store, warm_up, 4_000, args.parallel)
            for rows in sizes:
                source = home / f"iris-{rows}.parquet"
                make_input(source, rows)
                script_s = plain_script(model_file, source, home / "plain-out.parquet")
                total_s, phases = modelpool_batch(f"http://127.0.0.1:{port}", token, store, source, rows, args.parallel)
                rows_out.append((rows, script_s, total_s, phases))
                print(f"  {rows:>10,} rows: script {rows / script_s:,.0f} rows/s; modelpool {rows / total_s:,.0f} rows/s "
                      f"end to end ({total_s:.2f} s; {phases})", flush=True)
        finally:
            subprocess.run([*cli, "stop"], env=env, capture_output=True)
    lines = [f"iris LogisticRegression, {os.cpu_count()} cores, parallel_count={args.parallel}, local object store", "",
             "| rows | single-process script | modelpool end to end | ratio | job phases: accepted -> scheduled / input rewritten / scored |",
             "| --- | --- | --- | --- | --- |"]
    for rows, script_s, total_s, phases in rows_out:
        lines.append(f"| {rows:,} | {rows / script_s:,.0f} rows/s ({script_s:.2f} s) | {rows / total_s:,.0f} rows/s ({total_s:.2f} s) | "
                     f"{script_s / total_s:.2f}x | {phases['start']:.2f} s / {phases['input']:.2f} s / {phases['score']:.2f} s |")
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
