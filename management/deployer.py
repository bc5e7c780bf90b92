"""Puts model versions on Serve: the only place that turns an ``AppConfig`` into running replicas."""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Iterable, Optional

from ray import serve
from ray.serve.api import RunTarget

from cluster.settings import Settings
from deployments.archive import list_store
from deployments.model_deployment import ModelServer
from management import serve_configs
from management.serve_configs import AppConfig, ModelConfig
from modelpool import __version__

logger = logging.getLogger(__name__)


def archive_digest(path: Path) -> str:
    """Content fingerprint of an archive: a changed archive means new replicas."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    else:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def version_sort_key(version: str) -> tuple:
    """Natural order, so version "10" is newer than "9"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version.replace("-", ".").split("."))


def model_config_from_settings(settings: Settings, name: str, version: str, source: Path,
                               is_default: bool, versions: Iterable[str]) -> ModelConfig:
    return ModelConfig(
        name=name,
        version=version,
        source=str(source),
        source_digest=archive_digest(source),
        is_default=is_default,
        versions=tuple(versions),
        initial_replicas=settings.workers,
        min_replicas=min(settings.workers, settings.max_workers) if settings.workers else 1,
        max_replicas=settings.max_workers,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_ongoing_requests=settings.threads,
        num_cpus=settings.replica_num_cpus,
        target_ongoing_requests=settings.target_ongoing_requests,
        upscale_delay_s=settings.upscale_delay_s,
        downscale_delay_s=settings.downscale_delay_s,
        max_body_bytes=settings.max_body_bytes,
    )


def store_model_configs(settings: Settings) -> list[ModelConfig]:
    """One config per archive in the model store; the newest version of each model is the default."""
    by_name: dict[str, list[tuple[str, Path]]] = {}
    for manifest, path in list_store(settings.model_store_path):
        by_name.setdefault(manifest.name, []).append((manifest.version, path))
    configs: list[ModelConfig] = []
    for name, entries in sorted(by_name.items()):
        entries.sort(key=lambda entry: version_sort_key(entry[0]))
        versions = [version for version, _ in entries]
        for version, path in entries:
            configs.append(model_config_from_settings(settings, name, version, path, version == versions[-1], versions))
    return configs


def _bind(app: AppConfig):
    options = dict(app.deployment_options)
    version = options.pop("version")
    deployment = serve.deployment(ModelServer).options(version=version, _internal=True, **options)
    return deployment.bind(**app.init_kwargs)


def deploy_models(models: Iterable[ModelConfig], cache_dir: Path, wait: bool = True) -> list[AppConfig]:
    """Deploy (or update in place) the given model versions as Serve applications."""
    apps = [serve_configs.model_app_config(model, str(cache_dir), __version__) for model in models]
    if not apps:
        return apps
    targets = [RunTarget(target=_bind(app), name=app.app_name, route_prefix=app.route_prefix) for app in apps]
    serve.run_many(targets, wait_for_applications_running=wait)
    return apps


def delete_model(name: str, version: str, wait: bool = True) -> None:
    serve.delete(serve_configs.app_name(name, version), _blocking=wait)


def wait_until_running(app_names: Iterable[str], timeout_s: float) -> None:
    """Block until every named app is RUNNING; raise with the apps' messages otherwise."""
    pending = set(app_names)
    deadline = time.monotonic() + timeout_s
    status: Optional[object] = None
    while pending and time.monotonic() < deadline:
        status = serve.status()
        for name in list(pending):
            app = status.applications.get(name)
            if app is not None and app.status == "RUNNING":
                pending.discard(name)
            elif app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"application {name} failed to deploy: {app.message}")
        if pending:
            time.sleep(0.5)
    if pending:
        raise TimeoutError(f"applications not running after {timeout_s:.0f}s: {sorted(pending)}")
