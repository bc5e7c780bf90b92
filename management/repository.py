"""The Open Inference Protocol's model repository extension (Triton's, which MLServer copies), mapped onto the registry.

Pure: registry records, the model store's listing and what Serve says about each application go in;
index entries, the archives a load registers and the parsed request bodies come out. The routes
(``modelpool.management.api``) and the Serve calls (``modelpool.management.model_manager``) stay thin around it.

The mapping, and why:

- The index lists every registered version (the registry ``GET /models`` reads, so the two always
  agree) and every archive of the model store that is not registered, as ``UNAVAILABLE``: Triton's
  index lists "every model available in a model repository, even if it is not currently loaded",
  so a client learns what ``load`` can bring.
- ``load`` registers every version of the model that the store holds and the registry does not:
  the store is modelpool's model repository (``--model-store``), the registry is what is loaded.
- ``unload`` unregisters every version, as Triton unloads a model with all its versions.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from modelpool.deployments.errors import RequestError
from modelpool.management.registry import version_sort_key

# The states Triton and MLServer report (MLServer's ``State`` enum has these and UNKNOWN).
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
#: Triton's reason for a model that was unloaded; kept so scripts written for Triton read it alike.
REASON_UNLOADED = "unloaded"
REASON_NOT_LOADED = "in the model store, not loaded"
#: Load parameters modelpool cannot honour. Ignoring them would serve something other than what was
#: asked for, so they are refused; any other parameter is accepted and ignored, as Triton does.
REFUSED_LOAD_PARAMETERS = {
    "config": "modelpool reads a model's settings from its archive's MANIFEST.json and from POST /models and "
              "PUT /models/{model_name}; leave parameters.config out and use those",
    "file:": "modelpool loads archives from the model store; put the archive in --model-store "
             "(`modelpool archive ... --out <store>`) and leave the file: parameters out",
}

StoreArchive = tuple[str, str, Path]  # (manifest name, manifest version, path in the model store)


@dataclass(frozen=True)
class Serving:
    """What Serve says about the application serving one registered version (its own, or the generic pool)."""

    status: str               # Serve's ApplicationStatus name; NOT_DEPLOYED when there is no such application
    message: str = ""
    running_replicas: int = 0


@dataclass(frozen=True)
class IndexEntry:
    """One row of ``POST /v2/repository/index``, in Triton's shape."""

    name: str
    version: str
    state: str
    reason: str = ""


def serving_state(serving: Serving) -> tuple[str, str]:
    """(state, reason) of a registered version from its application's status.

    An application that updates (DEPLOYING) while replicas run still answers, so it is READY, as a
    client that infers right now would find. One with no application yet is LOADING: management
    deploys right after it writes the registry, so that is the window between the two.
    """
    status = serving.status
    if status == "RUNNING" or (status in ("DEPLOYING", "NOT_STARTED") and serving.running_replicas > 0):
        return READY, ""
    if status in ("DEPLOYING", "NOT_STARTED", "NOT_DEPLOYED"):
        return LOADING, serving.message or "replicas are starting"
    if status == "DELETING":
        return UNLOADING, serving.message
    return UNAVAILABLE, serving.message or f"Serve reports the application {status}"


def index(registered: Iterable[tuple[str, str, Serving]], store: Iterable[StoreArchive],
          unloaded: set[tuple[str, str]], ready_only: bool = False) -> list[dict[str, str]]:
    """Index entries: one per registered version, one per store version that is not registered.

    ``unloaded`` holds the versions someone unregistered (the registry remembers them): their store
    archives say ``unloaded`` as Triton does after an unload, the others say they were never loaded.
    Sorted by name then natural version, so a listing reads like ``GET /models``.
    """
    entries: dict[tuple[str, str], IndexEntry] = {}
    for name, version, serving in registered:
        state, reason = serving_state(serving)
        entries[(name, version)] = IndexEntry(name, version, state, reason)
    for name, version, _ in store:
        if (name, version) not in entries:
            reason = REASON_UNLOADED if (name, version) in unloaded else REASON_NOT_LOADED
            entries[(name, version)] = IndexEntry(name, version, UNAVAILABLE, reason)
    ordered = sorted(entries.values(), key=lambda e: (e.name, version_sort_key(e.version)))
    return [asdict(entry) for entry in ordered if not ready_only or entry.state == READY]


def archives_to_load(name: str, store: Sequence[StoreArchive], registered_versions: set[str]) -> list[Path]:
    """The store archives a load of ``name`` registers: one per version not registered yet.

    Two archives of the same version: the first in the store's order wins (the listing is sorted).
    A model that is registered and has nothing new in the store needs nothing: an empty list. A
    name that is neither registered nor in the store is a 404 that says where an archive must go.
    """
    chosen: dict[str, Path] = {}
    for archive_name, version, path in store:
        if archive_name == name and version not in registered_versions:
            chosen.setdefault(version, path)
    in_store = any(archive_name == name for archive_name, _, _ in store)
    if not in_store and not registered_versions:
        raise RequestError(
            f"model '{name}' has no archive in the model store and is not registered; put an archive whose "
            f"MANIFEST.json names '{name}' in --model-store (`modelpool archive --name {name} ... --out <store>`), "
            "or register one from a URL with POST /models", status=404, field="model_name")
    return [chosen[version] for version in sorted(chosen, key=version_sort_key)]


def unload_versions(name: str, registered_versions: Sequence[str]) -> list[str]:
    """Every registered version of ``name`` (an unload takes them all); 404 if there is none."""
    if not registered_versions:
        raise RequestError(f"model '{name}' is not registered, so there is nothing to unload; "
                           "POST /v2/repository/index lists the models and their states", status=404, field="model_name")
    return list(registered_versions)


# ------------------------------------------------------------------------------------ request bodies
def _json_object(body: bytes, shape: str) -> dict[str, Any]:
    """An empty body as ``{}``, a JSON object as itself; anything else is a 400 that shows the shape."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise RequestError(f"the body is not valid JSON; send {shape} or no body", field="body") from None
    if not isinstance(parsed, dict):
        raise RequestError(f"the body must be a JSON object: {shape}", field="body")
    return parsed


def _flag(values: dict[str, Any], key: str, field: str) -> bool:
    value = values.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"{field} must be true or false, not {json.dumps(value)[:40]}", field=field)
    return value


def _parameters(body: bytes, shape: str) -> dict[str, Any]:
    parameters = _json_object(body, shape).get("parameters", {})
    if not isinstance(parameters, dict):
        raise RequestError(f"parameters must be a JSON object: {shape}", field="parameters")
    return parameters


def parse_index_request(body: bytes) -> bool:
    """``ready`` of Triton's index request (default false): true lists only the models ready to infer."""
    return _flag(_json_object(body, '{"ready": true}'), "ready", "ready")


def parse_load_request(body: bytes) -> dict[str, Any]:
    """The load request's parameters: unknown ones are accepted and ignored, those it cannot honour refused."""
    parameters = _parameters(body, '{"parameters": {...}}')
    for key in parameters:
        for refused, fix in REFUSED_LOAD_PARAMETERS.items():
            if key == refused or (refused.endswith(":") and key.startswith(refused)):
                raise RequestError(f"parameters.{key} is not supported: {fix}", field=f"parameters.{key}")
    return parameters


def parse_unload_request(body: bytes) -> Optional[bool]:
    """``unload_dependents`` (checked, then ignored: a modelpool model loads no other model along with it)."""
    parameters = _parameters(body, '{"parameters": {"unload_dependents": false}}')
    if "unload_dependents" not in parameters:
        return None
    return _flag(parameters, "unload_dependents", "parameters.unload_dependents")
