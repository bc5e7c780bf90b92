"""MMS/TorchServe ``.mar`` archives and register's ``handler=`` override, without torch and without Ray.

Archives are built here the way torch-model-archiver writes them: the model's files copied flat into
one folder, zipped (deflated) by their paths relative to it, and the manifest written last as
``MAR-INF/MANIFEST.json``. The model is a scikit-learn classifier trained on the iris data set and the
handlers are plain Python. Everything on the path is the real one: the archive reader, the replica
classes (``ModelServer``, ``GenericPool``) built from the configs management computes, and the
management API over HTTP in process with the real ``ModelManager``; only Ray's task transport for the
registration's load check is replaced by a call in this process.
"""
from __future__ import annotations

import asyncio
import io
import json
import stat
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import joblib
import numpy as np
import pytest
from starlette.requests import Request

from modelpool.cluster.settings import load_settings
from modelpool.deployments.archive import find_in_store, list_store, unpack_archive
from modelpool.deployments.archive_formats import read_manifest
from modelpool.deployments.errors import RequestError
from modelpool.deployments.generic_pool import GenericPool
from modelpool.deployments.handler_loader import load_handler
from modelpool.deployments.handlers import SklearnHandler
from modelpool.deployments.model_deployment import ModelServer
from modelpool.management import placement, serve_configs
from modelpool.management.params import RegisterParams
from tests.mar_archives import LABELS, PROBA_HANDLER, TORCH_HANDLER, build_mar, train_iris

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]])


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory) -> Path:
    return train_iris(tmp_path_factory.mktemp("trained") / "iris.joblib")


@pytest.fixture
def iris_mar(tmp_path, iris_model) -> Path:
    return build_mar(tmp_path / "iris_mar.mar", iris_model, sources={"proba_handler.py": PROBA_HANDLER})


def refusal(call, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as raised:
        call(*args, **kwargs)
    assert raised.value.status == 400
    return raised.value


def loaded(path: Path, cache: Path, handler: Optional[str] = None):
    archive = unpack_archive(path, cache, handler=handler)
    return archive, load_handler(archive.model_dir, archive.manifest)


def infer(replica, rows: np.ndarray, root: str = "/v2/models/iris_mar", path: str = "/infer") -> tuple[int, dict]:
    """One V2 JSON request through the replica's own HTTP entry point (what Serve calls)."""
    body = json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                                   "data": rows.ravel().tolist()}]}).encode()

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": root + path, "root_path": root, "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    response = asyncio.run(replica(Request(scope, receive)))
    return response.status_code, json.loads(response.body)


def outputs(answer: dict) -> dict:
    return {out["name"]: out["data"] for out in answer["outputs"]}


# ------------------------------------------------------------------------------------ the mapping


def test_the_mar_manifest_maps_onto_modelpools(iris_mar):
    manifest = read_manifest(iris_mar)
    assert (manifest.name, manifest.version, manifest.runtime) == ("iris_mar", "1.0", "python")
    assert manifest.handler == "iris_handler:IrisClassifier"  # the module's one class, as TorchServe picks it
    assert manifest.model_file == "iris.joblib"
    assert manifest.files == ["index_to_name.json", "iris_handler.py", "proba_handler.py"]
    assert manifest.extra["mar"]["archiverVersion"] == "0.12.0"
    assert manifest.extra["mar"]["model"]["handler"] == "iris_handler.py"


def test_a_mar_serves_from_a_replica_with_its_extra_files_beside_the_handler(iris_mar, iris_model, tmp_path):
    replica = ModelServer(str(iris_mar), str(tmp_path / "cache"), "iris_mar", "1.0")
    replica.reconfigure({"max_batch_size": 8, "max_batch_delay_ms": 1, "versions": ["1.0"]})
    status, answer = infer(replica, ROWS)
    assert status == 200, answer
    expected = joblib.load(iris_model).predict(ROWS)
    assert outputs(answer)["predict"] == expected.tolist()
    assert outputs(answer)["label"] == [LABELS[str(c)] for c in expected]
    model_dir = replica.model.context.model_dir
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "MAR-INF", "index_to_name.json", "iris.joblib", "iris_handler.py", "proba_handler.py"]


@pytest.mark.parametrize("spec, resolved", [
    ("iris_handler.py", "iris_handler:IrisClassifier"),
    ("iris_handler", "iris_handler:IrisClassifier"),
    ("/home/me/serve/handlers/iris_handler.py", "iris_handler:IrisClassifier"),  # only the base name counts
    ("iris_handler.py:IrisClassifier", "iris_handler:IrisClassifier"),
    ("entry", "entry:handle"),                            # a module-level handle wins over its classes
    ("entry:score", "entry:score"),                       # MMS's module:function
])
def test_handler_spellings_resolve_as_torchserve_resolves_them(tmp_path, iris_model, spec, resolved):
    entry = "class Helper:\n    pass\n\ndef handle(data, context=None):\n    return data[:, 0]\n\nscore = handle\n"
    as_manifest = build_mar(tmp_path / "m.mar", iris_model, handler=spec, sources={"entry.py": entry})
    assert read_manifest(as_manifest).handler == resolved
    as_override = build_mar(tmp_path / "o.mar", iris_model, sources={"entry.py": entry})
    assert read_manifest(as_override, handler=spec).handler == resolved


def test_a_module_without_handle_and_with_several_classes_must_name_its_entry_point(tmp_path, iris_model):
    two = "class A:\n    pass\n\nif True:\n    class B:\n        pass\n"
    error = refusal(read_manifest, build_mar(tmp_path / "m.mar", iris_model, handler="two.py", sources={"two.py": two}))
    assert error.field == "manifest.model.handler"
    assert "2 classes (A, B)" in error.message and "'two:Name'" in error.message


@pytest.mark.parametrize("builtin", ["image_classifier", "text_classifier", "object_detector", "base_handler"])
def test_torchserve_builtin_handlers_are_refused_naming_why_and_the_fix(tmp_path, iris_model, builtin):
    error = refusal(read_manifest, build_mar(tmp_path / "m.mar", iris_model, handler=builtin))
    assert error.field == "manifest.model.handler"
    assert f"ts.torch_handler.{builtin}" in error.message and "needs torch" in error.message
    assert "--handler my_handler.py" in error.message


def test_a_handler_that_needs_torch_is_refused_with_the_fix(tmp_path, iris_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # torch is not installed here, whatever this machine has
    mar = build_mar(tmp_path / "m.mar", iris_model, handler="net.py", sources={"net.py": TORCH_HANDLER},
                    requirementsFile="requirements.txt", extra={"requirements.txt": "torch==2.3\n"})
    assert read_manifest(mar).handler == "net:Net"  # the archive itself is well-formed
    error = refusal(loaded, mar, tmp_path / "cache")
    assert error.field == "handler"
    assert "net.py needs 'torch', which is not installed on this server" in error.message
    assert "pip install torch" in error.message and "'requirements.txt'" in error.message


@pytest.mark.parametrize("source, expected", [
    ("from ts.torch_handler.base_handler import BaseHandler\n\n\nclass H(BaseHandler):\n    pass\n",
     "imports 'ts', TorchServe's own package"),
    ("class H:\n    def initialize(self, context):\n        pass\n\n    def handle(self, data, context):\n"
     "        return data\n", "TorchServe's and MMS's entry point: modelpool calls predict(data)"),
    ("def handle(data, context):\n    return data\n", "handle(data, context) does not fit"),
])
def test_torchserve_style_handlers_that_do_not_fit_the_contract_say_why(tmp_path, iris_model, source, expected):
    mar = build_mar(tmp_path / "m.mar", iris_model, handler="h.py", sources={"h.py": source})
    error = refusal(loaded, mar, tmp_path / "cache")
    assert error.field == "handler" and expected in error.message


@pytest.mark.parametrize("change, field, words", [
    ({"version": None}, "manifest.model.modelVersion", "no model.modelVersion"),
    ({"name": "../x"}, "manifest.model.modelName", "is not allowed"),
    ({"runtime": "LSP"}, "manifest.runtime", "Python handlers only"),
    ({"handler": "missing.py"}, "manifest.model.handler", "missing.py, which is not in the archive"),
])
def test_mar_manifest_errors_name_the_mar_key(tmp_path, iris_model, change, field, words):
    error = refusal(read_manifest, build_mar(tmp_path / "m.mar", iris_model, **change))
    assert error.field == field and words in error.message


def test_a_tgz_archive_is_refused_with_the_format_that_works(tmp_path):
    path = tmp_path / "iris.mar"
    with tarfile.open(path, "w:gz") as tar:
        data = b"{}"
        info = tarfile.TarInfo("iris/MAR-INF/MANIFEST.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    error = refusal(read_manifest, path)
    assert error.field == "url" and "--archive-format tgz" in error.message


@pytest.mark.parametrize("entry, reason", [
    ("../escaped.py", "'..' path segments are not allowed"),
    ("/etc/cron.d/x", "absolute paths are not allowed"),
    ("link", "symbolic links are not allowed"),
])
def test_no_path_in_a_mar_escapes_its_directory(tmp_path, iris_model, entry, reason):
    mar = build_mar(tmp_path / "m.mar", iris_model)
    with zipfile.ZipFile(mar, "a") as z:
        info = zipfile.ZipInfo(entry)
        if entry == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd" if entry == "link" else "print('pwned')")
    cache = tmp_path / "cache"
    error = refusal(unpack_archive, mar, cache)
    assert error.field == "url" and reason in error.message
    assert not (tmp_path / "escaped.py").exists() and not any(cache.rglob("*.py"))


def test_an_unzipped_mar_directory_is_listed_and_loaded_in_place(tmp_path, iris_mar):
    store = tmp_path / "store"
    with zipfile.ZipFile(iris_mar) as z:
        z.extractall(store / "iris_mar")  # torch-model-archiver --archive-format no-archive
    assert [(m.name, p.name) for m, p in list_store(store)] == [("iris_mar", "iris_mar")]
    archive, handler = loaded(find_in_store(store, "iris_mar"), tmp_path / "cache")
    assert archive.model_dir == (store / "iris_mar").resolve()
    assert handler.handle({"input-0": ROWS})["label"].tolist() == ["setosa", "virginica"]


# ----------------------------------------------------------------------------- handler= override


def test_handler_override_replaces_the_manifests_on_every_loader(iris_mar, iris_model, tmp_path):
    expected = joblib.load(iris_model).predict_proba(ROWS)
    assert read_manifest(iris_mar, handler="proba_handler.py").handler == "proba_handler:Probabilities"
    _, handler = loaded(iris_mar, tmp_path / "cache", handler="proba_handler.py")
    np.testing.assert_allclose(handler.handle({"input-0": ROWS})["predict_proba"], expected)
    _, builtin = loaded(iris_mar, tmp_path / "cache", handler="sklearn")  # the serialized file is a joblib estimator
    assert isinstance(builtin, SklearnHandler)
    assert builtin.handle({"input-0": ROWS})["predict"].tolist() == [0, 2]


def test_an_override_serves_an_archive_whose_own_handler_cannot_run_here(tmp_path, iris_model):
    mar = build_mar(tmp_path / "m.mar", iris_model, handler="image_classifier")
    assert refusal(read_manifest, mar).field == "manifest.model.handler"
    _, handler = loaded(mar, tmp_path / "cache", handler="iris_handler.py")
    assert handler.handle({"input-0": ROWS})["label"].tolist() == ["setosa", "virginica"]


@pytest.mark.parametrize("override, words", [
    ("nope.py", "nope.py, which is not in the archive (Python files at its root: iris_handler, proba_handler)"),
    ("image_classifier", "TorchServe's built-in handler"),
    ("proba-handler.py", "must name a Python file of the archive"),
    ("sklearn", "the 'sklearn' handler needs model_file"),
])
def test_handler_override_refusals_name_handler(tmp_path, iris_model, override, words):
    model_file = None if override == "sklearn" else iris_model
    mar = build_mar(tmp_path / "m.mar", model_file, sources={"proba_handler.py": PROBA_HANDLER})
    error = refusal(read_manifest, mar, handler=override)
    assert error.field == "handler" and words in error.message


def test_register_params_take_the_handler_parameter():
    assert RegisterParams.parse({"url": "m.mar", "handler": "proba_handler.py"}).handler == "proba_handler.py"
    assert RegisterParams.parse({"url": "m.mar", "handler": ""}).handler is None  # empty: the manifest's
    assert refusal(RegisterParams.parse, {"url": "m.mar", "handler": "h" * 300}).field == "handler"


# ------------------------------------------------------------- register, then the replicas, over HTTP


class InProcessTask:
    """What register uses of a Ray remote function (``.remote``), running the real function here."""

    def __init__(self, remote_function) -> None:
        self.fn = remote_function._function

    def remote(self, *args):
        return self.fn(*args)


@pytest.fixture
def management(tmp_path, monkeypatch):
    """The management API (real routes, real ModelManager) with a model store holding .mar archives."""
    from fastapi.testclient import TestClient

    from modelpool.management import api, archive_intake, model_manager

    settings = load_settings({"home": str(tmp_path / "home")}, {})
    settings.model_store_path.mkdir(parents=True)
    manager = model_manager.ModelManager(settings)
    monkeypatch.setattr(archive_intake, "_load_check", InProcessTask(archive_intake._load_check))
    monkeypatch.setattr(archive_intake, "ray", SimpleNamespace(get=lambda value: value))
    for name, value in {"manager": manager, "token": "t" * 24, "debug": False}.items():
        monkeypatch.setattr(api.state, name, value)
    with TestClient(api.api, headers={"Authorization": f"Bearer {'t' * 24}"}) as client:
        yield client, manager, settings


def test_register_refuses_bad_handlers_with_400s_that_name_handler(management, iris_model, monkeypatch):
    client, manager, settings = management
    build_mar(settings.model_store_path / "iris.mar", iris_model, sources={"proba_handler.py": PROBA_HANDLER})
    monkeypatch.setitem(sys.modules, "torch", None)
    build_mar(settings.model_store_path / "net.mar", iris_model, name="net", handler="net.py",
              sources={"net.py": TORCH_HANDLER})
    for params, words in [({"url": "iris.mar", "handler": "nope.py"}, "nope.py, which is not in the archive"),
                          ({"url": "iris.mar", "handler": "text_classifier"}, "built-in handler"),
                          ({"url": "net.mar"}, "needs 'torch', which is not installed")]:
        response = client.post("/models", params=params)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "handler" and words in response.json()["error"]
    assert manager.registry.list_models() == []


def test_the_override_travels_from_register_to_every_replica(management, iris_model, tmp_path):
    _, manager, settings = management
    build_mar(settings.model_store_path / "iris.mar", iris_model, sources={"proba_handler.py": PROBA_HANDLER})
    params = RegisterParams.parse({"url": "iris.mar", "model_name": "proba", "handler": "proba_handler.py"})
    manager.register(params, apply=False)  # apply would start Serve applications
    (record,) = manager.registry.list_models()  # (describe would ask Serve for the workers: no Serve here)
    assert (record.name, record.version, record.handler) == ("proba", "1.0", "proba_handler:Probabilities")
    expected = joblib.load(iris_model).predict_proba(ROWS)
    dedicated = placement.model_config(record, None, settings, True, ["1.0"], [])
    app = serve_configs.model_app_config(dedicated, str(settings.cache_path), "test")
    replica = ModelServer(**app.init_kwargs)
    replica.reconfigure(app.deployment_options["user_config"])
    status, answer = infer(replica, ROWS, root="/v2/models/proba")
    assert status == 200, answer
    np.testing.assert_allclose(np.reshape(outputs(answer)["predict_proba"], (2, 3)), expected)

    plan = placement.plan([record], {}, {}, settings)
    pool_app = serve_configs.generic_pool_app_config(placement.pool_config(settings), plan.catalog, plan.known_models,
                                                     str(settings.cache_path), "test", plan.versions)
    pool = GenericPool(**pool_app.init_kwargs)
    pool.reconfigure(pool_app.deployment_options["user_config"])
    spec = plan.catalog["proba"]["versions"]["1.0"]
    model = pool._load(spec["source"], "proba", "1.0", spec["handler"])  # what @serve.multiplexed calls
    np.testing.assert_allclose(model.handler.handle({"input-0": ROWS})["predict_proba"], expected)

    without = serve_configs.model_app_config(
        placement.model_config(record.model_copy(update={"handler": "iris_handler:IrisClassifier"}), None, settings,
                               True, ["1.0"], []), str(settings.cache_path), "test")
    assert without.deployment_options["version"] != app.deployment_options["version"]  # new handler, new replicas


def test_batch_scoring_loads_the_registered_handler(management, iris_model):
    from modelpool.management.batch import model_cache

    _, manager, settings = management
    build_mar(settings.model_store_path / "iris.mar", iris_model, sources={"proba_handler.py": PROBA_HANDLER})
    manager.register(RegisterParams.parse({"url": "iris.mar", "handler": "proba_handler.py"}), apply=False)
    (record,) = manager.registry.list_models()
    model_cache.clear_model_cache()
    try:
        chosen = model_cache.cached_model(manager.store, record.source, record.digest, settings.cache_path, record.handler)
        own = model_cache.cached_model(manager.store, record.source, record.digest, settings.cache_path)
    finally:
        model_cache.clear_model_cache()
    assert set(chosen.handler.handle({"input-0": ROWS})) == {"predict_proba"}
    assert set(own.handler.handle({"input-0": ROWS})) == {"predict", "label"}
