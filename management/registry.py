"""The durable registry: which model versions exist, which is the default, which pools to keep.

It lives in the object store (``registry/`` by default), so it survives restarts of the
controller and is shared by every node of a cluster without a database:

* ``registry/models/{name}/{version}.json``  - one :class:`ModelRecord` per version
* ``registry/defaults/{name}.json``          - ``{"version": ...}``, the version chosen as default
* ``registry/pools/{name}/{version}.json``   - one :class:`PoolRecord` per version
* ``registry/graphs/{name}.json``             - one :class:`GraphRecord` per inference graph

One file per record keeps every write a whole-object atomic write (never a torn file). Every record
carries a ``revision`` (0 for files written before revisions existed); the management replicas change
records only through :mod:`modelpool.management.registry_writer`, whose compare-and-set on that revision
means two replicas racing on one record never both succeed over the same revision (no lost update).
This class reads for everyone and does the raw writes the writer decides. A record that cannot be read
is skipped with a warning instead of breaking every listing, because one bad file must not take the
whole registry down.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelpool.cluster.object_store import ObjectNotFound, ObjectStore, check_key
from modelpool.cluster.settings import DEFAULT_STARTUP_TIMEOUT_S
from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import check_segment

logger = logging.getLogger(__name__)

_SUFFIX = ".json"
#: Parallel reads when listing: S3 reads are latency-bound, so a listing reads records concurrently.
_LIST_THREADS = 16


def version_sort_key(version: str) -> tuple:
    """Natural order ("10" after "9", "1.10" after "1.9"); the raw string breaks ties ("01"/"1")."""
    parts = re.split(r"(\d+)", version)
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), version


def check_model_name(name: str) -> str:
    """Same rule as manifests (names become URL segments and keys); RequestError otherwise."""
    try:
        return check_segment(name, "model name")
    except ValueError as exc:
        raise RequestError(str(exc), field="model_name") from None


def check_model_version(version: str) -> str:
    try:
        return check_segment(version, "model version")
    except ValueError as exc:
        raise RequestError(str(exc), field="model_version") from None


def _now() -> float:
    return time.time()


_READERS: Optional[ThreadPoolExecutor] = None
_READERS_LOCK = threading.Lock()


def _readers() -> ThreadPoolExecutor:
    """Threads that read records in parallel (S3 round trips overlap), kept for the process's life:
    starting a pool per listing cost more than the reads on a local store."""
    global _READERS
    with _READERS_LOCK:
        if _READERS is None:
            _READERS = ThreadPoolExecutor(_LIST_THREADS, thread_name_prefix="registry-read")
        return _READERS


class _Record(BaseModel):
    """Common base: unknown fields are ignored so an older reader accepts a newer writer's files."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: str
    revision: int = 0  # bumped by every compare-and-set write (registry_cas); files from before it read as 0

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # "version": 2 in a hand-written record is harmless
        return value


class ModelRecord(_Record):
    """One registered model version and how it is served."""

    url: str
    source: str
    digest: str = ""  # content fingerprint of the archive: a new one means new replicas
    handler: str
    runtime: str
    batch_size: int
    max_batch_delay_ms: float
    initial_workers: int
    min_workers: int
    max_workers: int
    number_gpu: int = 0
    response_timeout_s: float
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S  # how long its workers may take to start (TorchServe's startup_timeout)
    drain_timeout_s: float = -1.0  # the last scale's timeout: how long stopped workers may drain (-1: no limit)
    #: requests that may wait at a replica beyond those it runs (register's or scale's max_queued_requests); None:
    #: --max-queued-requests of the server at the time it is served (and what records written before it had)
    max_queued_requests: Optional[int] = None
    loaded_at_startup: bool = False  # registered from the model store by `modelpool start` (TorchServe's loadedAtStartup)
    manifest: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Optional[str] = None  # of the register request that created it: a retry is answered, not refused
    registered_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)


class PoolRecord(_Record):
    """The worker pool kept for one model version."""

    initial_pool_size: int
    max_pool_size: int
    created_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)


class UnregisteredRecord(_Record):
    """A version someone unregistered: start-up must not register its store archive again."""

    unregistered_at: float = Field(default_factory=_now)


class GraphRecord(BaseModel):
    """An inference graph as ``PUT /graphs/{name}`` stored it: its root node in Seldon's nested shape."""

    model_config = ConfigDict(extra="ignore")

    name: str
    graph: dict[str, Any]
    revision: int = 0
    created_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)


RecordT = TypeVar("RecordT", bound=_Record)


class Registry:
    """Models, default versions and pools, stored as one JSON object per record."""

    def __init__(self, store: ObjectStore, prefix: str = "registry") -> None:
        self.store = store
        self.prefix = check_key(prefix)

    def __repr__(self) -> str:
        return f"Registry({self.store.uri!r}, prefix={self.prefix!r})"

    # ----------------------------------------------------------------------------------- keys

    def _record_key(self, kind: str, name: str, version: str) -> str:
        return f"{self.prefix}/{kind}/{check_model_name(name)}/{check_model_version(version)}{_SUFFIX}"

    def _default_key(self, name: str) -> str:
        return f"{self.prefix}/defaults/{check_model_name(name)}{_SUFFIX}"

    def key_of(self, kind: str, name: str, version: Optional[str] = None) -> str:
        """Where a record lives: ``models``/``pools``/``unregistered`` by name and version, ``defaults`` and
        ``graphs`` by name."""
        if kind == "defaults":
            return self._default_key(name)
        if kind == "graphs":
            return self._graph_key(name)
        if kind not in ("models", "pools", "unregistered") or version is None:
            raise ValueError(f"no registry record of kind {kind!r} with version {version!r}")
        return self._record_key(kind, name, version)

    def read_raw(self, key: str) -> Optional[dict]:
        """The stored JSON object at ``key``; None when missing or unreadable (as the typed reads skip it)."""
        try:
            value = self.store.read_json(key)
        except ObjectNotFound:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("treating unreadable registry record %s in %s as absent: %s", key, self.store.uri, exc)
            return None
        return value if isinstance(value, dict) else None

    def write_raw(self, key: str, value: Optional[dict]) -> None:
        """Store ``value`` at ``key`` (whole-object), or delete it when None: the writer's only way in."""
        if value is None:
            self.store.delete(key)
        else:
            self.store.write_json(key, value)

    def has_versions(self, name: str) -> bool:
        return bool(self.store.list(f"{self.prefix}/models/{check_model_name(name)}"))

    # --------------------------------------------------------------------------------- models

    def put_model(self, record: ModelRecord) -> None:
        """Create or replace the record of ``record.name`` / ``record.version`` (atomically)."""
        self._put("models", record)

    def get_model(self, name: str, version: str) -> Optional[ModelRecord]:
        """The record, or None if it is missing or unreadable."""
        return self._load(self._record_key("models", name, version), ModelRecord, name, version)

    def delete_model(self, name: str, version: str) -> bool:
        """Delete one version (True if it existed); the default goes once no version remains."""
        existed = self._delete(self._record_key("models", name, version))
        if not self.store.list(f"{self.prefix}/models/{name}"):
            self.store.delete(self._default_key(name))
        return existed

    def list_models(self) -> list[ModelRecord]:
        """Every readable model record, by name then natural version order."""
        return self._list("models", ModelRecord)

    def versions(self, name: str) -> list[str]:
        """Readable versions of ``name``, oldest first (natural order)."""
        return [record.version for record in self.model_versions(name)]

    def model_versions(self, name: str) -> list[ModelRecord]:
        """Readable records of ``name``, oldest version first: one listing of that model, not of all."""
        return self._list("models", ModelRecord, check_model_name(name))

    # ------------------------------------------------------------------------------- defaults

    def model_names(self) -> list[str]:
        """Names with at least one model record, from one listing and no reads (list calls stay quick)."""
        return sorted({parsed[0] for key in self.store.list(f"{self.prefix}/models")
                       if (parsed := self._parse_key("models", key)) is not None})

    def get_default(self, name: str) -> Optional[str]:
        """The stored default if that version still exists, else the newest version, else None."""
        record = self.default_record(name)
        return record.version if record else None

    def default_records(self, names: list[str]) -> list[Optional[ModelRecord]]:
        """``default_record`` of each name, read in parallel (a list page on S3 is one round trip deep)."""
        if len(names) <= 1:
            return [self.default_record(name) for name in names]
        return list(_readers().map(self.default_record, names))

    def default_record(self, name: str) -> Optional[ModelRecord]:
        """The default version's record: the stored default's if it still exists, else the newest."""
        stored = self._stored_default(name)
        record = self.get_model(name, stored) if stored is not None else None
        if record is not None:
            return record  # the common case: two small reads, no listing
        # sequential: this may run on the reader pool itself (default_records), which must not wait on itself
        records = self._list("models", ModelRecord, check_model_name(name), parallel=False)
        return records[-1] if records else None

    def set_default(self, name: str, version: str) -> None:
        """Make ``version`` the default; it must be registered (404 otherwise)."""
        if self.get_model(name, version) is None:
            raise RequestError(
                f"model {name!r} has no version {version!r}; register it before making it the default",
                status=404, field="model_version",
            )
        self.store.write_json(self._default_key(name), {"version": version})

    def _stored_default(self, name: str) -> Optional[str]:
        key = self._default_key(name)
        try:
            version = self.store.read_json(key)["version"]
        except ObjectNotFound:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable default %s in %s: %s", key, self.store.uri, exc)
            return None
        return version if isinstance(version, str) else None

    # ---------------------------------------------------------------------------------- pools

    def put_pool(self, record: PoolRecord) -> None:
        self._put("pools", record)

    def get_pool(self, name: str, version: str) -> Optional[PoolRecord]:
        return self._load(self._record_key("pools", name, version), PoolRecord, name, version)

    def delete_pool(self, name: str, version: str) -> bool:
        return self._delete(self._record_key("pools", name, version))

    def list_pools(self) -> list[PoolRecord]:
        return self._list("pools", PoolRecord)

    # ------------------------------------------------------------------------------ unregistered

    def mark_unregistered(self, name: str, version: str) -> None:
        """Remember an unregister, so ``--register-store`` at the next start leaves that archive alone."""
        self._put("unregistered", UnregisteredRecord(name=name, version=version))

    def clear_unregistered(self, name: str, version: str) -> None:
        """An explicit register wins over an earlier unregister."""
        self._delete(self._record_key("unregistered", name, version))

    def unregistered(self) -> set[tuple[str, str]]:
        return {(r.name, r.version) for r in self._list("unregistered", UnregisteredRecord)}

    # --------------------------------------------------------------------------------- graphs

    def _graph_key(self, name: str) -> str:
        return f"{self.prefix}/graphs/{check_segment(name, 'graph name')}{_SUFFIX}"

    def put_graph(self, record: GraphRecord) -> None:
        self.store.write_json(self._graph_key(record.name), record.model_dump(mode="json"))

    def get_graph(self, name: str) -> Optional[GraphRecord]:
        key = self._graph_key(name)
        try:
            record = GraphRecord.model_validate(self.store.read_json(key))
        except ObjectNotFound:
            return None
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("skipping unreadable graph record %s in %s: %s", key, self.store.uri, exc)
            return None
        return record if record.name == name else None

    def delete_graph(self, name: str) -> bool:
        return self._delete(self._graph_key(name))

    def list_graphs(self) -> list[GraphRecord]:
        """Every readable graph, by name."""
        names = []
        for key in self.store.list(f"{self.prefix}/graphs"):
            stem = key.rsplit("/", 1)[-1]
            if stem.endswith(_SUFFIX):
                names.append(stem[: -len(_SUFFIX)])
        records = [self.get_graph(name) for name in sorted(names)]
        return [record for record in records if record is not None]

    # ------------------------------------------------------------------------------- plumbing

    def _put(self, kind: str, record: _Record) -> None:
        key = self._record_key(kind, record.name, record.version)
        self.store.write_json(key, record.model_dump(mode="json"))

    def _delete(self, key: str) -> bool:
        existed = self.store.exists(key)
        self.store.delete(key)
        return existed

    def _load(self, key: str, cls: type[RecordT], name: str, version: str) -> Optional[RecordT]:
        """Read one record; missing -> None, unreadable or inconsistent -> warning + None."""
        try:
            record = cls.model_validate(self.store.read_json(key))
        except ObjectNotFound:
            return None
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("skipping unreadable registry record %s in %s: %s", key, self.store.uri, exc)
            return None
        if (record.name, record.version) != (name, version):
            logger.warning("skipping registry record %s in %s: it describes %s/%s",
                           key, self.store.uri, record.name, record.version)
            return None
        return record

    def _list(self, kind: str, cls: type[RecordT], name: Optional[str] = None, parallel: bool = True) -> list[RecordT]:
        base = f"{self.prefix}/{kind}" + (f"/{name}" if name else "")
        located = [(key, *parsed) for key in self.store.list(base)
                   if (parsed := self._parse_key(kind, key)) is not None]
        if parallel and len(located) > 1:
            loaded = list(_readers().map(lambda item: self._load(item[0], cls, item[1], item[2]), located))
        else:
            loaded = [self._load(key, cls, n, v) for key, n, v in located]
        records = [record for record in loaded if record is not None]
        return sorted(records, key=lambda r: (r.name, version_sort_key(r.version)))

    def _parse_key(self, kind: str, key: str) -> Optional[tuple[str, str]]:
        """``(name, version)`` of ``{prefix}/{kind}/{name}/{version}.json``; None for stray files."""
        parts = key[len(f"{self.prefix}/{kind}/"):].split("/")
        if len(parts) == 2 and parts[1].endswith(_SUFFIX):
            name, version = parts[0], parts[1][: -len(_SUFFIX)]
            try:
                return check_segment(name, "name"), check_segment(version, "version")
            except ValueError:
                pass
        logger.warning("skipping stray file %s in the registry at %s", key, self.store.uri)
        return None
