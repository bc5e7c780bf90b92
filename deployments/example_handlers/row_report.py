"""Example Python handler shipped inside the ``iris_report`` archive as ``row_report.py``.

It shows the parts of the contract a custom model needs: load files from its own archive in
``initialize``, return several named outputs, and write per-row artifacts only when batch scoring
asks for them (``context.artifact_dir(i)`` is None when serving online).
"""
from __future__ import annotations

import json
from typing import Any

import joblib
import numpy as np

from deployments.handlers import Handler, ModelContext


class RowReport(Handler):
    """Iris classifier that reports the class, its confidence and (in batch) a report per row."""

    def initialize(self, context: ModelContext) -> None:
        super().initialize(context)
        self.model = joblib.load(context.model_dir / context.manifest.model_file)
        names = context.manifest.extra.get("class_names")
        self.class_names = list(names) if names else [str(c) for c in self.model.classes_]

    def predict(self, data: Any) -> dict[str, np.ndarray]:
        features = np.asarray(data, dtype=np.float64)
        proba = self.model.predict_proba(features)
        best = proba.argmax(axis=1)
        classes = self.model.classes_[best]
        confidence = proba[np.arange(len(best)), best]
        for i in range(len(best)):
            self._write_report(i, features[i], int(classes[i]), float(confidence[i]))
        return {"predict": classes, "confidence": confidence}

    def _write_report(self, row: int, features: np.ndarray, cls: int, confidence: float) -> None:
        directory = self.context.artifact_dir(row)
        if directory is None:
            return
        report = {
            "features": [float(x) for x in features],
            "class": cls,
            "class_name": self.class_names[cls] if 0 <= cls < len(self.class_names) else str(cls),
            "confidence": confidence,
        }
        (directory / "report.json").write_text(json.dumps(report, indent=2))
