"""MMS and TorchServe model archives (``.mar``): ``MAR-INF/MANIFEST.json`` read as modelpool's manifest.

torch-model-archiver (and MMS's model-archiver) zip the model's files flat at the archive root and
write the manifest to ``MAR-INF/MANIFEST.json``::

    {"createdOn": "...", "runtime": "python", "archiverVersion": "0.x",
     "model": {"modelName": "m", "modelVersion": "1.0", "handler": "my_handler.py",
               "serializedFile": "model.joblib", "modelFile": "model.py", "requirementsFile": "..."}}

MMS's manifest has the same ``model`` object (its handler written ``module:function``) plus
``engine``, ``publisher`` and specification versions. The mapping:

====================== =========================================================================
``.mar``               modelpool manifest
====================== =========================================================================
model.modelName        name
model.modelVersion     version (both required, as TorchServe and MMS require them)
model.handler          handler, resolved as TorchServe resolves it (:mod:`modelpool.deployments.handler_refs`)
model.serializedFile   model_file
every other file       files (model file, extra files, requirements: unpacked beside the handler)
runtime                runtime: python, python2 or python3; other runtimes are refused
description            description (top level, else the model's)
the whole manifest     extra["mar"], for handlers and for describe (engine, archiverVersion, ...)
====================== =========================================================================
"""
from __future__ import annotations

import json
from typing import Any, Optional

from modelpool.deployments.errors import RequestError
from modelpool.deployments.handler_refs import ArchiveFiles, resolve_handler
from modelpool.deployments.manifest import MANIFEST_NAME, Manifest, check_segment

MAR_INF = "MAR-INF"
MAR_MANIFEST_NAME = f"{MAR_INF}/{MANIFEST_NAME}"
EXTRA_KEY = "mar"


def manifest_from_mar(raw: bytes, files: ArchiveFiles, handler: Optional[str] = None) -> Manifest:
    """modelpool's manifest for an archive whose ``MAR-INF/MANIFEST.json`` holds ``raw``.

    ``handler`` (register's ``handler=``) is used instead of ``model.handler``, which is then not
    looked at: as in MMS, an archive naming a handler that cannot run here (a TorchServe built-in)
    still serves with one that can. Problems with it name the field ``handler``.
    """
    data = _parse(raw)
    model = data.get("model")
    if not isinstance(model, dict):
        raise RequestError(f"{MAR_MANIFEST_NAME} has no 'model' object; rebuild the archive with torch-model-archiver",
                           field="manifest.model")
    name = _segment(model, "modelName")
    version = _segment(model, "modelVersion")
    spec, field = (handler, "handler") if handler is not None else (model.get("handler"), "manifest.model.handler")
    if not isinstance(spec, str) or not spec:
        raise RequestError(f"{MAR_MANIFEST_NAME} names no model.handler; rebuild the archive with --handler, or pass "
                           "handler= when registering it", field=field)
    resolved = resolve_handler(spec, files, field=field)
    model_file = model.get("serializedFile") or None
    if model_file is not None and not isinstance(model_file, str):
        raise RequestError(f"{MAR_MANIFEST_NAME}: model.serializedFile must be a file name",
                           field="manifest.model.serializedFile")
    description = data.get("description") or model.get("description") or ""
    try:
        return Manifest(
            name=name,
            version=version,
            handler=resolved,
            runtime=_runtime(data.get("runtime")),
            model_file=model_file,
            files=[n for n in files.names() if _is_payload(n) and n != model_file],
            description=description if isinstance(description, str) else "",
            extra={EXTRA_KEY: data},
        )
    except RequestError as exc:
        if handler is None or exc.field != "manifest.model_file":
            raise
        raise RequestError(f"handler {handler!r} does not fit archive {name}:{version}: {exc.message}",
                           field="handler") from None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"{MAR_MANIFEST_NAME} is not valid JSON ({exc}); rebuild the archive",
                           field="manifest") from None
    if not isinstance(data, dict):
        raise RequestError(f"{MAR_MANIFEST_NAME} must hold a JSON object", field="manifest")
    return data


def _segment(model: dict[str, Any], key: str) -> str:
    """modelName and modelVersion become URL segments and directory names: checked like modelpool's own."""
    value = model.get(key)
    if value is None or value == "":
        raise RequestError(f"{MAR_MANIFEST_NAME} has no model.{key}; TorchServe and MMS require it too: rebuild "
                           f"the archive with --{'model-name' if key == 'modelName' else 'version'}",
                           field=f"manifest.model.{key}")
    try:
        return check_segment(str(value), f"model.{key}")
    except ValueError as exc:
        raise RequestError(f"{MAR_MANIFEST_NAME}: {exc}", field=f"manifest.model.{key}") from None


def _runtime(value: Any) -> str:
    """TorchServe writes python or python3 (MMS also python2); all of them run as modelpool's Python."""
    runtime = "python" if value is None else str(value)
    if runtime.lower() not in ("python", "python2", "python3"):
        raise RequestError(f"{MAR_MANIFEST_NAME} asks for runtime {runtime!r}; modelpool runs Python handlers only "
                           "(runtime python)", field="manifest.runtime")
    return "python"


def _is_payload(name: str) -> bool:
    """Files the model ships (the manifest folder and a stray root MANIFEST.json are the archive's own)."""
    return not name.startswith(f"{MAR_INF}/") and name != MANIFEST_NAME
