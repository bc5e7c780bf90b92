"""The shipped locustfiles run headless against the cluster: every request succeeds, every request name
shows up, and the management mix leaves the cluster's models as it found them."""
import csv
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

pytestmark = pytest.mark.integration

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"


def run_locust(cluster, tmp_path: Path, locustfile: str, users: int, seconds: int, stop_timeout: int = 0,
               extra_env: Optional[dict] = None) -> dict[str, dict]:
    """One short headless run that must end clean; its stats rows by name (``Aggregated`` holds the totals)."""
    prefix = tmp_path / Path(locustfile).stem
    env = {**cluster.env, "MODELPOOL_TOKEN": cluster.token, **(extra_env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOADTESTS / locustfile), "--headless", "-u", str(users),
         "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", str(stop_timeout), "--host", cluster.url,
         "--csv", str(prefix), "--only-summary"],
        capture_output=True, text=True, timeout=seconds + stop_timeout + 90, env=env,
    )
    with open(f"{prefix}_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    failures = Path(f"{prefix}_failures.csv").read_text()
    exceptions = Path(f"{prefix}_exceptions.csv").read_text()
    total = rows["Aggregated"]
    details = f"failures:\n{failures}\nexceptions:\n{exceptions}\nlocust:\n{result.stderr[-3000:]}"
    assert int(total["Failure Count"]) == 0, details
    assert exceptions.count("\n") == 1, details  # the header only
    assert result.returncode == 0, details
    return rows


def model_names(admin, url: str) -> set:
    names, token = set(), None
    while True:
        page = admin.get(f"{url}/models", params={"limit": 1000, "next_page_token": token})
        page.raise_for_status()
        names |= {m["modelName"] for m in page.json()["models"]}
        token = page.json()["nextPageToken"]
        if not token:
            return names


def test_locustfile_runs_headless_without_failures(cluster, tmp_path):
    rows = run_locust(cluster, tmp_path, "locustfile.py", users=8, seconds=3)
    assert int(rows["Aggregated"]["Request Count"]) > 50
    for name in ("/v2/models/iris/infer", "/v2/models/iris/versions/1/infer", "/v2/models/iris_report/infer",
                 "/v2/models/diabetes/infer", "/v2/models/diabetes/predict"):
        assert int(rows[name]["Request Count"]) > 0, name


def test_management_locustfile_mixes_calls_and_leaves_no_model_behind(cluster, admin, tmp_path):
    before = model_names(admin, cluster.url)
    rows = run_locust(cluster, tmp_path, "locust_management.py", users=2, seconds=4, stop_timeout=30,
                      extra_env={"MODELPOOL_LOCUST_WAIT_S": "0.1"})
    for name in ("/models [register]", "/models/{name} [describe]", "/models?limit [list]",
                 "/models?next_page_token [list next page]", "/models/{name} [scale]",
                 "/models/{name} [unregister]", "/models/{name} [describe unregistered: 404]"):
        assert int(rows.get(name, {}).get("Request Count", 0)) > 0, f"no {name!r} in {sorted(rows)}"
    # each user registered one model at least and unregistered every one it registered
    assert int(rows["/models/{name} [unregister]"]["Request Count"]) >= 2
    assert int(rows["/models [register]"]["Request Count"]) == int(rows["/models/{name} [unregister]"]["Request Count"])
    assert model_names(admin, cluster.url) == before


def test_batch_locustfile_runs_jobs_to_the_end(cluster, tmp_path):
    rows = run_locust(cluster, tmp_path, "locust_batch.py", users=1, seconds=5, stop_timeout=60,
                      extra_env={"MODELPOOL_LOCUST_BATCH_ROWS": "50"})
    for name in ("/batches [submit]", "/batches/{id} [state]", "/batches/{id}?show_partial_results [results page]",
                 "/batches/{id}/results/{index} [one row]"):
        assert int(rows.get(name, {}).get("Request Count", 0)) > 0, f"no {name!r} in {sorted(rows)}"
    jobs = {name: row for name, row in rows.items() if row["Type"] == "BATCH"}
    assert set(jobs) <= {"job end-to-end iris_report/1", "job end-to-end diabetes/1"}
    assert sum(int(row["Request Count"]) for row in jobs.values()) == int(rows["/batches [submit]"]["Request Count"])
    if "job end-to-end iris_report/1" in jobs:  # its handler writes a report.json per row
        assert int(rows["/batches/{id}/results/{index}/artifacts [list]"]["Request Count"]) > 0
