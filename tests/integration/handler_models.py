"""Models made on the spot from a handler's source, for tests of how the server treats handlers."""
from __future__ import annotations

from pathlib import Path

import requests

#: A model that raises on negative readings: for 500s, error logs, tracebacks and failed batch rows.
FRAGILE_HANDLER = """
import numpy as np

def predict(data):
    if (np.asarray(data) < 0).any():
        raise RuntimeError("negative readings are not supported by this model")
    return np.asarray(data).sum(axis=1)
"""


def store_handler_archive(cluster, tmp_path: Path, name: str, handler_source: str) -> str:
    """Write ``<name>-1.zip`` (handler ``<name>:predict``) into the cluster's model store; its store name."""
    from modelpool.cluster.settings import load_settings
    from modelpool.deployments.examples import archive_command

    source = tmp_path / f"{name}.py"
    source.write_text(handler_source)
    archive = f"{name}-1.zip"
    archive_command(name=name, version="1", handler=f"{name}:predict", files=[source],
                    out=load_settings({}, cluster.env).model_store_path / archive)
    return archive


def register_handler_model(cluster, admin: requests.Session, tmp_path: Path, name: str, handler_source: str,
                           **params) -> requests.Response:
    """Store the archive and register it synchronously (``params``: initial_workers, response_timeout, ...)."""
    archive = store_handler_archive(cluster, tmp_path, name, handler_source)
    return admin.post(f"{cluster.url}/models", params={"url": archive, "synchronous": "true", **params})
