"""The management core: registry in, Serve applications out. No HTTP here (see ``modelpool.management.api``).

Every mutation writes the registry first (durable before it is answered), then makes Serve match
the registry for the model it touched. ``reconcile`` makes all of Serve match all of the registry,
which is how a restarted management replica or a restarted cluster gets every model and pool
back with no request from anyone.

Several management replicas: every registry change is a compare-and-set made by the cluster's single
writer (``modelpool.management.registry_writer``): a register creates only where nothing is (the loser of a
race gets 409, or the winner's answer when it carries the same Idempotency-Key), a scale re-reads and
re-applies the fields it names until its write lands on the revision it read (two scales of different
fields both persist). ``apply`` holds the cluster-wide Serve lease while it reads the registry and deploys,
so applies from different replicas run one after another and each deploys the registry as it is then.
``self._lock`` still orders this process's own mutations (it is cheaper than a lease round trip). A register's archive comes in through ``modelpool.management.archive_intake``
(fetch, copy to object storage, load check); synchronous calls wait through ``modelpool.management.rollout_wait``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

import ray

from modelpool.cluster.object_store import ObjectStore, object_store_from_settings
from modelpool.cluster.settings import Settings
from modelpool.deployments.archive import list_store
from modelpool.deployments.archive_formats import read_manifest, with_registered
from modelpool.deployments.archive_fetch import store_source
from modelpool.deployments.errors import RequestError
from modelpool.cluster.url_patterns import parse_allowed_urls
from modelpool.deployments import app_names
from modelpool.management import answers, archive_intake, archive_leases, deployer, placement, route_probe, serve_configs, serve_state, workers
from modelpool.management.describe import describe_record
from modelpool.management.model_source import resolve_model_url
from modelpool.management.url_checks import UrlPolicy
from modelpool.management.url_download import s3_fetcher
from modelpool.management.params import ListParams, RegisterParams, ScaleParams
from modelpool.management.graph_calls import GraphCalls
from modelpool.management.pool_calls import PoolCalls
from modelpool.management.repository_service import RepositoryCalls
from modelpool.management.rollout_wait import wait_for_rollout
from modelpool.management.ttl_cache import TtlCache
from modelpool.management.registry import ModelRecord, Registry, check_model_name, check_model_version
from modelpool.management.registry_cas import MISSING, TAKEN
from modelpool.management.registry_writer import SERVE_LEASE, STORE_SCAN_LEASE, LeaseHolder, WriterClient

logger = logging.getLogger(__name__)

#: compare-and-set attempts of one read-modify-write before answering 503 (each conflict means another write landed)
CAS_ATTEMPTS = 50


def scaled_record(record: ModelRecord, params: ScaleParams) -> tuple[ModelRecord, int, int]:
    """``record`` with the fields a scale names changed (the others as they are), and its (min, max) workers.

    Pure, so a scale that lost a compare-and-set runs it again over the record that won."""
    low = params.min_worker if params.min_worker is not None else record.min_workers
    high = params.max_worker if params.max_worker is not None else max(record.max_workers, low)
    if low > high:
        raise RequestError(f"min_worker ({low}) would exceed max_worker ({high}); pass both", field="min_worker")
    updated = record.model_copy(update={
        "min_workers": low, "max_workers": high, "initial_workers": low,
        "number_gpu": params.number_gpu if params.number_gpu is not None else record.number_gpu,
        "batch_size": params.batch_size or record.batch_size,
        "max_batch_delay_ms": params.max_batch_delay if params.max_batch_delay is not None else record.max_batch_delay_ms,
        "max_queued_requests": params.max_queued_requests if params.max_queued_requests is not None
        else record.max_queued_requests,
        "drain_timeout_s": params.timeout, "updated_at": time.time(),
    })
    return updated, low, high


class ModelManager(RepositoryCalls, GraphCalls, PoolCalls):
    """Register, scale, describe, unregister models; session pools; services."""

    def __init__(self, settings: Settings, store: Optional[ObjectStore] = None,
                 writer: Optional[WriterClient] = None) -> None:
        self.settings = settings
        self.store = store or object_store_from_settings(settings.object_store_uri, settings.s3_endpoint, settings.s3_region)
        self.registry = Registry(self.store)
        # every registry change goes through it; in one process a local one (the management app passes the actor's)
        self.writer = writer or WriterClient.local(self.registry)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this replica, as leases name it
        self._lease_depth = 0  # nested apply calls (under self._lock) take the Serve lease once
        self.policy = UrlPolicy(allowed_urls=parse_allowed_urls(settings.allowed_urls),
                                allow_private_networks=settings.allow_private_networks,
                                max_bytes=settings.max_download_bytes)
        self._lock = threading.RLock()  # one mutation at a time per replica; the registry is the truth
        self.reconciled = threading.Event()
        # describe / pool status / services read replica facts at most once a second (quick calls stay quick)
        self._details = TtlCache(serve_state.serve_details, ttl_s=1.0)
        # this node's ingress: after a change moves routes, answer once it routes them (read your writes)
        self.ingress = route_probe.Ingress(settings.http_url, {"Authorization": f"Bearer {settings.management_token}"}
                                           if settings.management_token else {})

    # ------------------------------------------------------------------ desired state -> Serve
    def _plan(self) -> placement.Placement:
        records = self.registry.list_models()
        defaults = {name: self.registry.get_default(name) for name in {r.name for r in records}}
        pools = {(p.name, p.version): p for p in self.registry.list_pools()}
        return placement.plan(records, {k: v for k, v in defaults.items() if v}, pools, self.settings)

    @contextlib.contextmanager
    def serve_lease(self) -> Iterator[None]:
        """This process's lock and the cluster's Serve lease (re-entrant: nested calls take it once)."""
        with self._lock:
            holder = LeaseHolder(self.writer, SERVE_LEASE, self.owner) if self._lease_depth == 0 else None
            if holder is not None:
                holder.__enter__()
            self._lease_depth += 1
            try:
                yield
            finally:
                self._lease_depth -= 1
                if holder is not None:
                    holder.__exit__(None, None, None)

    def apply(self, only_model: Optional[str] = None, wait: bool = False) -> list[str]:
        """Make Serve match the registry (for one model, or all); returns the app names deployed.

        Under the Serve lease: the registry is read once it is held, so the last apply deploys the newest state."""
        with self.serve_lease():
            return self._apply(only_model, wait)

    def _apply(self, only_model: Optional[str], wait: bool) -> list[str]:
        self._details.invalidate()
        plan = self._plan()
        cache = str(self.settings.cache_path)
        configs = [c for c in plan.dedicated if only_model is None or c.name == only_model]
        apps = [serve_configs.model_app_config(c, cache, deployer.code_version()) for c in configs]
        pool_app = serve_configs.generic_pool_app_config(placement.pool_config(self.settings), plan.catalog,
                                                         plan.known_models, cache, deployer.code_version(),
                                                         plan.versions)
        wanted = {app.app_name for app in (serve_configs.model_app_config(c, cache, deployer.code_version())
                                           for c in plan.dedicated)}
        # Apps no longer wanted go first: an unregistered default version holds the unversioned route
        # the next default takes, and Serve refuses a prefix a live app holds (a deleting one is fine).
        deleted = []
        for app_name in deployer.model_app_names():
            parsed = app_names.parse_app_name(app_name)
            if app_name not in wanted and (only_model is None or (parsed and parsed[0] == only_model)):
                deployer.delete_app(app_name, wait=False)
                deleted.append(app_name)
        graphs = self._graph_apps({(c.name, c.version) for c in plan.dedicated})  # every graph: they follow models
        graph_apps = self._graph_app_configs(graphs)
        wanted_graphs = {app.app_name for app in graph_apps}
        for app_name in deployer.graph_app_names():
            if app_name not in wanted_graphs:
                deployer.delete_app(app_name, wait=False)
                deleted.append(app_name)
        fronts = [serve_configs.front_app_config(placement.front_config(self.settings),
                                                 serve_configs.front_routes(plan.dedicated, [g.name for g in graphs]),
                                                 deployer.code_version(), serve_configs.front_limits(plan.dedicated))
                  ] if self.settings.grpc_enabled or self.settings.http_front else []
        fronts += serve_configs.protocol_front_app_configs(plan.dedicated, plan.catalog, plan.known_models,
                                                           placement.pool_config(self.settings), deployer.code_version(),
                                                           {g.name: g.response_timeout_s for g in graphs})
        deployer.deploy_apps(apps + [pool_app] + graph_apps + fronts, wait=wait, ingress=self.ingress, deleted=deleted)
        return ([app.app_name for app in apps] + [pool_app.app_name] + [app.app_name for app in graph_apps]
                + [front.app_name for front in fronts])

    def reconcile(self) -> None:
        """At start: register new store archives if asked, then deploy everything the registry holds."""
        try:
            if self.settings.register_store:
                # one replica registers the store's new archives, the other finds them registered once it may look
                with LeaseHolder(self.writer, STORE_SCAN_LEASE, self.owner, wait_s=3600.0):
                    self._register_store_archives()
            with self._lock:
                self.apply()
        finally:
            self.reconciled.set()

    def _register_store_archives(self) -> None:
        known = {(r.name, r.version) for r in self.registry.list_models()} | self.registry.unregistered()
        new = [path for manifest, path in list_store(self.settings.model_store_path)
               if (manifest.name, manifest.version) not in known]
        for path, exc in self._register_from_store(new):
            logger.warning("could not register %s from the model store: %s", path.name, exc.message)

    def _register_from_store(self, paths: list[Path]) -> list[tuple[Path, RequestError]]:
        """Register store archives with the start-up defaults, recorded but not deployed; returns the refusals."""
        def register(path: Path) -> Optional[tuple[Path, RequestError]]:
            try:
                self.register(RegisterParams(url=path.name, initial_workers=self.settings.workers), apply=False,
                              at_startup=True)
                return None
            except RequestError as exc:
                return path, exc

        with ThreadPoolExecutor(max_workers=4) as pool:  # load checks run in parallel Ray tasks
            return [refused for refused in pool.map(register, paths) if refused is not None]

    # ------------------------------------------------------------------ models (MMS API)
    def register(self, params: RegisterParams, apply: bool = True, at_startup: bool = False) -> tuple[int, dict]:
        """Record a model version and deploy it; TorchServe's answer (see ``_registered``).

        ``at_startup``: registered from the model store by ``modelpool start`` (describe's loadedAtStartup)."""
        local = resolve_model_url(params.url, model_store=self.settings.model_store_path,
                                  download_dir=self.settings.cache_path / "url-downloads", policy=self.policy,
                                  fetch_s3=s3_fetcher(self.settings))
        manifest = read_manifest(local, handler=params.handler)  # handler= replaces the manifest's, checked like it
        registered = params.manifest_overrides()  # service_type=, parameters=: written into the stored copy
        if registered:
            manifest = with_registered(manifest, registered)
        name = check_model_name(params.model_name or manifest.name)
        version = check_model_version(manifest.version)
        self._refuse_if_graph(name)
        # One read tells a retry from a duplicate: two reads (retry? then duplicate?) let a racing request with the
        # same Idempotency-Key see nothing at the first and the winner's record at the second, a 409 for its own key.
        stored = self.registry.get_model(name, version)
        if self._is_retry(stored, params.idempotency_key):
            with self._lock:
                apps = self.apply(only_model=name)
            return self._registered(name, version, params, apps)
        if stored is not None:
            self._refuse_duplicate(name, version)
        key, digest = archive_intake.copy_to_store(self.store, local, name, version, registered)  # content-addressed
        archive_intake.check_loads(self.store, key, self.settings, manifest.handler, digest)  # 400 (copy deleted) if not
        workers_wanted = params.initial_workers
        record = ModelRecord(
            name=name, version=version, url=params.url, source=store_source(key), digest=digest,
            handler=manifest.handler, runtime=params.runtime,
            batch_size=params.batch_size or self.settings.max_batch_size,
            max_batch_delay_ms=params.max_batch_delay if params.max_batch_delay is not None else self.settings.max_batch_delay_ms,
            initial_workers=workers_wanted, min_workers=workers_wanted,
            max_workers=max(workers_wanted, self.settings.max_workers) if workers_wanted else 0,
            response_timeout_s=params.response_timeout, startup_timeout_s=params.startup_timeout,
            max_queued_requests=params.max_queued_requests,  # None: the server's setting, whatever it is then
            loaded_at_startup=at_startup, manifest=manifest.model_dump(), idempotency_key=params.idempotency_key,
        )
        with self._lock:  # the load check ran unlocked (seconds); the writer looks again as it writes
            # the commit point: from here on the request has happened (and an earlier unregister is forgotten)
            outcome = self.writer.register_model(record.model_dump(mode="json"))
            if outcome.status == TAKEN:
                self._refuse_if_graph(name)
                raise RequestError(f"a graph is named '{name}'", status=409, field="model_name")
            if not outcome.ok:  # another request registered this version first (on this replica or another)
                winner = ModelRecord.model_validate(outcome.record)
                if not (params.idempotency_key and winner.idempotency_key == params.idempotency_key):
                    if winner.source != record.source:  # a different archive lost: its copy is nobody's
                        archive_leases.delete_archive_unless_held(self.store, record.source)
                    self._refuse_duplicate(name, version)
                    raise RequestError(f"model '{name}' version '{version}' is already registered", status=409,
                                       field="model_name")
            apps = self.apply(only_model=name) if apply else None
        return self._registered(name, version, params, apps)

    @staticmethod
    def _is_retry(stored: Optional[ModelRecord], idempotency_key: Optional[str]) -> bool:
        """True when the stored version was registered by a request with the same Idempotency-Key."""
        return bool(idempotency_key) and stored is not None and stored.idempotency_key == idempotency_key

    def _registered(self, name: str, version: str, params: RegisterParams, apps: Optional[list]) -> tuple[int, dict]:
        """The answer to a register request, first time or retried: the same for both, in TorchServe's words.

        No workers asked for: 200, nothing is pending (the generic pool has the model in its catalog once
        ``apply`` returns, and loads it on the first request). Workers asked for: 202 while they start
        (``synchronous=false``), or 200 once they run.
        """
        workers_wanted = params.initial_workers
        if not workers_wanted:
            return 200, {"status": answers.registered(name, version, 0)}
        if apps is not None and params.synchronous:
            wait_for_rollout(apps, params.startup_timeout, f"model '{name}'",
                             min_running=(name, version, workers_wanted), field="startup_timeout", ingress=self.ingress)
            return 200, {"status": answers.registered(name, version, workers_wanted)}
        return 202, {"status": answers.PROCESSING}

    def scale(self, name: str, version: Optional[str], params: ScaleParams) -> tuple[int, dict]:
        """Workers and batching of one version; TorchServe's answers: 202 "Processing worker updates..."
        unless ``synchronous``, then 200 "Workers scaled to N for model: ..." once N workers run.

        ``timeout`` as MMS defines it: the workers this stops get that long to finish their requests (0: none,
        -1: as long as they take, which response_timeout bounds), and a synchronous call waits that long for
        the change (0: not at all; -1: as long as the workers take to start, which startup_timeout bounds).
        """
        version = version or params.model_version
        with self._lock:
            record = self.record(name, version)
            if params.number_gpu:
                available = ray.cluster_resources().get("GPU", 0)
                if params.number_gpu > available:
                    raise RequestError(f"number_gpu={params.number_gpu} but the cluster has {available:g} GPUs; "
                                       "add GPU nodes or ask for fewer", field="number_gpu")
            record, low, high = self._update_model(record, lambda current: scaled_record(current, params))
            if high == 0:
                self.writer.delete("pools", record.name, record.version)
            apps = self.apply(only_model=record.name)
        scaled = answers.scaled(record.name, low, version)
        if not params.synchronous:
            return 202, {"status": answers.PROCESSING}
        target = (record.name, record.version, low)
        if params.timeout == 0:  # answer at once: 200 only if nothing is pending
            done = deployer.has_replicas(apps, app_names.app_name(record.name, record.version), low)
            return (200, {"status": scaled}) if done else (202, {"status": answers.PROCESSING})
        wait_s = params.timeout if params.timeout > 0 else record.startup_timeout_s
        wait_for_rollout(apps, wait_s, f"model '{name}'", min_running=target,
                         field="timeout" if params.timeout > 0 else "startup_timeout", ingress=self.ingress)
        return 200, {"status": scaled}

    def _update_model(self, record: ModelRecord, change) -> tuple:
        """Read-modify-write of one model version by compare-and-set: ``change(current)`` returns the updated record
        first (then anything else, handed back); a conflict runs it again over the record that won. 404 when the
        version went meanwhile (an unregister won), 503 after :data:`CAS_ATTEMPTS` conflicts in a row."""
        for _ in range(CAS_ATTEMPTS):
            result = change(record)
            updated = result[0] if isinstance(result, tuple) else result
            outcome = self.writer.replace("models", record.name, record.version, record.revision,
                                          updated.model_dump(mode="json"))
            if outcome.ok:
                written = ModelRecord.model_validate(outcome.record)
                return (written, *result[1:]) if isinstance(result, tuple) else (written,)
            if outcome.status == MISSING:
                raise RequestError(f"model '{record.name}' version '{record.version}' was unregistered meanwhile",
                                   status=404, field="model_version")
            logger.info("registry: model '%s' version '%s' changed meanwhile (revision %s, now %s); the change is "
                        "applied again over the record that won", record.name, record.version, record.revision,
                        outcome.record.get("revision"))
            record = ModelRecord.model_validate(outcome.record)
        raise RequestError(f"model '{record.name}' version '{record.version}' changed {CAS_ATTEMPTS} times while "
                           "this change was being written; try again", status=503)

    def describe(self, name: str, version: Optional[str]) -> list[dict]:
        check_model_name(name)
        if version == "all":
            records = [r for r in self.registry.list_models() if r.name == name]
            if not records:
                raise RequestError(f"model '{name}' is not registered", status=404, field="model_name")
        else:
            records = [self.record(name, version)]
        default = self.registry.get_default(name)
        pools = {(p.name, p.version): p for p in self.registry.list_pools()}  # one listing, no per-record reads
        # replica facts only when some version has replicas of its own: the pool's have no workers to list
        details = (self._details.get() if any(placement.is_dedicated(r, pools.get((r.name, r.version)))
                                              for r in records) else {})
        result = []
        for record in records:
            pool = pools.get((record.name, record.version))
            dedicated = placement.is_dedicated(record, pool)
            _, low, high = placement.replica_bounds(record, pool)
            app = app_names.app_name(record.name, record.version)
            replicas = workers.workers(details, app, bool(record.number_gpu)) if dedicated else []
            concurrency = placement.replica_concurrency(self.settings, record.batch_size)
            # the queue its calls meet: its own replicas' (its value or the server's), else the generic pool's
            queued = placement.max_queued(record, self.settings) if dedicated else self.settings.max_queued_requests
            result.append(describe_record(record, low if dedicated else 0, high if dedicated else 0, replicas,
                                          concurrency, is_default=record.version == default, dedicated=dedicated,
                                          max_queued=queued))
        return result

    def unregister(self, name: str, version: Optional[str]) -> dict:
        with self._lock:
            record = self.record(name, version)
            self._unregister_all(record.name, [record])
        return {"status": answers.unregistered(record.name)}

    def _unregister_all(self, name: str, records: list[ModelRecord]) -> None:
        """Forget these versions of one model (remembered as unregistered), redeploy it once, drop the archives.

        Called under ``self._lock``; takes the Serve lease for the retired apps' plan, the deletes and the apply.
        A version another replica unregistered first is not one this call removed: 404 when that is all of them.
        """
        gone = {record.version for record in records}
        self._refuse_if_referenced(name, gone)
        with self.serve_lease():
            retiring = self._retired_apps(name, gone)  # their replicas drain for a while after Serve deletes them
            removed = [record for record in records
                       if self.writer.unregister_model(record.name, record.version).ok]
            if records and not removed:
                raise RequestError(f"model '{name}' is not registered (it was unregistered meanwhile)", status=404,
                                   field="model_name")
            deployer.deploy_apps(retiring)  # in place: answered once every replica knows (read your writes)
            self.apply(only_model=name)
        records = removed
        for record in records:
            held_by = archive_leases.delete_archive_unless_held(self.store, record.source)
            if held_by:
                logger.info("kept the archive of %s/%s for the batch jobs still scoring with it: %s",
                            record.name, record.version, ", ".join(held_by))

    def _retired_apps(self, name: str, gone: set[str]) -> list[serve_configs.AppConfig]:
        """The dedicated apps of versions about to be unregistered, told so (``retired``) and given the versions
        that remain: a client connection kept open across HAProxy's reload reaches them once more, and gets 404
        (or a 503 to retry, when another version takes the route), not an answer from a removed model."""
        plan = self._plan()
        remaining = [v for v in plan.versions.get(name, []) if v not in gone]
        cache, code = str(self.settings.cache_path), deployer.code_version()
        retired = []
        for config in plan.dedicated:
            if config.name == name and config.version in gone:
                app = serve_configs.model_app_config(config, cache, code)
                options = {**app.deployment_options, "user_config": {**app.deployment_options["user_config"],
                                                                     "retired": True, "versions": remaining}}
                retired.append(dataclasses.replace(app, deployment_options=options))
        return retired

    def list_models(self, params: ListParams) -> dict:
        """One page of model names in name order; ``nextPageToken`` is where the next page starts, as in
        TorchServe (``?limit=2&next_page_token=2`` -> ``"nextPageToken": "4"`` while models remain)."""
        names = self.registry.model_names()
        start = params.next_page_token
        page, end = names[start:start + params.limit], start + params.limit
        models = [{"modelName": name, "modelUrl": record.url if record else None}
                  for name, record in zip(page, self.registry.default_records(page))]
        return {"nextPageToken": str(end) if end < len(names) else None, "models": models}

    def set_default(self, name: str, version: str) -> dict:
        with self._lock:
            self.record(name, version)
            if self.writer.set_default(name, version).status == MISSING:  # unregistered meanwhile
                self.record(name, version)  # the 404 naming the versions there are
            self.apply(only_model=name)
        return {"status": answers.default_set(name, version)}

    def _serving_apps(self) -> list[tuple[ModelRecord, str]]:
        """Every registered version and the Serve application that serves it (its own, or the generic pool)."""
        dedicated = {(c.name, c.version) for c in self._plan().dedicated}
        return [(record, app_names.app_name(record.name, record.version)
                 if (record.name, record.version) in dedicated else serve_configs.GENERIC_POOL_APP)
                for record in self.registry.list_models()]

    # ------------------------------------------------------------------ helpers
    def _refuse_duplicate(self, name: str, version: str) -> None:
        if self.registry.get_model(name, version) is not None:
            raise RequestError(f"model '{name}' version '{version}' is already registered; unregister it first "
                               "or register a new version", status=409, field="model_name")

    def record(self, name: str, version: Optional[str]) -> ModelRecord:
        """The registered version (the default one when ``version`` is None); a 404 naming the versions there are."""
        check_model_name(name)
        if version is None:
            version = self.registry.get_default(name)
            if version is None:
                raise RequestError(f"model '{name}' is not registered", status=404, field="model_name")
        check_model_version(version)
        record = self.registry.get_model(name, version)
        if record is None:
            if not self.registry.versions(name):
                raise RequestError(f"model '{name}' is not registered", status=404, field="model_name")
            raise RequestError(f"model '{name}' has no version '{version}'; versions: {', '.join(self.registry.versions(name))}",
                               status=404, field="model_version")
        return record
