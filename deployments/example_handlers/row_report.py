"""Example Python handler shipped inside the ``iris_report`` archive as ``row_report.py``.

It shows the parts of the contract a custom model needs: load files from its own archive in
``initialize``, return several named outputs, and write per-row artifacts only when batch scoring
asks for them (``context.artifact_dir(i)`` is None when serving online). ``predict_raw`` shows
payload passthrough (``--payload-passthrough``): CSV rows in, CSV answers out, no JSON at all.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import joblib
import numpy as np

from modelpool.deployments.errors import RequestError
from modelpool.deployments.handlers import Handler, ModelContext


class RowReport(Handler):
    """Iris classifier that reports the class, its confidence and (in batch) a report per row."""

    raw_media_type = "text/csv"

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

    def predict_raw(self, body: bytes, content_type: str) -> bytes:
        """CSV rows of four measurements (a header line is skipped) -> CSV of class, name, confidence."""
        rows = [r for r in csv.reader(io.StringIO(body.decode("utf-8"))) if r]
        if rows and not _is_number(rows[0][0]):
            rows = rows[1:]
        try:
            features = np.asarray(rows, dtype=np.float64).reshape(len(rows), 4)
        except ValueError:
            raise RequestError("send CSV rows of four numbers (sepal length, sepal width, petal length, "
                               "petal width), optionally under a header line", field="body") from None
        answer = self.predict(features)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["class", "class_name", "confidence"])
        for cls, confidence in zip(answer["predict"], answer["confidence"]):
            writer.writerow([int(cls), self.class_names[int(cls)], f"{float(confidence):.6f}"])
        return out.getvalue().encode()

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


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
