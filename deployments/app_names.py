"""Every name Serve knows modelpool's applications and deployments by, spelled once.

Management deploys applications under these names and replicas look each other up by them
(``serve.get_deployment_handle(deployment, app_name=app)``), so both sides import them from here.
A model version with replicas of its own is the application ``model:{name}:{version}``, an inference graph
the application ``graph:{name}``; everything
else is one fixed application: the generic pool, the gRPC front, one front per other server's URL
scheme and management itself. Pure: no Ray, so naming is unit-tested in milliseconds.
"""
from __future__ import annotations

from typing import Optional

from modelpool.deployments.codecs import kserve_v1, torchserve

MODEL_APP_PREFIX = "model:"
GRAPH_APP_PREFIX = "graph:"
GRAPH_DEPLOYMENT = "Graph"
MANAGEMENT_APP = "management"  # at route prefix "/"; the gRPC front sends it the calls that name no model
GENERIC_POOL_APP = "generic-pool"
GENERIC_POOL_DEPLOYMENT = "GenericPool"
GENERIC_POOL_ROUTE = "/v2/models"
FRONT_APP = "front"
FRONT_DEPLOYMENT = "Front"
PROTOCOL_FRONT_DEPLOYMENT = "ProtocolFront"
# protocol -> the Serve app at its codec's ROUTE_PREFIX (modelpool.deployments.protocol_front)
PROTOCOL_FRONT_APPS = {torchserve.NAME: "torchserve-inference", kserve_v1.NAME: "kserve-v1"}
#: The response header that names the replica which answered (every model replica sets it); management's
#: route probe reads it to tell which app a route reaches.
REPLICA_HEADER = "x-modelpool-replica"


def app_name(name: str, version: str) -> str:
    """The application of a model version that has replicas of its own."""
    return f"{MODEL_APP_PREFIX}{name}:{version}"


def parse_app_name(app: str) -> Optional[tuple[str, str]]:
    """(name, version) of a model app, or None for any other app."""
    if not app.startswith(MODEL_APP_PREFIX):
        return None
    name, _, version = app[len(MODEL_APP_PREFIX):].rpartition(":")
    return (name, version) if name else None


def graph_app_name(graph: str) -> str:
    """The application serving an inference graph (``PUT /graphs/{graph}``) at ``/v2/models/{graph}``."""
    return f"{GRAPH_APP_PREFIX}{graph}"


def parse_graph_app_name(app: str) -> Optional[str]:
    return app[len(GRAPH_APP_PREFIX):] if app.startswith(GRAPH_APP_PREFIX) else None


def deployment_name(name: str, version: str) -> str:
    """The deployment inside a model version's application (Serve's names hold no dots)."""
    return f"{name}_v{version}".replace(".", "_")
