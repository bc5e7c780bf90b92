"""Runs last (file order): stop and start the whole cluster; every model and pool comes back."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_a_restarted_cluster_restores_models_defaults_and_pools(cluster, admin, http, tmp_path):
    import ray

    from cluster.settings import load_settings
    from deployments.examples import archive_command
    from tests.integration.test_serving import FRAGILE_HANDLER

    models = f"{cluster.url}/models"
    source = tmp_path / "gone.py"
    source.write_text(FRAGILE_HANDLER)
    archive_command(name="gone", version="1", handler="gone:predict", files=[source],
                    out=load_settings({}, cluster.env).model_store_path / "gone-1.zip")
    assert admin.post(models, params={"url": "gone-1.zip", "synchronous": "true"}).status_code == 200
    assert admin.delete(f"{models}/gone/1").status_code == 200  # its archive stays in the model store
    assert admin.post(models, params={"url": "iris-2.zip", "model_name": "durable", "synchronous": "true"}).status_code == 200
    assert admin.put(f"{cluster.url}/pools/durable/2", params={"initial_pool_size": 1, "max_pool_size": 2}).status_code == 200
    assert admin.post(models, params={"url": "iris-1.zip", "model_name": "durable_generic", "synchronous": "true"}).status_code == 200
    assert admin.put(f"{models}/iris/1/set-default").status_code == 200
    before = sorted((s["name"], s["version"], s["pool"], s["isDefault"]) for s in admin.get(f"{cluster.url}/services").json())

    if ray.is_initialized():
        ray.shutdown()
    stopped = cluster.cli("stop", check=False)
    assert stopped.returncode == 0, stopped.stderr
    started = cluster.cli("start", check=False)
    assert started.returncode == 0, started.stdout + started.stderr

    after = sorted((s["name"], s["version"], s["pool"], s["isDefault"]) for s in admin.get(f"{cluster.url}/services").json())
    assert after == before, "unregistered store archives must not come back at start"
    assert admin.get(f"{models}/gone").status_code == 404
    assert all(n["status"] == "Success" for n in admin.get(f"{cluster.url}/pools/durable/2").json())
    assert http.post(f"{cluster.url}/v2/models/durable/infer", json=ROW).json()["model_version"] == "2"
    generic = http.post(f"{cluster.url}/v2/models/durable_generic/infer", json=ROW)
    assert generic.status_code == 200 and generic.headers.get("x-modelpool-pool") == "generic"
    assert http.post(f"{cluster.url}/v2/models/iris/infer", json=ROW).json()["model_version"] == "1"
