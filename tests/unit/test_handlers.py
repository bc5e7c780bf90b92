"""The handler contract, the sklearn handler and loading Python handlers from archives."""
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from modelpool.deployments.errors import RequestError
from modelpool.deployments.handler_loader import load_handler
from modelpool.deployments.handlers import CallableHandler, Handler, ModelContext, SklearnHandler
from modelpool.deployments.manifest import MANIFEST_NAME, Manifest


def model_dir(tmp_path: Path, name: str, files: dict, **manifest_fields) -> tuple:
    """A directory archive with the given files (name -> text or object to joblib-dump)."""
    directory = tmp_path / name
    directory.mkdir()
    for file_name, content in files.items():
        if isinstance(content, str):
            (directory / file_name).write_text(textwrap.dedent(content))
        else:
            joblib.dump(content, directory / file_name)
    manifest = Manifest(name=name, files=sorted(files), **manifest_fields)
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return directory, manifest


def python_model(tmp_path: Path, name: str, source: str, handler: str = "handler:Model", extra_files=None):
    files = {"handler.py": source, **(extra_files or {})}
    directory, manifest = model_dir(tmp_path, name, files, handler=handler)
    return load_handler(directory, manifest)


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def classifier(xy):
    return LogisticRegression(random_state=0).fit(*xy)


def sklearn_handler(tmp_path, model, outputs=("predict",), name="clf"):
    directory, manifest = model_dir(
        tmp_path, name, {"model.joblib": model}, handler="sklearn", model_file="model.joblib",
        outputs=[{"name": o, "datatype": "FP64", "shape": [-1]} for o in outputs],
    )
    return load_handler(directory, manifest)


class Echo(Handler):
    def predict(self, data):
        return data


# ------------------------------------------------------------------------ default pipeline


def test_one_input_becomes_a_matrix():
    h = Echo()
    assert h.preprocess({"x": np.arange(3)}).shape == (3, 1)
    matrix = np.ones((2, 4))
    assert h.preprocess({"x": matrix}) is matrix


def test_several_inputs_become_named_columns():
    frame = Echo().preprocess({"a": np.arange(3), "b": np.arange(3.0).reshape(3, 1)})
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["a", "b"] and len(frame) == 3


@pytest.mark.parametrize("inputs, status", [
    ({}, 400),
    ({"x": np.ones((2, 2, 2))}, 422),
    ({"x": np.float64(1.0)}, 422),
    ({"a": np.arange(3), "b": np.arange(4)}, 422),
    ({"a": np.arange(3), "b": np.ones((3, 2))}, 422),
])
def test_bad_input_shapes_are_client_errors(inputs, status):
    with pytest.raises(RequestError) as exc:
        Echo().preprocess(inputs)
    assert (exc.value.status, exc.value.field) == (status, "inputs")


def test_postprocess_defaults():
    h = Echo()
    assert list(h.postprocess(np.arange(2))) == ["predict"]
    out = h.postprocess({"a": [1, 2], "b": (3.0, 4.0)})
    assert all(isinstance(v, np.ndarray) for v in out.values())


def test_handle_requires_one_output_row_per_input_row():
    class Short(Handler):
        def predict(self, data):
            return {"predict": data[:1, 0], "ok": data[:, 0]}

    with pytest.raises(RuntimeError, match=r"Short.*'predict'.*3 input rows"):
        Short().handle({"x": np.ones((3, 2))})

    class Scalar(Handler):
        def predict(self, data):
            return 1.0

    with pytest.raises(RuntimeError, match="Scalar"):
        Scalar().handle({"x": np.ones((1, 2))})


def test_handle_runs_the_pipeline():
    out = Echo().handle({"x": np.arange(4.0)})
    assert out["predict"].shape == (4, 1)


def test_artifact_dir_only_when_root_is_set(tmp_path):
    manifest = Manifest(name="m", handler="m:f")
    context = ModelContext(model_dir=tmp_path, manifest=manifest)
    assert context.artifact_dir(0) is None
    context.artifact_root = tmp_path / "chunk-0"
    path = context.artifact_dir(3)
    assert path == tmp_path / "chunk-0" / "3" and path.is_dir()
    with pytest.raises(ValueError):
        context.artifact_dir(-1)


# ------------------------------------------------------------------------- sklearn handler


def test_sklearn_handler_predicts_one_row_without_dataframes(tmp_path, xy, classifier):
    h = sklearn_handler(tmp_path, classifier)
    assert isinstance(h, SklearnHandler)
    X, _ = xy
    assert isinstance(h.preprocess({"input-0": X[:1]}), np.ndarray)
    out = h.handle({"input-0": X[:1]})
    assert list(out) == ["predict"] and out["predict"].shape == (1,)
    assert out["predict"][0] == classifier.predict(X[:1])[0]


def test_sklearn_handler_computes_proba_only_when_requested(tmp_path, xy, classifier):
    X, _ = xy
    handler = sklearn_handler(tmp_path, classifier, outputs=("predict", "predict_proba"))
    assert set(handler.handle({"x": X})) == {"predict"}, "predict_proba costs as much as predict: only on request"
    handler.context.requested_outputs = ("predict_proba",)
    out = handler.handle({"x": X})
    assert out["predict_proba"].shape == (60, 2)
    np.testing.assert_allclose(out["predict_proba"].sum(axis=1), 1.0)


def test_wrong_feature_count_is_422(tmp_path, xy, classifier):
    h = sklearn_handler(tmp_path, classifier)
    with pytest.raises(RequestError) as exc:
        h.handle({"input-0": np.ones((2, 3))})
    assert (exc.value.status, exc.value.field) == (422, "inputs")
    assert "expects 4 features" in exc.value.message and "got 3" in exc.value.message


def test_invalid_values_are_422(tmp_path, classifier):
    h = sklearn_handler(tmp_path, classifier)
    with pytest.raises(RequestError) as exc:
        h.handle({"input-0": np.full((1, 4), np.nan)})
    assert exc.value.status == 422


def test_model_fitted_on_named_columns(tmp_path, xy):
    X, y = xy
    frame = pd.DataFrame(X[:, :2], columns=["a", "b"])
    h = sklearn_handler(tmp_path, LogisticRegression().fit(frame, y))
    expected = h.model.predict(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "feature names" warnings either way
        np.testing.assert_array_equal(h.handle({"x": X[:, :2]})["predict"], expected)
        swapped = {"b": X[:, 1], "a": X[:, 0]}
        np.testing.assert_array_equal(h.handle(swapped)["predict"], expected)
    with pytest.raises(RequestError) as exc:
        h.handle({"a": X[:, 0], "c": X[:, 1]})
    assert exc.value.status == 422 and "'b'" in exc.value.message


def test_sklearn_handler_missing_model_file(tmp_path):
    directory, manifest = model_dir(tmp_path, "m", {}, handler="sklearn", model_file="model.joblib")
    with pytest.raises(RequestError) as exc:
        load_handler(directory, manifest)
    assert exc.value.field == "manifest.model_file"


# ------------------------------------------------------------------------- python handlers


def test_function_handler(tmp_path):
    h = python_model(tmp_path, "fn", "def double(data):\n    return data[:, 0] * 2\n", handler="handler:double")
    assert isinstance(h, CallableHandler)
    np.testing.assert_array_equal(h.handle({"x": np.array([1.0, 2.0])})["predict"], [2.0, 4.0])


def test_handler_subclass_is_initialized_with_its_context(tmp_path):
    source = """
        from pathlib import Path
        from modelpool.deployments.handlers import Handler

        class Model(Handler):
            def initialize(self, context):
                super().initialize(context)
                self.offset = float((context.model_dir / "offset.txt").read_text())

            def predict(self, data):
                return {"predict": data[:, 0] + self.offset, "name": [self.context.manifest.name] * len(data)}
        """
    h = python_model(tmp_path, "sub", source, extra_files={"offset.txt": "10"})
    out = h.handle({"x": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(out["predict"], [11.0, 12.0])
    assert list(out["name"]) == ["sub", "sub"]


def test_load_handler_uses_the_given_context(tmp_path):
    directory, manifest = model_dir(tmp_path, "ctx", {"handler.py": "def f(d):\n    return d\n"}, handler="handler:f")
    context = ModelContext(model_dir=directory, manifest=manifest)
    assert load_handler(directory, manifest, context).context is context


def test_duck_typed_class_is_wrapped(tmp_path):
    source = """
        class Model:
            def initialize(self, context):
                self.scale = 3

            def predict(self, data):
                return data[:, 0] * self.scale

            def postprocess(self, predictions):
                return {"scaled": predictions}
        """
    h = python_model(tmp_path, "duck", source)
    assert isinstance(h, Handler)
    np.testing.assert_array_equal(h.handle({"x": np.array([1, 2])})["scaled"], [3, 6])


def test_handler_exception_reaches_the_caller(tmp_path):
    source = """
        from modelpool.deployments.handlers import Handler

        class Model(Handler):
            def predict(self, data):
                raise ValueError("model exploded on row 0")
        """
    h = python_model(tmp_path, "boom", source)
    with pytest.raises(ValueError, match="model exploded on row 0"):
        h.handle({"x": np.ones((1, 2))})


def test_two_models_with_the_same_module_names_do_not_collide(tmp_path):
    source = """
        import helpers

        def predict(data):
            return data[:, 0] * 0 + helpers.VALUE
        """
    a = python_model(tmp_path, "a", source, handler="handler:predict", extra_files={"helpers.py": "VALUE = 1\n"})
    b = python_model(tmp_path, "b", source, handler="handler:predict", extra_files={"helpers.py": "VALUE = 2\n"})
    x = {"x": np.zeros(2)}
    assert list(a.handle(x)["predict"]) == [1, 1]
    assert list(b.handle(x)["predict"]) == [2, 2]
    assert "helpers" not in sys.modules
    assert a.fn.__module__ != b.fn.__module__


def test_sys_path_is_restored(tmp_path):
    before = list(sys.path)
    python_model(tmp_path, "p", "def f(d):\n    return d\n", handler="handler:f")
    with pytest.raises(RequestError):
        python_model(tmp_path, "q", "import not_a_module_anywhere\n", handler="handler:f")
    assert sys.path == before


@pytest.mark.parametrize("source, handler, fragment", [
    ("import not_a_module_anywhere\n", "handler:f", "not_a_module_anywhere"),
    ("def f(:\n", "handler:f", "SyntaxError"),
    ("raise RuntimeError('bad import-time code')\n", "handler:f", "bad import-time code"),
    ("def f(d):\n    return d\n", "handler:g", "no 'g'"),
    ("X = 3\n", "handler:X", "function or a class"),
    ("class Model:\n    pass\n", "handler:Model", "define predict"),
    ("class Model:\n    def __init__(self, x):\n        pass\n    def predict(self, d):\n        return d\n",
     "handler:Model", "no arguments"),
    ("from modelpool.deployments.handlers import Handler\nclass Model(Handler):\n"
     "    def initialize(self, context):\n        raise OSError('weights missing')\n"
     "    def predict(self, d):\n        return d\n", "handler:Model", "weights missing"),
])
def test_broken_handlers_are_400_on_handler(tmp_path, source, handler, fragment):
    with pytest.raises(RequestError) as exc:
        python_model(tmp_path, "broken", source, handler=handler)
    assert (exc.value.status, exc.value.field) == (400, "handler")
    assert fragment in exc.value.message


def test_missing_module_file_is_400(tmp_path):
    directory, manifest = model_dir(tmp_path, "m", {"other.py": ""}, handler="handler:f")
    with pytest.raises(RequestError) as exc:
        load_handler(directory, manifest)
    assert exc.value.field == "handler" and "handler.py" in exc.value.message


def test_module_symlinked_outside_the_model_dir_is_refused(tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("def f(d):\n    return d\n")
    directory, manifest = model_dir(tmp_path, "m", {}, handler="handler:f")
    (directory / "handler.py").symlink_to(outside)
    with pytest.raises(RequestError) as exc:
        load_handler(directory, manifest)
    assert exc.value.field == "handler"


def test_seldons_parameters_reach_the_constructor_typed_and_the_context(tmp_path: Path) -> None:
    source = """
        from modelpool.deployments.handlers import Handler

        class Model(Handler):
            def __init__(self, factor: float = 1.0, label: str = "", classes=None):
                super().__init__()
                self.factor, self.label, self.classes = factor, label, classes

            def predict(self, data):
                return data * self.factor
        """
    parameters = [{"name": "factor", "type": "FLOAT", "value": "2.5"}, {"name": "label", "value": "scaled"},
                  {"name": "classes", "type": "JSON", "value": "[1, 2]"}]
    directory, manifest = model_dir(tmp_path, "scaled", {"handler.py": source}, handler="handler:Model",
                                    parameters=parameters)
    handler = load_handler(directory, manifest)
    assert (handler.factor, handler.label, handler.classes) == (2.5, "scaled", [1, 2])
    assert handler.context.parameters == {"factor": 2.5, "label": "scaled", "classes": [1, 2]}
    assert handler.predict(np.array([1.0, 2.0])).tolist() == [2.5, 5.0]


def test_a_parameter_the_constructor_does_not_take_is_a_400_naming_it(tmp_path: Path) -> None:
    source = """
        class Model:
            def predict(self, data):
                return data["x"]
        """
    directory, manifest = model_dir(tmp_path, "strict", {"handler.py": source}, handler="handler:Model",
                                    parameters=[{"name": "depth", "type": "INT", "value": "3"}])
    with pytest.raises(RequestError) as caught:
        load_handler(directory, manifest)
    assert caught.value.field == "parameters" and "the parameters depth" in caught.value.message
    assert "keyword arguments" in caught.value.message


def test_parameters_for_a_handler_without_a_constructor_are_refused_not_ignored(tmp_path: Path, classifier) -> None:
    directory, manifest = model_dir(tmp_path, "fn", {"handler.py": "def predict(data):\n    return data\n"},
                                    handler="handler:predict", parameters=[{"name": "k", "value": "1"}])
    with pytest.raises(RequestError) as caught:
        load_handler(directory, manifest)
    assert caught.value.field == "parameters" and "not a class" in caught.value.message
    directory, manifest = model_dir(tmp_path, "sk", {"model.joblib": classifier}, handler="sklearn",
                                    model_file="model.joblib", parameters=[{"name": "k", "value": "1"}])
    with pytest.raises(RequestError) as caught:
        load_handler(directory, manifest)
    assert caught.value.field == "parameters" and "sklearn" in caught.value.message
