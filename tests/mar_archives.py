"""TorchServe/MMS model archives (``.mar``) built the way torch-model-archiver builds them, for the tests.

torch-model-archiver copies the serialized file, the handler and every extra file flat into one
folder, zips that folder's files by their paths relative to it (deflated) and writes the manifest
last, as ``MAR-INF/MANIFEST.json``. No torch is needed: the model is a scikit-learn classifier trained
on the iris data set and the handlers are plain Python on modelpool's contract.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Optional

IRIS_HANDLER = '''
import json

import joblib
import numpy as np


class IrisClassifier:
    """Loads the serialized file and the label map TorchServe's examples ship as index_to_name.json."""

    def initialize(self, context):
        self.model = joblib.load(context.model_dir / context.manifest.model_file)
        self.labels = json.loads((context.model_dir / "index_to_name.json").read_text())

    def predict(self, data):
        classes = self.model.predict(np.asarray(data, dtype=np.float64))
        return {"predict": classes, "label": np.array([self.labels[str(c)] for c in classes])}
'''
PROBA_HANDLER = '''
import joblib


class Probabilities:
    def initialize(self, context):
        self.model = joblib.load(context.model_dir / context.manifest.model_file)

    def predict(self, data):
        return {"predict_proba": self.model.predict_proba(data)}
'''
TORCH_HANDLER = "import torch\n\n\nclass Net:\n    def predict(self, data):\n        return torch.as_tensor(data)\n"
LABELS = {"0": "setosa", "1": "versicolor", "2": "virginica"}


def train_iris(path: Path) -> Path:
    """A LogisticRegression fitted on the iris data set, saved with joblib at ``path``."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    joblib.dump(LogisticRegression(max_iter=1000).fit(data.data, data.target), path)
    return path


def build_mar(out: Path, model_file: Optional[Path], handler: str = "iris_handler.py",
              sources: Optional[dict] = None, extra: Optional[dict] = None, name: str = "iris_mar",
              version: Optional[str] = "1.0", runtime: str = "python", **model_keys: str) -> Path:
    """``torch-model-archiver --model-name NAME --version V --serialized-file F --handler H --extra-files ...``.

    ``sources`` and ``extra`` are file name -> text, copied beside the handler (``iris_handler.py``
    and ``index_to_name.json`` always are); ``model_keys`` are more keys of the manifest's ``model``.
    """
    staging = Path(tempfile.mkdtemp(prefix="mar-staging-"))
    try:
        files = {"iris_handler.py": IRIS_HANDLER, "index_to_name.json": json.dumps(LABELS), **(sources or {}),
                 **(extra or {})}
        for relative, text in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text)
        model = {"modelName": name, "handler": os.path.basename(handler), **model_keys}
        if model_file is not None:
            shutil.copy(model_file, staging)
            model["serializedFile"] = model_file.name
        if version is not None:
            model["modelVersion"] = version
        manifest = {"createdOn": datetime.now().strftime("%d/%m/%Y %H:%M:%S"), "runtime": runtime,
                    "model": model, "archiverVersion": "0.12.0"}
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for root, _, names in os.walk(staging):
                for file_name in names:
                    path = os.path.join(root, file_name)
                    z.write(path, os.path.relpath(path, staging))
            z.writestr(os.path.join("MAR-INF", "MANIFEST.json"), json.dumps(manifest, indent=2))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
