"""The registry's single writer: every change to it is a compare-and-set made inside one Ray actor.

Why one writer, not conditional object writes. A compare-and-set needs "write this object only if it is
still revision n" to be atomic. pyarrow.fs, which every store here goes through (a local directory,
S3 and S3-compatible servers), has no conditional put: no If-Match / If-None-Match, no create-exclusive.
S3 itself gained conditional writes in 2024, but reaching them means a second S3 client beside pyarrow
(credentials, endpoints and retries configured twice), a local-directory path that needs its own
locking (``os.link``/``O_EXCL`` tricks that NFS and FUSE mounts do not all honour), and S3-compatible
servers (moto, MinIO versions in the field) that do not all implement it. One actor needs none of that:
Ray runs an actor's calls one at a time (this one has no ``max_concurrency``), so "read the stored
record, compare its revision, write" is atomic by construction, on every store pyarrow.fs reaches.

What it costs (``python -m loadtests.bench_registry_cas``, in process, no Ray; 2 cores shared with another
benchmark, medians of 5 rounds of 2,000 writes): on a local directory a plain write of a model record took
454 us and a CAS write 551 us (1.21x: the read before the write), 535 us through :class:`WriterClient`'s
local path and 668 us through the unit tests' in-process actor (a hand-off to the actor's thread and back,
1.47x); on a local moto S3 server (3 x 200 writes) 15.1 ms plain against 27.4 ms CAS (1.8x: one GET round
trip more). On a cluster each write also pays one Ray actor call (not measured here: no Ray on the machine
that day). A management call makes one to three registry writes, next to a Serve deploy of 100-300 ms.

The actor keeps nothing that matters across a restart: it reads the store on every call, so Ray restarting it
(``max_restarts=-1``) gives a correct writer again. The leases are in its memory and are lost with it; a
lost lease is the same as an expired one (see :class:`LeaseHolder`), and a caller whose actor call failed
because the actor died tries again (:class:`WriterClient`), recognising its own write if it had landed.

Leases: ``ModelManager`` holds the lease :data:`SERVE_LEASE` while it reads the registry and makes Serve
match (``apply``), so two management replicas' applies never interleave, and each apply starts from the
registry as it is once the lease is held: whichever apply runs last deployed the newest registry (a stale
apply, "A writes rev 5, B writes rev 6, B applies 6, A applies 5", cannot happen: A's apply reads rev 6).
One lease for all of Serve, not one per model: every apply also deploys the generic pool (its catalog lists
every model), the graphs and the fronts, all built from the whole registry, so two per-model applies racing
would still deploy those out of order. Writes need no lease (they are CAS); the long waits for rollout
(``synchronous=true``) run after the lease is released.
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from typing import Any, Callable, Optional

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from modelpool.cluster.object_store import ObjectStore, object_store_from_settings
from modelpool.cluster.runtime import NAMESPACE
from modelpool.deployments.errors import RequestError
from modelpool.management.registry import Registry, UnregisteredRecord
from modelpool.management.registry_cas import (
    MISSING, TAKEN, LeaseTable, Outcome, decide_create, decide_delete, decide_put, decide_replace,
)

logger = logging.getLogger(__name__)

WRITER_NAME = "registry-writer"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # as the status board: the head's loss ends the cluster anyway
#: the lease over "read the registry, make Serve match"
SERVE_LEASE = "serve"
#: the lease over registering the model store's new archives at start (one replica does it, the other waits)
STORE_SCAN_LEASE = "register-store"
LEASE_TTL_S = 15.0  # a killed holder blocks the others this long at most; a live one renews every TTL/3
LEASE_WAIT_S = 120.0  # APPLY_TIMEOUT_S (10 s) + the ingress probe's wait, many times over
#: how long a caller keeps trying while the actor restarts (Ray restarts it in a second or two)
ACTOR_RETRY_S = 30.0
CALL_TIMEOUT_S = 30.0


class RegistryWriter:
    """The writer: each method reads what is stored, decides (``registry_cas``), writes, returns an Outcome.

    Run as the actor :data:`RegistryWriterActor` on a cluster, or as a plain object behind a lock in one
    process (:meth:`WriterClient.local`). Records travel as JSON-ready dicts (``model_dump(mode="json")``).
    """

    def __init__(self, store_config: Optional[dict] = None, prefix: str = "registry",
                 store: Optional[ObjectStore] = None, clock: Callable[[], float] = time.monotonic) -> None:
        if store is None:
            config = store_config or {}
            store = object_store_from_settings(config["uri"], config.get("s3_endpoint"), config.get("s3_region"))
        self.registry = Registry(store, prefix)
        self.lease_table = LeaseTable(clock)

    # ------------------------------------------------------------------ one record
    def _cas(self, key: str, decide: Callable[[Optional[dict]], Outcome]) -> Outcome:
        outcome = decide(self.registry.read_raw(key))
        if outcome.write:
            self.registry.write_raw(key, outcome.record)
        return outcome

    def create(self, kind: str, name: str, version: Optional[str], record: dict) -> Outcome:
        return self._cas(self.registry.key_of(kind, name, version), lambda stored: decide_create(stored, record))

    def replace(self, kind: str, name: str, version: Optional[str], expected_revision: int, record: dict) -> Outcome:
        return self._cas(self.registry.key_of(kind, name, version),
                         lambda stored: decide_replace(stored, expected_revision, record))

    def put(self, kind: str, name: str, version: Optional[str], record: dict,
            expected_revision: Optional[int] = None) -> Outcome:
        return self._cas(self.registry.key_of(kind, name, version),
                         lambda stored: decide_put(stored, expected_revision, record))

    def delete(self, kind: str, name: str, version: Optional[str] = None,
               expected_revision: Optional[int] = None) -> Outcome:
        return self._cas(self.registry.key_of(kind, name, version),
                         lambda stored: decide_delete(stored, expected_revision))

    # ------------------------------------------------------------------ changes of several records, atomic here
    def register_model(self, record: dict) -> Outcome:
        """Create a model version (refused: ``exists`` with the stored one, ``taken`` by a graph of that name);
        created, it forgets an earlier unregister of that version."""
        name, version = record["name"], record["version"]
        graph = self.registry.read_raw(self.registry.key_of("graphs", name))
        if graph is not None:
            return Outcome(TAKEN, graph)
        outcome = self.create("models", name, version, record)
        if outcome.ok:
            self.registry.write_raw(self.registry.key_of("unregistered", name, version), None)
        return outcome

    def unregister_model(self, name: str, version: str, expected_revision: Optional[int] = None) -> Outcome:
        """Delete a version, remembering the unregister, with its pool, and the default once no version remains."""
        outcome = self.delete("models", name, version, expected_revision)
        if outcome.ok:
            self.registry.write_raw(self.registry.key_of("unregistered", name, version),
                                    UnregisteredRecord(name=name, version=version).model_dump(mode="json"))
            self.registry.write_raw(self.registry.key_of("pools", name, version), None)
            if not self.registry.has_versions(name):
                self.registry.write_raw(self.registry.key_of("defaults", name), None)
        return outcome

    def set_default(self, name: str, version: str) -> Outcome:
        """Make ``version`` the default (``missing`` when it is not registered, checked in the same call)."""
        if self.registry.read_raw(self.registry.key_of("models", name, version)) is None:
            return Outcome(MISSING)
        return self.put("defaults", name, None, {"version": version})

    def put_pool(self, record: dict, expected_revision: Optional[int] = None) -> Outcome:
        """Create or replace a pool; ``missing`` when its model version is not registered (an unregister won)."""
        name, version = record["name"], record["version"]
        if self.registry.read_raw(self.registry.key_of("models", name, version)) is None:
            return Outcome(MISSING)
        return self.put("pools", name, version, record, expected_revision)

    def put_graph(self, record: dict, expected_revision: Optional[int] = None) -> Outcome:
        """Create or replace a graph; ``taken`` when a model has that name (checked in the same call)."""
        name = record["name"]
        if self.registry.has_versions(name):
            return Outcome(TAKEN)
        return self.put("graphs", name, None, record, expected_revision)

    # ------------------------------------------------------------------ leases
    def acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        return self.lease_table.acquire(name, owner, ttl_s)

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        return self.lease_table.renew(name, owner, ttl_s)

    def release(self, name: str, owner: str) -> bool:
        return self.lease_table.release(name, owner)

    def leases(self) -> dict:
        return self.lease_table.snapshot()


#: The actor: one per cluster and object store, detached (it outlives the management replica that made it),
#: restarted by Ray when its process dies, one call at a time (what makes every compare-and-set atomic).
RegistryWriterActor = ray.remote(num_cpus=0, max_restarts=-1)(RegistryWriter)


def writer_name(store_config: dict) -> str:
    """Named by its store: management redeployed on the same Ray cluster with another ``--object-store`` must not
    find a writer of the old one."""
    digest = hashlib.sha256(repr((store_config.get("uri"), store_config.get("s3_endpoint"))).encode()).hexdigest()
    return f"{WRITER_NAME}-{digest[:12]}"


def create_writer(store_config: dict) -> Any:
    """The cluster's writer for this store, started if it is not running (every management replica calls it)."""
    return RegistryWriterActor.options(name=writer_name(store_config), namespace=NAMESPACE, lifetime="detached",
                                       get_if_exists=True, resources={HEAD_NODE_RESOURCE: 0.001}).remote(store_config)


def _same_write(sent: dict, stored: Optional[dict]) -> bool:
    """True when ``stored`` is ``sent`` as the writer stores it (only the revision added)."""
    if stored is None:
        return False
    return {k: v for k, v in stored.items() if k != "revision"} == {k: v for k, v in sent.items() if k != "revision"}


class WriterClient:
    """How management calls the writer: the actor's methods, answered synchronously.

    When the actor dies during a call (``RayActorError``) the call is made again once Ray restarted it. A
    write that landed before the actor died then answers ``exists``/``conflict`` with the very record this
    caller sent: that is recognised as this caller's own write and answered as the success it was.
    """

    def __init__(self, call: Callable[[str, tuple, dict], Any], retry_s: float = ACTOR_RETRY_S) -> None:
        self._call = call
        self.retry_s = retry_s

    @classmethod
    def local(cls, registry: Registry) -> "WriterClient":
        """A writer in this process over ``registry``'s store: right while one process writes (unit tests, a
        management replica with no Ray, the single-replica default would also be safe with it)."""
        writer = RegistryWriter(store=registry.store, prefix=registry.prefix)
        lock = threading.Lock()

        def call(method: str, args: tuple, kwargs: dict) -> Any:
            with lock:  # one call at a time, as the actor runs them
                return getattr(writer, method)(*args, **kwargs)
        return cls(call)

    @classmethod
    def actor(cls, handle: Any) -> "WriterClient":
        def call(method: str, args: tuple, kwargs: dict) -> Any:
            return ray.get(getattr(handle, method).remote(*args, **kwargs), timeout=CALL_TIMEOUT_S)
        return cls(call)

    def call(self, method: str, *args: Any, sent: Optional[dict] = None, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_s
        retried = False
        while True:
            try:
                answer = self._call(method, args, kwargs)
            except (RayActorError, GetTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise RequestError(f"the registry writer did not answer for {self.retry_s:.0f}s ({exc}); "
                                       "try again", status=503) from None
                retried = True
                time.sleep(0.2 + random.random() * 0.3)
                continue
            if retried and sent is not None and isinstance(answer, Outcome) and not answer.ok \
                    and _same_write(sent, answer.record):
                return Outcome("created" if method in ("create", "register_model") else "ok", answer.record)
            return answer

    # the writer's methods, typed
    def register_model(self, record: dict) -> Outcome:
        return self.call("register_model", record, sent=record)

    def replace(self, kind: str, name: str, version: Optional[str], expected_revision: int, record: dict) -> Outcome:
        return self.call("replace", kind, name, version, expected_revision, record, sent=record)

    def put(self, kind: str, name: str, version: Optional[str], record: dict,
            expected_revision: Optional[int] = None) -> Outcome:
        return self.call("put", kind, name, version, record, expected_revision=expected_revision, sent=record)

    def delete(self, kind: str, name: str, version: Optional[str] = None,
               expected_revision: Optional[int] = None) -> Outcome:
        return self.call("delete", kind, name, version, expected_revision=expected_revision)

    def unregister_model(self, name: str, version: str, expected_revision: Optional[int] = None) -> Outcome:
        return self.call("unregister_model", name, version, expected_revision=expected_revision)

    def set_default(self, name: str, version: str) -> Outcome:
        return self.call("set_default", name, version)

    def put_pool(self, record: dict) -> Outcome:
        return self.call("put_pool", record, sent=record)

    def put_graph(self, record: dict) -> Outcome:
        return self.call("put_graph", record, sent=record)

    def acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        return self.call("acquire", name, owner, ttl_s)

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        return self.call("renew", name, owner, ttl_s)

    def release(self, name: str, owner: str) -> bool:
        return self.call("release", name, owner)


class LeaseHolder:
    """``with LeaseHolder(client, name, owner):`` waits for the lease, keeps it renewed while inside, gives it back.

    Waiting polls (10 ms doubling to 250 ms, jittered) for up to ``wait_s``, then answers 503 (another
    management replica holds it longer than any apply takes: its Serve calls hang). A holder whose renewal
    fails (its lease lapsed and another replica took it, or the actor restarted and another took it) logs it;
    the apply in flight goes on, and the next apply, by whoever holds the lease, reads the newest registry.
    """

    def __init__(self, client: WriterClient, name: str, owner: str, ttl_s: float = LEASE_TTL_S,
                 wait_s: float = LEASE_WAIT_S) -> None:
        self.client, self.name, self.owner, self.ttl_s, self.wait_s = client, name, owner, ttl_s, wait_s
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None
        self.lost = False

    def __enter__(self) -> "LeaseHolder":
        deadline = time.monotonic() + self.wait_s
        pause = 0.01
        while not self.client.acquire(self.name, self.owner, self.ttl_s):
            if time.monotonic() > deadline:
                raise RequestError(f"another management replica has held the {self.name!r} lease for over "
                                   f"{self.wait_s:.0f}s; try again", status=503)
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.25)
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.client.renew(self.name, self.owner, self.ttl_s):
                    self.lost = True
                    logger.error("lost the %r lease to another management replica while holding it", self.name)
                    return
            except Exception:  # noqa: BLE001 - the next tick tries again; the lease lapses at worst
                logger.warning("could not renew the %r lease", self.name, exc_info=True)

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
        try:
            self.client.release(self.name, self.owner)
        except Exception:  # noqa: BLE001 - it expires by itself
            logger.warning("could not release the %r lease; it expires in %.0fs", self.name, self.ttl_s,
                           exc_info=True)
