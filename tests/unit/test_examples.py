"""The example archives load through the real path (unpack -> load_handler) and predict well."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from modelpool.deployments.archive import list_store, unpack_archive
from modelpool.deployments.archive_formats import read_manifest
from modelpool.deployments.errors import RequestError
from modelpool.deployments.examples import archive_command, build_examples
from modelpool.deployments.handler_loader import load_handler
from modelpool.deployments.handlers import Handler


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store")
    started = time.perf_counter()
    build_examples(path)
    assert time.perf_counter() - started < 10  # budget ~3 s; generous for slow CI
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def load(store: Path, cache: Path, archive: str) -> Handler:
    loaded = unpack_archive(store / archive, cache)
    return load_handler(loaded.model_dir, loaded.manifest)


def test_build_examples_writes_every_archive(store):
    names = sorted(p.name for p in store.iterdir())
    assert names == ["diabetes-1.zip", "iris-1.zip", "iris-2.zip", "iris_report-1.zip"]
    assert [(m.name, m.version) for m, _ in list_store(store)] == [
        ("diabetes", "1"), ("iris", "1"), ("iris", "2"), ("iris_report", "1")]


def test_build_examples_is_idempotent(store):
    before = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    paths = build_examples(store)
    assert sorted(p.name for p in paths) == sorted(before)
    assert {p.name: p.stat().st_mtime_ns for p in store.iterdir()} == before


def test_iris_manifest_declares_its_tensors(store):
    m = read_manifest(store / "iris-1.zip")
    assert m.handler == "sklearn" and m.model_file in m.files
    assert [t.model_dump() for t in m.inputs] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [t.model_dump() for t in m.outputs] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("archive", ["iris-1.zip", "iris-2.zip"])
def test_iris_versions_classify_the_training_set(store, cache, archive):
    iris = load_iris()
    handler = load(store, cache, archive)
    handler.context.requested_outputs = ("predict", "predict_proba")
    out = handler.handle({"input-0": iris.data})
    assert (out["predict"] == iris.target).mean() > 0.9
    assert out["predict_proba"].shape == (150, 3)
    np.testing.assert_allclose(out["predict_proba"].sum(axis=1), 1.0)


def test_iris_versions_are_different_models(store, cache):
    v1, v2 = load(store, cache, "iris-1.zip"), load(store, cache, "iris-2.zip")
    assert type(v1.model).__name__ == "LogisticRegression"
    assert type(v2.model).__name__ == "DecisionTreeClassifier"


def test_iris_single_row(store, cache):
    out = load(store, cache, "iris-1.zip").handle({"input-0": np.array([[5.1, 3.5, 1.4, 0.2]])})
    assert out["predict"].tolist() == [0]


def test_diabetes_predictions_follow_targets(store, cache):
    diabetes = load_diabetes()
    handler = load(store, cache, "diabetes-1.zip")
    out = handler.handle({"input-0": diabetes.data})
    assert out["predict"].dtype == np.float64 and out["predict"].shape == (442,)
    assert np.corrcoef(out["predict"], diabetes.target)[0, 1] > 0.6
    with pytest.raises(RequestError) as exc:
        handler.handle({"input-0": diabetes.data[:, :4]})
    assert exc.value.status == 422 and "expects 10 features" in exc.value.message


def test_iris_report_predicts_without_artifacts_online(store, cache):
    iris = load_iris()
    handler = load(store, cache, "iris_report-1.zip")
    files_before = sorted(p for p in handler.context.model_dir.rglob("*"))
    out = handler.handle({"input-0": iris.data})
    assert set(out) == {"predict", "confidence"}
    assert (out["predict"] == iris.target).mean() > 0.9
    assert ((out["confidence"] > 1 / 3) & (out["confidence"] <= 1)).all()
    assert sorted(p for p in handler.context.model_dir.rglob("*")) == files_before


def test_iris_report_writes_one_report_per_row_in_batch(store, cache, tmp_path):
    iris = load_iris()
    handler = load(store, cache, "iris_report-1.zip")
    rows = iris.data[[0, 60, 120]]
    handler.context.artifact_root = tmp_path / "chunk-0"
    try:
        out = handler.handle({"input-0": rows})
    finally:
        handler.context.artifact_root = None
    assert sorted(p.name for p in (tmp_path / "chunk-0").iterdir()) == ["0", "1", "2"]
    report = json.loads((tmp_path / "chunk-0" / "1" / "report.json").read_text())
    assert report["features"] == rows[1].tolist()
    assert report["class"] == int(out["predict"][1]) == 1
    assert report["class_name"] == "versicolor"
    assert report["confidence"] == pytest.approx(float(out["confidence"][1]))


def test_archive_command_packages_a_python_handler(tmp_path, monkeypatch):
    (tmp_path / "double.py").write_text("def predict(data):\n    return data[:, 0] * 2\n")
    out = archive_command("double", "3", "double:predict", [tmp_path / "double.py"], tmp_path / "double-3.mar",
                          description="doubles")
    m = read_manifest(out)
    assert (m.name, m.version, m.files, m.description) == ("double", "3", ["double.py"], "doubles")
    loaded = unpack_archive(out, tmp_path / "cache")
    result = load_handler(loaded.model_dir, loaded.manifest).handle({"x": np.array([1.0, 4.0])})
    assert result["predict"].tolist() == [2.0, 8.0]
    monkeypatch.chdir(tmp_path)
    assert archive_command("double", "4", "double:predict", ["double.py"], None) == tmp_path / "double-4.zip"


def test_archive_command_adds_the_model_file(tmp_path, store, cache):
    loaded = unpack_archive(store / "iris-1.zip", cache)
    out = archive_command("iris", "9", "sklearn", [], tmp_path, model_file=loaded.model_dir / "model.joblib")
    assert out == tmp_path / "iris-9.zip"
    assert read_manifest(out).files == ["model.joblib"]


def test_archive_command_refuses_bad_input(tmp_path):
    with pytest.raises(RequestError) as exc:
        archive_command("../iris", "1", "sklearn", [], tmp_path, model_file="m.joblib")
    assert exc.value.field == "manifest.name"
    with pytest.raises(RequestError) as exc:
        archive_command("iris", "1", "sklearn", [tmp_path / "missing.joblib"], tmp_path, model_file="missing.joblib")
    assert exc.value.field == "files"


def test_the_archive_command_writes_seldons_role_and_parameters(tmp_path: Path, cache) -> None:
    source = tmp_path / "scale.py"
    source.write_text("class Scale:\n    def __init__(self, factor=1.0):\n        self.factor = factor\n"
                      "    def transform_input(self, X, names):\n        return X * self.factor\n")
    out = archive_command("scaled", "1", "scale:Scale", [source], out=tmp_path, service_type="transformer",
                          parameters='[{"name": "factor", "type": "FLOAT", "value": "2.5"}]')
    loaded = unpack_archive(out, cache)
    assert loaded.manifest.service_type == "TRANSFORMER"
    handler = load_handler(loaded.model_dir, loaded.manifest)
    assert handler.target.factor == 2.5 and handler.role == "TRANSFORMER"
    assert handler.transform_input({"x": np.array([[2.0]])})["x"].tolist() == [[5.0]]
    with pytest.raises(RequestError) as caught:
        archive_command("scaled", "2", "scale:Scale", [source], out=tmp_path, parameters="[{")
    assert caught.value.field == "parameters"
