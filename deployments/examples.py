"""Example model archives, so a fresh cluster has something to serve and tests have real models.

All are trained on datasets that ship with scikit-learn (no network) with fixed random states, so
builds are reproducible; archives that already exist in the store are left alone.
"""
from __future__ import annotations

import json

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from modelpool.deployments.archive import build_archive
from modelpool.deployments.manifest import Manifest
from modelpool.deployments.parameters import parse_parameters

logger = logging.getLogger(__name__)

ROW_REPORT_SOURCE = Path(__file__).resolve().parent / "example_handlers" / "row_report.py"
IRIS_INPUTS = [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
IRIS_OUTPUTS = [
    {"name": "predict", "datatype": "INT64", "shape": [-1]},
    {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
]


@dataclass(frozen=True)
class Example:
    """One example archive: its identity and how to train the model in it."""

    name: str
    version: str
    train: Callable[[], Any]
    description: str
    handler: str = "sklearn"
    model_file: str = "model.joblib"
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    extra_files: tuple[tuple[Path, str], ...] = ()  # (source, name in archive)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def archive_name(self) -> str:
        return f"{self.name}-{self.version}.zip"


@lru_cache(maxsize=None)
def _iris() -> Any:
    from sklearn.datasets import load_iris

    return load_iris()


def _train_iris_logistic() -> Any:
    from sklearn.linear_model import LogisticRegression

    data = _iris()
    return LogisticRegression(max_iter=1000, random_state=0).fit(data.data, data.target)


def _train_iris_tree() -> Any:
    from sklearn.tree import DecisionTreeClassifier

    data = _iris()
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(data.data, data.target)


def _train_diabetes_linear() -> Any:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    data = load_diabetes()
    return LinearRegression().fit(data.data, data.target)


def examples() -> list[Example]:
    """The example archives, in build order."""
    class_names = ["setosa", "versicolor", "virginica"]  # load_iris().target_names
    return [
        Example("iris", "1", _train_iris_logistic, "Iris species, logistic regression.",
                inputs=IRIS_INPUTS, outputs=IRIS_OUTPUTS, extra={"class_names": class_names}),
        Example("iris", "2", _train_iris_tree, "Iris species, decision tree (depth 3).",
                inputs=IRIS_INPUTS, outputs=IRIS_OUTPUTS, extra={"class_names": class_names}),
        Example("diabetes", "1", _train_diabetes_linear,
                "Diabetes progression after one year, linear regression.",
                inputs=[{"name": "input-0", "datatype": "FP64", "shape": [-1, 10]}],
                outputs=[{"name": "predict", "datatype": "FP64", "shape": [-1]}]),
        Example("iris_report", "1", _train_iris_logistic,
                "Iris species with confidence; writes a report.json per row in batch jobs.",
                handler="row_report:RowReport", model_file="iris_lr.joblib",
                inputs=IRIS_INPUTS,
                outputs=[{"name": "predict", "datatype": "INT64", "shape": [-1]},
                         {"name": "confidence", "datatype": "FP64", "shape": [-1]}],
                extra_files=((ROW_REPORT_SOURCE, "row_report.py"),),
                extra={"class_names": class_names}),
    ]


def build_examples(store: Path) -> list[Path]:
    """Write every example archive into ``store`` (skipping existing ones); returns their paths."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    paths = []
    for example in examples():
        out = store / example.archive_name
        if out.exists():
            logger.debug("example %s already in the store; keeping it", out)
        else:
            _build_example(example, out)
        paths.append(out)
    return paths


def _build_example(example: Example, out: Path) -> Path:
    import joblib

    with tempfile.TemporaryDirectory(prefix="modelpool-example-") as tmp:
        workdir = Path(tmp)
        model_path = workdir / example.model_file
        joblib.dump(example.train(), model_path)
        files = [model_path]
        for source, name in example.extra_files:
            shutil.copyfile(source, workdir / name)
            files.append(workdir / name)
        manifest = Manifest(
            name=example.name, version=example.version, handler=example.handler,
            model_file=example.model_file, description=example.description,
            inputs=example.inputs, outputs=example.outputs, extra=example.extra,
        )
        return build_archive(files, manifest, out)


def archive_command(
    name: str,
    version: str,
    handler: str,
    files: Sequence[Union[str, Path]],
    out: Optional[Union[str, Path]] = None,
    model_file: Optional[Union[str, Path]] = None,
    description: str = "",
    service_type: str = "MODEL",
    parameters: Optional[Union[str, list]] = None,
) -> Path:
    """``modelpool archive``: package files into a model archive (like torch-model-archiver).

    ``service_type`` and ``parameters`` are Seldon's ``--service-type`` and ``--parameters`` (the JSON list,
    as Seldon's flag takes it), written to the manifest.

    ``model_file`` may be a path; it is added to the archive if not already among ``files`` and
    recorded by its base name. ``out`` may be a file, a directory, or None for
    ``./<name>-<version>.zip``.
    """
    paths = [Path(f) for f in files]
    model_name = None
    if model_file is not None:
        model_path = Path(model_file)
        model_name = model_path.name
        if model_name not in {p.name for p in paths} and model_path.is_file():
            paths.append(model_path)
    if isinstance(parameters, str):
        parse_parameters(parameters)  # bad JSON: an error naming parameters, not a traceback
        parameters = json.loads(parameters) if parameters.strip() else []
    manifest = Manifest(name=name, version=version, handler=handler, model_file=model_name,
                        description=description, service_type=service_type, parameters=parameters or [])
    return build_archive(paths, manifest, Path.cwd() if out is None else Path(out))
