"""A registration's archive on its way in: copied into object storage, shown to load.

It arrives from ``modelpool.management.model_source`` (a store name, or a URL fetched there).

Register records a model only once its archive is where every replica can read it (object
storage, content-addressed, so the same bytes registered twice are stored once) and has loaded,
handler included, in a throwaway Ray worker: a broken archive is the register request's 400, not a
replica that fails to start later. These steps need the settings and the store, never the registry,
so they live here and ``modelpool.management.model_manager`` keeps the MMS and pool calls.
"""
from __future__ import annotations

import json
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import ray

from modelpool.cluster.object_store import ObjectStore
from modelpool.cluster.settings import Settings
from modelpool.deployments.archive import file_sha256
from modelpool.deployments.archive_fetch import store_source
from modelpool.deployments.archive_formats import REGISTERED_NAME
from modelpool.deployments.errors import RequestError


def copy_to_store(store: ObjectStore, local: Path, name: str, version: str,
                  registered: Optional[dict] = None) -> tuple[str, str]:
    """Put the archive in object storage (zipping a directory), content-addressed: (key, digest[:16]).

    ``registered``: register's service_type and parameters, written into the stored copy
    (``archive_formats.REGISTERED_NAME``), so every reader of the archive sees the manifest register made."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = local if local.is_file() else zip_directory(local, Path(tmp) / f"{name}-{version}.zip")
        if registered:
            (Path(tmp) / "registered").mkdir()
            archive = with_registered_entry(archive, registered, Path(tmp) / "registered" / archive.name)
        digest = file_sha256(archive)
        key = f"models/{name}/{version}/{digest[:16]}-{archive.name}"
        if not store.exists(key):
            store.upload_file(archive, key)
    return key, digest[:16]


def with_registered_entry(archive: Path, registered: dict, out: Path) -> Path:
    """A copy of the zip ``archive`` whose ``REGISTERED_NAME`` entry holds ``registered`` (any earlier one dropped)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in source.infolist():
            if info.filename != REGISTERED_NAME:
                copy.writestr(info, source.read(info))
        copy.writestr(REGISTERED_NAME, json.dumps(registered, sort_keys=True))
    return out


def zip_directory(directory: Path, out: Path) -> Path:
    """A directory archive as one zip (regular files only, sorted), so replicas download a single object."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
            archive.write(path, path.relative_to(directory).as_posix())
    return out


#: (archive digest, handler) pairs that loaded in this process's checks, newest last. The same bytes with the same
#: handler load the same way, and a check costs a throwaway worker (~3.4 s here, most of a register's time), so a
#: version registered again from the same archive is not checked again. Bounded; lost with the replica.
_LOADED: "OrderedDict[tuple[str, Optional[str]], None]" = OrderedDict()
_LOADED_MAX = 256
_LOADED_LOCK = threading.Lock()


def check_loads(store: ObjectStore, key: str, settings: Settings, handler: Optional[str], digest: str = "") -> None:
    """Load the stored archive with ``handler`` (register's override, or the manifest's) in a throwaway worker,
    unless the same archive (``digest``) loaded with the same handler before.

    When it does not load, the stored copy is deleted and the answer is a 400 naming ``handler`` when the
    handler's own code failed (an import of torch, a wrong signature), ``parameters`` when the manifest's
    parameters do not fit the handler, else ``url``.
    """
    if digest and _loaded_before(digest, handler):
        return
    problem = ray.get(_load_check.remote(store_source(key), str(settings.cache_path),
                                         settings.object_store_config, handler))
    if problem is not None:
        store.delete(key)
        message, field = problem
        raise RequestError(f"the archive failed to load: {message}", status=400,
                           field=field if field in ("handler", "parameters") else "url")
    if digest:
        with _LOADED_LOCK:
            _LOADED[(digest, handler)] = None
            while len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)


def _loaded_before(digest: str, handler: Optional[str]) -> bool:
    with _LOADED_LOCK:
        if (digest, handler) not in _LOADED:
            return False
        _LOADED.move_to_end((digest, handler))
        return True


@ray.remote(num_cpus=0, max_retries=0)
def _load_check(source: str, cache_dir: str, object_store: dict,
                handler: Optional[str] = None) -> Optional[tuple[str, Optional[str]]]:
    """Load the archive and its handler (``handler``: register's override) in a throwaway worker:
    None if it loads, else the loader's message and the field it names."""
    from modelpool.deployments.archive import unpack_archive
    from modelpool.deployments.archive_fetch import local_archive, open_store
    from modelpool.deployments.handler_loader import load_handler
    from modelpool.deployments.handlers import ModelContext

    try:
        archive = unpack_archive(local_archive(source, Path(cache_dir), open_store(object_store)), Path(cache_dir),
                                 handler=handler)
        load_handler(archive.model_dir, archive.manifest, ModelContext(archive.model_dir, archive.manifest))
        return None
    except RequestError as exc:
        return f"{exc.message}" + (f" (field {exc.field})" if exc.field else ""), exc.field
    except Exception as exc:  # noqa: BLE001 - any failure is the archive's: report it
        return f"{type(exc).__name__}: {exc}", None
