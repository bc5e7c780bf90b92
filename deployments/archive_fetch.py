"""Where a replica gets its archive: a local path, or a copy of an object in object storage.

Registered models are copied into object storage (``models/{name}/{version}/...``) so a replica on
any node can load them; each node keeps a local copy in its cache, downloaded once.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional

from modelpool.cluster.object_store import ObjectStore, object_store_from_settings

STORE_SCHEME = "objects://"


def store_source(key: str) -> str:
    return STORE_SCHEME + key


def open_store(config: Optional[dict]) -> Optional[ObjectStore]:
    """An ObjectStore from the ``{"uri", "s3_endpoint", "s3_region"}`` dict replicas receive."""
    if not config or not config.get("uri"):
        return None
    return object_store_from_settings(config["uri"], config.get("s3_endpoint"), config.get("s3_region"))


def local_archive(source: str, cache_dir: Path, store: Optional[ObjectStore]) -> Path:
    """A local path for ``source``, downloading it into ``cache_dir`` first when it lives in the store."""
    if not source.startswith(STORE_SCHEME):
        return Path(source)
    if store is None:
        raise RuntimeError(f"archive {source} is in object storage but no object store is configured")
    key = source[len(STORE_SCHEME):]
    folder = cache_dir / "downloads" / hashlib.sha256(f"{store.uri}/{key}".encode()).hexdigest()[:16]
    target = folder / Path(key).name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".partial-")
    os.close(handle)
    try:
        store.download_file(key, Path(partial))
        os.replace(partial, target)  # whole file or nothing, even with concurrent loaders
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
