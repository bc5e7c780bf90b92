"""Seldon's --service-type and --parameters given at register, over the archive's manifest: checked, written
into the stored copy (so every replica, pool and batch worker reads the same manifest), shown by describe, and
what graphs see. Runs the real management core in process (tests/unit/management_app.py)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import requests

from modelpool.deployments.archive_fetch import local_archive
from modelpool.deployments.archive_formats import REGISTERED_NAME, read_manifest
from modelpool.deployments.examples import archive_command
from modelpool.management.params import RegisterParams
from tests.unit.management_app import RunningManagement, management_fixture, model_store  # noqa: F401 (fixtures)

SCALER = """
import numpy as np

class Scaler:
    def __init__(self, factor=1.0):
        self.factor = factor

    def transform_input(self, X, features_names):
        return np.asarray(X, dtype=float) * self.factor

    def predict(self, X):
        return np.asarray(X, dtype=float).sum(axis=1)
"""


@pytest.fixture()
def scaler_archive(model_store: Path, tmp_path: Path) -> str:
    source = tmp_path / "scaler.py"
    source.write_text(SCALER)
    archive_command("scaler", "1", "scaler:Scaler", [source], out=model_store / "scaler-1.zip")
    return "scaler-1.zip"


def test_register_sets_the_role_and_parameters_over_the_manifest(management: RunningManagement, scaler_archive,
                                                                tmp_path: Path):
    management.manager.register(RegisterParams(url="iris-1.zip"))
    with requests.Session() as admin:
        admin.headers["Authorization"] = f"Bearer {management.token}"
        registered = admin.post(f"{management.url}/models", params={
            "url": scaler_archive, "service_type": "transformer",
            "parameters": json.dumps([{"name": "factor", "type": "FLOAT", "value": "10"}])})
        assert registered.status_code == 200, registered.text
        described = admin.get(f"{management.url}/models/scaler/1").json()[0]
        graph = admin.put(f"{management.url}/graphs/scaled", json={"graph": {
            "name": "scale", "type": "TRANSFORMER", "model": "scaler", "children": [{"name": "m", "model": "iris"}]}})
    assert described["serviceType"] == "TRANSFORMER", "service_type= over the manifest's MODEL, any case"
    assert described["parameters"] == [{"name": "factor", "type": "FLOAT", "value": "10"}]
    assert graph.status_code == 201, f"graphs see the registered role: {graph.text}"
    record = management.manager.registry.get_model("scaler", "1")
    stored = local_archive(record.source, tmp_path, management.manager.store)
    with zipfile.ZipFile(stored) as archive:
        assert json.loads(archive.read(REGISTERED_NAME)) == {
            "service_type": "TRANSFORMER", "parameters": [{"name": "factor", "type": "FLOAT", "value": "10"}]}
    assert read_manifest(stored).typed_parameters == {"factor": 10.0}, "what replicas and batch workers read"


@pytest.mark.parametrize("params, field", [
    ({"service_type": "ENSEMBLE"}, "service_type"),
    ({"parameters": "not json"}, "parameters"),
    ({"parameters": json.dumps([{"name": "factor", "type": "FLOAT", "value": "ten"}])}, "parameters"),
    ({"parameters": json.dumps([{"name": "colour", "type": "STRING", "value": "red"}])}, "parameters"),
    ({"service_type": "COMBINER"}, "handler"),
])
def test_a_role_or_parameters_the_archive_cannot_take_is_a_400_naming_the_field(management: RunningManagement,
                                                                                scaler_archive, params, field):
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {management.token}"
        refused = session.post(f"{management.url}/models", params={"url": scaler_archive, **params})
    assert refused.status_code == 400 and refused.json()["field"] == field, refused.text
    assert management.manager.registry.get_model("scaler", "1") is None, "nothing half-registered"
