"""The management application at route prefix ``/``: a Serve deployment around the FastAPI API.

On start it reconciles Serve with the registry in the background (registering new model-store
archives first if asked), so a restarted replica or cluster brings every model and pool back;
``/v2/health/ready`` answers 503 until that is done and every application runs.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from ray import serve

from modelpool.cluster.settings import Settings
from modelpool.deployments.log_flush import start_log_flusher
from modelpool.deployments.serving_options import ServingOptions
from modelpool.management import grpc_api
from modelpool.management.api import api
from modelpool.management.batch.service import BatchService
from modelpool.management.model_manager import ModelManager
from modelpool.management.scrape_logs import filter_scrape_logs
from modelpool.management.serve_state import applications, not_serving
from modelpool.management.status_sources import StatusSources
from modelpool.management.ttl_cache import TtlCache

REPLICA_METRICS_PERIOD_S = 5.0


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256,
                  health_check_period_s=2.0)  # a dead replica is noticed by the next check: 2 s, not 10
@serve.ingress(api)
class Management:
    """Owns no state but the registry in object storage; any replica can answer any request (there are
    ``--management-replicas``; their registry writes meet in one writer actor, their applies take turns)."""

    def __init__(self, settings: dict, token: str) -> None:
        from modelpool.deployments.serve_binds import pin_grpc_binds

        pin_grpc_binds()  # before Serve binds this replica's gRPC servers
        # Imported here, not at module level: Serve pickles this class by value, which would give
        # it a private copy of a module-level ``state`` instead of the one the routes read.
        from modelpool.management import api as routes

        from modelpool.deployments.replica_base import replica_id
        from modelpool.management.registry_writer import WriterClient, create_writer

        # The token in effect (generated ones too): with --inference-token, model routes accept it as well
        settings_in_effect = Settings(**{**settings, "management_token": token})
        # every registry change, from every management replica, goes through the cluster's one writer
        writer = WriterClient.actor(create_writer(settings_in_effect.object_store_config))
        self.manager = ModelManager(settings_in_effect, writer=writer)
        self._applications = TtlCache(applications, ttl_s=1.0)  # health probes may come many times a second
        routes.state.manager = self.manager
        routes.state.batches = BatchService(self.manager.settings, self.manager.store, self.manager.registry)
        routes.state.token = token
        routes.state.replica_id = replica_id()  # answers name this replica (there may be several)
        routes.state.debug = self.manager.settings.debug
        routes.state.max_body_bytes = self.manager.settings.max_body_bytes
        routes.state.body_timeout_s = self.manager.settings.body_timeout_s
        routes.state.readiness = self.readiness
        routes.state.serving = ServingOptions.from_config(self.manager.settings.serving_options())
        routes.state.status = StatusSources(self.manager)  # GET /ui/state
        # the status board the replicas report to (deployments/status_board.py), started off the constructor
        threading.Thread(target=routes.state.status.board.start, name="status-board", daemon=True).start()
        routes.state.metrics_path = self.manager.settings.metrics_path
        filter_scrape_logs(self.manager.settings.metrics_path, debug=self.manager.settings.debug)
        start_log_flusher()  # access lines on disk within 0.25 s, as the model replicas' (Serve buffers 1,000)
        threading.Thread(target=self._reconcile, name="reconcile", daemon=True).start()
        threading.Thread(target=self._publish_replicas, name="replica-metrics", daemon=True).start()

    def _reconcile(self) -> None:
        try:
            self.manager.reconcile()
            from modelpool.management import api as routes

            routes.state.batches.resume_unfinished()
        except Exception:  # noqa: BLE001 - logged; readiness reports it
            import logging

            logging.getLogger("ray.serve").exception("reconciling Serve with the registry failed")

    def _publish_replicas(self) -> None:
        """Keep the ``modelpool_replicas`` gauge current; versions that went away drop to 0."""
        from modelpool.deployments.metrics import record_replicas
        from modelpool.management.serve_state import running_by_model, serve_details

        seen: set[tuple[str, str]] = set()
        counts: dict[tuple[str, str], int] = {}
        last_read = 0.0
        while True:
            try:
                if time.monotonic() - last_read >= REPLICA_METRICS_PERIOD_S:  # a controller round trip: not every second
                    counts, last_read = running_by_model(serve_details()), time.monotonic()
                    seen |= counts.keys()
                # re-set every second: Ray drops a gauge that is not re-set for a while
                record_replicas({**{key: 0 for key in seen - counts.keys()}, **counts})
            except Exception:  # noqa: BLE001 - metrics must never take management down
                pass
            time.sleep(1.0)

    # --- V2 over gRPC: calls that name no model (the gRPC front sends them here) ---------------

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        from modelpool.deployments.protos import open_inference_pb2 as pb

        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        return await grpc_api.server_ready(self.readiness)

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        return grpc_api.server_metadata()

    async def RepositoryIndex(self, request: Any, grpc_context: Any = None) -> Any:
        return await grpc_api.repository_index(self.manager, request, grpc_context)

    async def RepositoryModelLoad(self, request: Any, grpc_context: Any = None) -> Any:
        return await grpc_api.load(self.manager, request, grpc_context)

    async def RepositoryModelUnload(self, request: Any, grpc_context: Any = None) -> Any:
        return await grpc_api.unload(self.manager, request, grpc_context)

    def readiness(self) -> dict:
        if not self.manager.reconciled.is_set():
            return {"ready": False, "notReady": {"management": "restoring models from the registry"}}
        not_running = not_serving(self._applications.get())
        body: dict = {"ready": not not_running}
        if not_running:
            body["notReady"] = not_running
        return body
