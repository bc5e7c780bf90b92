"""The CLI against the running cluster: status, joining an existing cluster, refusing bad settings."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_status_lists_every_application_with_its_replicas(cluster):
    result = cluster.cli("status", "--json")
    status = json.loads(result.stdout)
    assert status["url"] == cluster.url
    apps = status["applications"]
    assert {"management", "model:iris:1", "model:iris:2", "model:diabetes:1", "model:iris_report:1"} <= set(apps)
    assert all(app["status"] == "RUNNING" for name, app in apps.items() if name.startswith("model:iris"))
    (iris,) = apps["model:iris:1"]["deployments"].values()
    assert iris["status"] == "HEALTHY" and iris["replicas"].get("RUNNING", 0) >= 1, iris
    table = cluster.cli("status").stdout
    assert any(line.split()[0] == "model:iris:1" and "replicas=" in line and not line.endswith("replicas=0")
               for line in table.splitlines()[1:]), table


def test_start_with_an_address_joins_the_running_cluster_without_restarting_models(cluster, http):
    row = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    before = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=row).headers["x-modelpool-replica"]
    state_file = cluster.home / "cluster.json"
    saved_state = state_file.read_text()
    try:
        joined = cluster.cli("start", "--address", cluster.address, check=False)
        assert joined.returncode == 0, joined.stderr
        assert "starting a local Ray head" not in joined.stdout
        assert f"serving on {cluster.url}" in joined.stdout
        assert json.loads(state_file.read_text())["started_here"] is False
    finally:
        state_file.write_text(saved_state)  # the session's own stop must still end the Ray it started
    after = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=row).headers["x-modelpool-replica"]
    assert after == before, "re-running start on an unchanged store restarted a replica"


def test_bad_settings_are_refused_at_start_naming_the_flag(cluster):
    result = subprocess.run([sys.executable, "-m", "modelpool.cli", "start", "--threads", "4", "--max-batch-size", "64"],
                            env=cluster.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--threads" in result.stderr
    result = subprocess.run([sys.executable, "-m", "modelpool.cli", "start"], env={**cluster.env, "MODELPOOL_HTTP_PORT": "http"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "MODELPOOL_HTTP_PORT" in result.stderr
