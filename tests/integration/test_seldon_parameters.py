"""Seldon's --parameters and --service-type on the real cluster: from the archive to the handler's constructor."""
from __future__ import annotations

from pathlib import Path

from modelpool.cluster.settings import load_settings
from modelpool.deployments.examples import archive_command

SCALE_HANDLER = """
import numpy as np

class Scale:
    def __init__(self, factor=1.0, offset=0):
        self.factor, self.offset = factor, offset

    def predict(self, data):
        return {"predict": np.asarray(data, dtype=float).sum(axis=1) * self.factor + self.offset}
"""
ROWS = {"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}


def test_parameters_reach_the_handler_on_every_replica_and_describe_shows_them(cluster, admin, http, tmp_path: Path):
    source = tmp_path / "scale.py"
    source.write_text(SCALE_HANDLER)
    archive_command("scaled", "1", "scale:Scale", [source], service_type="MODEL",
                    parameters='[{"name": "factor", "type": "FLOAT", "value": "2.5"}, '
                               '{"name": "offset", "type": "INT", "value": "1"}]',
                    out=load_settings({}, cluster.env).model_store_path / "scaled-1.zip")
    registered = admin.post(f"{cluster.url}/models", params={"url": "scaled-1.zip", "initial_workers": 1,
                                                               "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    try:
        answer = http.post(f"{cluster.url}/v2/models/scaled/infer", json=ROWS)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [8.5, 18.5], "(1+2)*2.5+1 and (3+4)*2.5+1"
        described = admin.get(f"{cluster.url}/models/scaled/1").json()[0]
        assert described["serviceType"] == "MODEL"
        assert described["parameters"] == [{"name": "factor", "type": "FLOAT", "value": "2.5"},
                                           {"name": "offset", "type": "INT", "value": "1"}]
    finally:
        admin.delete(f"{cluster.url}/models/scaled/1")


def test_a_parameter_the_handler_cannot_take_is_refused_at_register(cluster, admin, tmp_path: Path):
    source = tmp_path / "scale.py"
    source.write_text(SCALE_HANDLER)
    archive = archive_command("scaled_bad", "1", "scale:Scale", [source],
                              parameters='[{"name": "colour", "type": "STRING", "value": "red"}]',
                              out=load_settings({}, cluster.env).model_store_path / "scaled_bad-1.zip")
    try:
        refused = admin.post(f"{cluster.url}/models", params={"url": "scaled_bad-1.zip", "synchronous": "true"})
        assert refused.status_code == 400 and refused.json()["field"] == "parameters", refused.text
        assert "colour" in refused.json()["error"]
        assert admin.get(f"{cluster.url}/models/scaled_bad").status_code == 404, "nothing half-registered"
    finally:  # out of the store: test_zzz_server_settings' restart would load it again (and fail) before it deploys
        Path(archive).unlink(missing_ok=True)
