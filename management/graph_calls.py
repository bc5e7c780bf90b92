"""Inference graphs on the model manager: ``PUT``, ``GET`` and ``DELETE /graphs/{name}``, and what graphs ask of
model calls (a version a graph calls cannot be unregistered; a model cannot take a graph's name).

A mixin of :class:`modelpool.management.model_manager.ModelManager`, like ``RepositoryCalls``: the request is
checked whole (``graph_spec``) before anything is written, so a refused ``PUT`` leaves nothing behind; the
record is durable before the answer; the graph's application is built from the registry by ``apply``
(``graph_configs``) like every model's, so graphs come back after a restart with the models they call.
A ``PUT`` is answered once the graph serves: a new graph's replicas run and the ingress routes to them; a
changed one (a weight, a child) has been applied by every replica, so the next request sees it.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from modelpool.deployments import app_names
from modelpool.deployments.errors import RequestError
from modelpool.management import deployer, graph_configs, graph_spec, serve_state
from modelpool.management.graph_spec import GraphSpec
from modelpool.management.registry import GraphRecord, ModelRecord
from modelpool.management.registry_cas import TAKEN
from modelpool.management.rollout_wait import wait_for_rollout
from modelpool.management.serve_configs import AppConfig

logger = logging.getLogger(__name__)

#: how long a PUT waits for a new graph's first replica (it loads only its role handlers' archives)
GRAPH_START_TIMEOUT_S = 120.0


class GraphCalls:
    """Graphs over the manager's registry, writer, lock and ``apply``."""

    # --- the API ------------------------------------------------------------------------------

    def put_graph(self, name: str, body: object) -> tuple[int, dict]:
        spec = graph_spec.parse_graph(name, body)
        with self._lock:
            if self.registry.model_names().count(name):
                raise RequestError(f"a model is registered as '{name}', and graphs and models share the route "
                                   f"/v2/models/{name}; choose another name for the graph", status=409, field="name")
            others = {g.name: s for g, s in self._stored_graphs() if g.name != name}
            graph_spec.check_graph(spec, self._role_of, others)
            existing = self.registry.get_graph(name)
            now = time.time()
            record = GraphRecord(name=name, graph=spec.root.model_dump(exclude_none=True, exclude_defaults=True),
                                 created_at=existing.created_at if existing else now, updated_at=now)
            if self.writer.put_graph(record.model_dump(mode="json")).status == TAKEN:  # a model registered meanwhile
                raise RequestError(f"a model is registered as '{name}', and graphs and models share the route "
                                   f"/v2/models/{name}; choose another name for the graph", status=409, field="name")
            self.apply()
        app = app_names.graph_app_name(name)
        wait_for_rollout([app], GRAPH_START_TIMEOUT_S, f"graph '{name}'", ingress=self.ingress)
        verb = "updated" if existing else "created"
        return (200 if existing else 201), {"status": f'Graph "{name}" {verb}', "name": name,
                                            "endpoint": f"{graph_configs.graph_route(name)}/infer"}

    def get_graph(self, name: str) -> dict:
        record = self._graph_record(name)
        return self._graph_answer(record, serve_state.applications())

    def list_graphs(self) -> dict:
        statuses = serve_state.applications()
        return {"graphs": [self._graph_answer(record, statuses) for record in self.registry.list_graphs()]}

    def delete_graph(self, name: str) -> dict:
        with self._lock:
            self._graph_record(name)
            callers = sorted(g.name for g, s in self._stored_graphs() if name in s.graphs() and g.name != name)
            if callers:
                raise RequestError(f"graph '{name}' is called by graph(s) {', '.join(callers)}; change or delete "
                                   "those first", status=409, field="name")
            self.writer.delete("graphs", name)
            self.apply()
        return {"status": f'Graph "{name}" deleted'}

    # --- what graphs ask of model calls ----------------------------------------------------------

    def _refuse_if_graph(self, name: str) -> None:
        """A model cannot take a graph's name: both would be /v2/models/{name}."""
        if self.registry.get_graph(name) is not None:
            raise RequestError(f"a graph is named '{name}', and graphs and models share the route /v2/models/{name}; "
                               "register the model under another name (model_name=)", status=409, field="model_name")

    def _refuse_if_referenced(self, name: str, versions: set[str]) -> None:
        """409 naming the graphs that call one of ``versions`` (a graph naming no version calls the default,
        which only goes with the last version)."""
        stored = {g.name: s for g, s in self._stored_graphs()}
        if not stored:
            return
        last = not (set(self.registry.versions(name)) - versions)
        for version in sorted(versions):
            graphs = graph_spec.referencing_graphs(stored, name, version, last)
            if graphs:
                raise RequestError(f"model '{name}' version '{version}' is called by graph(s) {', '.join(graphs)}; "
                                   "change or delete those graphs first (PUT or DELETE /graphs/{name})",
                                   status=409, field="model_name")

    # --- Serve ------------------------------------------------------------------------------------

    def _graph_apps(self, dedicated: set[tuple[str, str]]) -> list[graph_configs.GraphConfig]:
        """Every stored graph resolved against the registry now; one that no longer resolves is skipped, logged."""
        stored = self._stored_graphs()
        if not stored:
            return []
        records = {(r.name, r.version): r for r in self.registry.list_models()}
        defaults = {name: version for name in {r.name for r in records.values()}
                    if (version := self.registry.get_default(name))}
        base = self._graph_options()
        configs = []
        for record, spec in stored:
            try:
                root = graph_configs.resolve_graph(spec, records, defaults, dedicated)
            except KeyError as exc:
                logger.warning("graph %s calls %s, which is not registered; it is not served", record.name, exc)
                continue
            configs.append(graph_configs.GraphConfig(
                name=record.name, root=root, metadata=graph_configs.graph_metadata(root, records),
                response_timeout_s=graph_configs.graph_timeout_s(root, records),
                max_replicas=self.settings.max_workers, **base))
        return configs

    def _graph_options(self) -> dict:
        from modelpool.management import placement

        pool = placement.pool_config(self.settings)
        return {"num_cpus": pool.num_cpus, "max_ongoing_requests": pool.max_ongoing_requests,
                "max_queued_requests": pool.max_queued_requests,
                "target_ongoing_requests": pool.target_ongoing_requests, "max_body_bytes": pool.max_body_bytes,
                "object_store": pool.object_store, "serving": pool.serving, "logging": pool.logging,
                "health_check_period_s": pool.health_check_period_s}

    def _graph_app_configs(self, configs: list[graph_configs.GraphConfig]) -> list[AppConfig]:
        cache = str(self.settings.cache_path)
        return [graph_configs.graph_app_config(config, cache, deployer.code_version()) for config in configs]

    # --- helpers ----------------------------------------------------------------------------------

    def _stored_graphs(self) -> list[tuple[GraphRecord, GraphSpec]]:
        graphs = []
        for record in self.registry.list_graphs():
            try:
                graphs.append((record, graph_spec.parse_graph(record.name, {"graph": record.graph})))
            except RequestError as exc:
                logger.warning("skipping unreadable graph %s: %s", record.name, exc.message)
        return graphs

    def _graph_record(self, name: str) -> GraphRecord:
        try:
            record = self.registry.get_graph(name)
        except ValueError as exc:
            raise RequestError(str(exc), status=404, field="name") from None
        if record is None:
            known = ", ".join(g.name for g in self.registry.list_graphs()) or "none"
            raise RequestError(f"no graph '{name}'; graphs: {known}", status=404, field="name")
        return record

    def _role_of(self, model: str, version: Optional[str]) -> Optional[str]:
        record: Optional[ModelRecord] = (self.registry.get_model(model, version) if version
                                         else self.registry.default_record(model))
        if record is None:
            return None
        return str(record.manifest.get("service_type") or "MODEL").upper()

    @staticmethod
    def _graph_answer(record: GraphRecord, statuses: dict) -> dict:
        app = statuses.get(app_names.graph_app_name(record.name))
        return {"name": record.name, "graph": record.graph,
                "endpoint": f"{graph_configs.graph_route(record.name)}/infer",
                "status": serve_state.status_name(app.status) if app is not None else "NOT_STARTED",
                "createdAt": record.created_at, "updatedAt": record.updated_at}
