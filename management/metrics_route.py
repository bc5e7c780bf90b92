"""The cluster's Prometheus metrics on the HTTP port, at ``--metrics-path`` (Seldon's PREDICTIVE_UNIT_METRICS_ENDPOINT).

Ray exports each node's metrics (Serve's ``ray_serve_*`` and modelpool's ``ray_modelpool_*``) on that node's
metrics export port (``--metrics-port`` on a local head). A Prometheus set up as for Seldon (one target, one
path) or one that reaches only the HTTP port scrapes here instead: management reads every alive node's export,
all at once with a short timeout each, and answers them merged (``prometheus_text``). A node that does not
answer in time is named in a comment line and the others are answered: one slow node must not blank the
whole cluster's scrape.

Open like ``/ping`` and the health routes, since Prometheus scrapes without credentials by default; with
``--inference-token`` it takes that token or the management token, as the model routes do.

The path is a setting the replica learns in its constructor, after Serve has frozen a copy of the FastAPI app,
so the route reads it from the replica's ``state`` when it matches (``MetricsRoute``) instead of being declared
with a fixed path. Its ``path`` is the setting too: Serve names the route by it in the access line
(``GET /metrics 200 3.2ms``), which ``scrape_logs`` recognises.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route, get_route_path
from starlette.types import Scope

from modelpool.deployments.http_io import check_inference_token
from modelpool.management.prometheus_text import CONTENT_TYPE, NodeExposition, merge
from modelpool.management.route_support import state

#: Longest wait for one node's export. Prometheus' default scrape timeout is 10 s; a node answering slower than
#: this is reported unreachable so the rest still arrive in time.
NODE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class MetricsTarget:
    """One node's metrics export: where to read it."""

    host: str
    port: int

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.name}/metrics"


def metrics_targets(nodes: Iterable[Mapping[str, Any]]) -> list[MetricsTarget]:
    """The export of every alive node in ``ray.nodes()``'s answer (a dead node's export is gone with it)."""
    targets = []
    for node in nodes:
        port = node.get("MetricsExportPort")
        if node.get("Alive") and node.get("NodeManagerAddress") and port:
            targets.append(MetricsTarget(str(node["NodeManagerAddress"]), int(port)))
    return sorted(set(targets), key=lambda target: target.name)


def _alive_targets() -> list[MetricsTarget]:
    import ray

    return metrics_targets(ray.nodes())


async def _read(client: httpx.AsyncClient, target: MetricsTarget) -> NodeExposition:
    try:
        answer = await client.get(target.url)
        if answer.status_code != 200:
            return NodeExposition(target.name, error=f"HTTP {answer.status_code}")
        return NodeExposition(target.name, answer.text)
    except httpx.TimeoutException:
        return NodeExposition(target.name, error=f"no answer within {NODE_TIMEOUT_S:g} s")
    except httpx.HTTPError as exc:
        return NodeExposition(target.name, error=f"{type(exc).__name__}: {exc}")


async def gather(targets: Iterable[MetricsTarget], timeout_s: float = NODE_TIMEOUT_S) -> str:
    """Every target's exposition read concurrently and merged; unreachable ones named in comment lines."""
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:  # no proxy between Ray nodes
        expositions = await asyncio.gather(*(_read(client, target) for target in targets))
    return merge(expositions)


async def metrics(request: Request) -> Response:
    check_inference_token(request, state.serving)
    targets = await asyncio.to_thread(_alive_targets)  # a GCS round trip: off the event loop
    return Response(await gather(targets, NODE_TIMEOUT_S), media_type=CONTENT_TYPE)


class MetricsRoute(Route):
    """``GET`` (and ``HEAD``) at the replica's ``--metrics-path``, whatever it is set to."""

    def __init__(self) -> None:
        super().__init__(state.metrics_path, endpoint=metrics, methods=["GET"], name="metrics", include_in_schema=False)

    @property  # type: ignore[override]
    def path(self) -> str:
        return state.metrics_path

    @path.setter
    def path(self, _: str) -> None:
        """Route's constructor sets the path it was given; the replica's setting is what counts."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or get_route_path(scope) != state.metrics_path:
            return Match.NONE, {}
        child = {"endpoint": self.endpoint, "path_params": {}}
        # another method on the path: PARTIAL, so Route.handle answers 405 unless another route takes it
        return (Match.FULL if scope["method"] in (self.methods or ()) else Match.PARTIAL), child


route = MetricsRoute()
