"""The management application at route prefix ``/``: health, server metadata, and the fallback.

Requests for models that have no application of their own land here (longest-prefix routing), so
an unknown model gets a clear 404 naming the models that are served.
"""
from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from deployments.errors import RequestError
from management.serve_configs import parse_app_name
from modelpool import __version__

api = FastAPI(title="modelpool management", version=__version__)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


class _StatusCache:
    """serve.status() costs a controller round trip; health probes may come many times a second."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._at = 0.0
        self._value: Any = None

    def get(self) -> Any:
        now = time.monotonic()
        if self._value is None or now - self._at > self.ttl_s:
            self._value = serve.status()
            self._at = now
        return self._value


_status = _StatusCache()


def served_models() -> dict[str, list[str]]:
    models: dict[str, list[str]] = {}
    for app_name, app in _status.get().applications.items():
        parsed = parse_app_name(app_name)
        if parsed and app.status == "RUNNING":
            models.setdefault(parsed[0], []).append(parsed[1])
    return models


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class Management:
    """Health and metadata now; the model, pool and batch APIs join this app."""

    @api.get("/ping")
    def ping(self) -> dict:
        return {"status": "Healthy"}

    @api.get("/v2/health/live")
    def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> JSONResponse:
        status = _status.get()
        not_running = {name: app.status for name, app in status.applications.items() if app.status != "RUNNING"}
        body = {"ready": not not_running}
        if not_running:
            body["notReady"] = not_running
        return JSONResponse(body, status_code=200 if not not_running else 503)

    @api.get("/v2")
    def server_metadata(self) -> dict:
        return {"name": "modelpool", "version": __version__, "extensions": ["model_repository"]}

    @api.api_route("/v2/models/{name}", methods=["GET", "POST"])
    @api.api_route("/v2/models/{name}/{rest:path}", methods=["GET", "POST"])
    def unknown_model(self, name: str, rest: str = "") -> JSONResponse:
        models = served_models()
        if name in models:  # a version that is not served: the model app answers for known ones
            raise RequestError(f"model '{name}' has no such version; served versions: {', '.join(sorted(models[name]))}",
                               status=404, field="version")
        known = ", ".join(sorted(models)) or "none"
        raise RequestError(f"unknown model '{name}'; served models: {known}", status=404, field="model_name")
