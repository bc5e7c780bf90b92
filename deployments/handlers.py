"""The handler contract: how a replica turns named input tensors into named output tensors.

One small contract (like TorchServe's BaseHandler): ``initialize`` loads the model once,
``handle`` runs ``preprocess -> predict -> postprocess`` per batch. The built-in
:class:`SklearnHandler` covers joblib-pickled scikit-learn estimators; anything else ships a
``module.py`` in its archive and names ``module:attr`` (a Handler subclass, a duck-typed class with
``predict``, or a plain function), which ``modelpool.deployments.handler_loader`` imports and wraps.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import Manifest


@dataclass
class ModelContext:
    """What a handler knows about its model.

    ``artifact_root`` is set by batch scoring for each chunk (None when serving online), so a
    handler can write per-row files next to its predictions without knowing about jobs.
    ``requested_outputs`` names the outputs the current call's requests asked for (None: the
    handler's default outputs), so a handler can skip work nobody will read, such as
    ``predict_proba``.
    """

    model_dir: Path
    manifest: Manifest
    artifact_root: Optional[Path] = None
    #: the manifest's typed parameters (Seldon's --parameters); a class handler also gets them as keyword arguments
    parameters: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.parameters is None:
            self.parameters = self.manifest.typed_parameters
    requested_outputs: Optional[tuple[str, ...]] = None

    def artifact_dir(self, row: int) -> Optional[Path]:
        """``artifact_root/<row>`` (created now), or None when no artifacts are wanted.

        ``row`` is the index of the row within the current ``predict`` call.
        """
        if self.artifact_root is None:
            return None
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row < 0:
            raise ValueError(f"artifact_dir needs a row index >= 0, got {row!r}")
        path = Path(self.artifact_root) / str(int(row))
        path.mkdir(parents=True, exist_ok=True)
        return path


class Handler(ABC):
    """Base class for model handlers; subclasses implement :meth:`predict`."""

    context: ModelContext

    def initialize(self, context: ModelContext) -> None:
        """Load the model; called once per replica before any request. Default: keep context."""
        self.context = context

    def preprocess(self, inputs: dict[str, np.ndarray]) -> Any:
        """One input -> its 2-D array (rows x features); several -> a DataFrame of columns."""
        return default_preprocess(inputs)

    @abstractmethod
    def predict(self, data: Any) -> Any:
        """Run the model on preprocessed data."""

    def postprocess(self, predictions: Any) -> dict[str, np.ndarray]:
        """A dict maps output names to arrays; anything else is the ``predict`` output."""
        return default_postprocess(predictions)

    def handle(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the whole pipeline and check every output has one entry per input row."""
        rows = count_rows(inputs)
        outputs = self.postprocess(self.predict(self.preprocess(inputs)))
        check_outputs(outputs, rows, self.describe)
        return outputs

    def describe(self) -> str:
        """Name used in error messages: the manifest's handler and model when known."""
        context = getattr(self, "context", None)
        if context is None:
            return type(self).__name__
        m = context.manifest
        return f"{m.handler!r} ({type(self).__name__}) of model {m.name}:{m.version}"


# ----------------------------------------------------------------------- default pre/post-process


def default_preprocess(inputs: dict[str, np.ndarray]) -> Any:
    """Shape inputs the way scikit-learn-like models expect them."""
    if not inputs:
        raise RequestError("the request has no inputs; send at least one input tensor", field="inputs")
    if len(inputs) == 1:
        (name, value), = inputs.items()
        return _as_matrix(name, np.asarray(value))
    return _as_frame(inputs)


def _as_matrix(name: str, array: np.ndarray) -> np.ndarray:
    if array.ndim == 1:
        return array.reshape(-1, 1)
    if array.ndim == 2:
        return array
    raise RequestError(
        f"input {name!r} has shape {list(array.shape)}; send [rows, features] or [rows]",
        status=422, field="inputs",
    )


def _as_frame(inputs: dict[str, np.ndarray]) -> pd.DataFrame:
    """Several inputs become the columns of one table (each must be one value per row)."""
    columns: dict[str, np.ndarray] = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise RequestError(
                f"input {name!r} has shape {list(array.shape)}; with several inputs each must be "
                "[rows] or [rows, 1] (one column each)",
                status=422, field="inputs",
            )
        columns[name] = array
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise RequestError(
            f"inputs have different numbers of rows {lengths}; send the same number for each",
            status=422, field="inputs",
        )
    return pd.DataFrame(columns)


def default_postprocess(predictions: Any) -> dict[str, np.ndarray]:
    if isinstance(predictions, dict):
        return {str(key): np.asarray(value) for key, value in predictions.items()}
    return {"predict": np.asarray(predictions)}


def count_rows(inputs: dict[str, np.ndarray]) -> int:
    """Rows in a request: the first dimension of its inputs (they agree once preprocessed)."""
    for value in inputs.values():
        shape = np.shape(value)
        return shape[0] if shape else 1
    return 0


def check_outputs(outputs: Any, rows: int, who: Callable[[], str]) -> None:
    """A handler must return one entry per input row for every output, or batching breaks."""
    if not isinstance(outputs, dict):
        raise RuntimeError(f"handler {who()} returned {type(outputs).__name__} from postprocess; "
                           "return a dict of output name -> array")
    for name, value in outputs.items():
        shape = np.shape(value)
        if not shape or shape[0] != rows:
            raise RuntimeError(
                f"handler {who()} returned output {name!r} with shape {list(shape)} for {rows} input "
                f"rows; every output needs its first dimension equal to the number of rows"
            )


# -------------------------------------------------------------------------------- built-in ones


class SklearnHandler(Handler):
    """A joblib-pickled scikit-learn estimator (``handler: "sklearn"``)."""

    def initialize(self, context: ModelContext) -> None:
        super().initialize(context)
        self.model = _load_joblib(context)
        self._n_features: Optional[int] = getattr(self.model, "n_features_in_", None)
        names = getattr(self.model, "feature_names_in_", None)
        self._feature_names: Optional[list[str]] = None if names is None else [str(n) for n in names]
        self._has_proba = hasattr(self.model, "predict_proba")

    def predict(self, data: Any) -> dict[str, Any]:
        """``predict`` always; ``predict_proba`` only when a request asks for it (as MLServer does)."""
        X = self._model_input(data)
        requested = self.context.requested_outputs
        try:
            out = {"predict": self.model.predict(X)}
            if self._has_proba and requested and "predict_proba" in requested:
                out["predict_proba"] = self.model.predict_proba(X)
        except ValueError as exc:  # scikit-learn's input validation (NaN, strings, ...)
            raise RequestError(f"model {self._model_id()} rejected the input: {exc}",
                               status=422, field="inputs") from exc
        return out

    def _model_input(self, data: Any) -> Any:
        """Check the width, then match how the model was fitted (array or named columns)."""
        width = np.shape(data)[1] if np.ndim(data) == 2 else None
        if self._n_features is not None and width is not None and width != self._n_features:
            raise RequestError(
                f"model {self._model_id()} expects {self._n_features} features per row and got "
                f"{width}; send inputs shaped [rows, {self._n_features}]",
                status=422, field="inputs",
            )
        if self._feature_names is None:
            return data.to_numpy() if isinstance(data, pd.DataFrame) else data
        if isinstance(data, pd.DataFrame):
            missing = [n for n in self._feature_names if n not in data.columns]
            if missing:
                raise RequestError(
                    f"model {self._model_id()} expects inputs named {self._feature_names}; "
                    f"missing {missing}", status=422, field="inputs",
                )
            return data[self._feature_names]
        return pd.DataFrame(data, columns=self._feature_names)

    def _model_id(self) -> str:
        return f"{self.context.manifest.name}:{self.context.manifest.version}"


def _load_joblib(context: ModelContext) -> Any:
    import joblib  # deferred: only sklearn-handler replicas pay for it

    manifest = context.manifest
    if not manifest.model_file:
        raise RequestError("the 'sklearn' handler needs model_file in the manifest",
                           field="manifest.model_file")
    root = Path(context.model_dir).resolve()
    path = (root / manifest.model_file).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise RequestError(f"model file {manifest.model_file!r} is not in the archive of "
                           f"{manifest.name}:{manifest.version}", field="manifest.model_file")
    try:
        return joblib.load(path)
    except Exception as exc:
        raise RequestError(f"could not load {manifest.model_file!r} with joblib "
                           f"({type(exc).__name__}: {exc})", field="manifest.model_file") from exc


class CallableHandler(Handler):
    """Wraps a plain function ``fn(data) -> predictions`` named as ``module:function``."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def predict(self, data: Any) -> Any:
        return self.fn(data)

    def describe(self) -> str:
        return f"{super().describe()} function {getattr(self.fn, '__name__', self.fn)!r}"
