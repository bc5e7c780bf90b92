"""The shipped locustfile runs headless against the cluster and every request succeeds."""
import csv
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_locustfile_runs_headless_without_failures(cluster, tmp_path):
    prefix = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "-u", "8", "-r", "8",
         "-t", "6s", "--host", cluster.url, "--csv", str(prefix), "--only-summary"],
        capture_output=True, text=True, timeout=120,
    )
    rows = {row["Name"]: row for row in csv.DictReader(open(f"{prefix}_stats.csv"))}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 50, result.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, result.stderr[-2000:]
    assert int(rows["/v2/models/iris/infer"]["Request Count"]) > 0
    assert int(rows["/v2/models/diabetes/predict"]["Request Count"]) > 0
