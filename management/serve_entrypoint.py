"""The management application as a Serve *application builder*, for declarative deploys (KubeRay).

``modelpool start`` deploys the management app itself with ``serve.run`` (:func:`deploy_management`). A
KubeRay RayService instead hands Serve a config (``serveConfigV2``) naming an import path, and Serve's controller
imports and calls it in a build task: ``import_path: modelpool.management.serve_entrypoint:app`` with the
application's ``args``. This module is that import path, so the two ways of starting build the
same application from the same ``Settings``.

Why this is safe alongside the model apps: Serve deletes, on each declarative apply, only
applications that were themselves deployed declaratively and are missing from the new config
(``ApplicationStateManager.apply_app_configs``); the model applications that the management
replica deploys with ``serve.run`` are imperative and are left alone (see
cluster/kuberay-rayservice.yaml for the details).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, cast

from ray import serve
from ray.serve import Application
from ray.serve.api import RunTarget

from modelpool.cluster.defaults import MANAGEMENT_TOKEN_ENV
from modelpool.cluster.settings import Settings, env_name, load_settings
from modelpool.deployments.app_names import MANAGEMENT_APP

TOKEN_ENV = MANAGEMENT_TOKEN_ENV  # fed by a Kubernetes Secret


def alive_nodes() -> int:
    """Alive Ray nodes now (1 without Ray in this process)."""
    import ray

    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def build_management(settings: Settings, token: str, joined: Optional[bool] = None) -> Application:
    """The management application at ``/``, bound exactly as ``modelpool start`` binds it, with
    :func:`~modelpool.management.serve_configs.management_replica_count` replicas (``joined``: a cluster this
    start did not make; default: ``--address`` given)."""
    from modelpool.management.app import Management
    from modelpool.management.serve_configs import management_replica_count

    joined = bool(settings.address) if joined is None else joined
    replicas = management_replica_count(settings.management_replicas, joined,
                                        alive_nodes() if settings.management_replicas is None else 1)
    return Management.options(logging_config=settings.logging_config(), num_replicas=replicas).bind(
        settings.model_dump(), token)


def deploy_management(settings: Settings, token: str) -> None:
    """``modelpool start``'s imperative deploy of the same application; it restores or registers every model
    itself, so this only starts it (without waiting: the CLI waits for the routes)."""
    serve.run_many([RunTarget(target=build_management(settings, token), name=MANAGEMENT_APP, route_prefix="/")],
                   wait_for_applications_running=False)


def settings_from_args(args: Optional[Mapping[str, Any]], environ: Optional[Mapping[str, str]] = None) -> Settings:
    """Settings from the environment (``MODELPOOL_*``) overridden by the config's ``args``.

    The token is refused in ``args``: a RayService's ``serveConfigV2`` is readable by anyone who can
    read the custom resource, and Serve echoes every application's ``args`` back in its status
    (``GET /api/serve/applications/``). It must come from the environment, i.e. from a Secret.
    A missing token is refused too: ``modelpool start`` would generate one and save it in
    ``HOME``, but in a pod that file is on a disk nobody reads and is gone with the pod, so the
    API would be locked with a token no one knows.
    """
    args = dict(args or {})
    for secret in ("management_token", "inference_token"):
        if secret in args:
            raise ValueError(f"{secret} must not be in the Serve config's args (they are readable by anyone "
                             f"who can read the RayService, are shown in Serve's status and logged by Serve's "
                             f"controller): set {env_name(secret)} from a Kubernetes Secret instead")
    environ = os.environ if environ is None else environ
    settings = load_settings(args, environ)
    if not settings.management_token:
        raise ValueError(f"{TOKEN_ENV} is not set: give every Ray container the management token "
                         f"from a Kubernetes Secret (env valueFrom.secretKeyRef)")
    return settings


def app(args: dict) -> Application:
    """Serve's entry point (``modelpool.management.serve_entrypoint:app``); ``args`` are Settings field names."""
    settings = settings_from_args(args)
    # a RayService is a cluster by nature (its worker groups scale after the build): joined
    return build_management(settings, cast(str, settings.management_token), joined=True)  # token: checked above
