"""The graph routes: ``PUT``, ``GET`` and ``DELETE /graphs/{name}`` and ``GET /graphs``, behind the management token.

The body of a ``PUT`` is Seldon Core's graph (``{"graph": {"name": ..., "type": ..., "children": [...]}}``, or
the root node itself); the checks and the work are :class:`modelpool.management.graph_calls.GraphCalls`', run in
a worker thread (their Serve calls block).
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from modelpool.deployments.errors import RequestError
from modelpool.management.openapi_docs import answers, body_of, json_answer, status
from modelpool.management.route_support import authorized, in_thread, limited_body, manager_of

router = APIRouter(dependencies=authorized)

_NODE = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"},
    "type": {"type": "string", "enum": ["MODEL", "TRANSFORMER", "ROUTER", "COMBINER", "OUTLIER_DETECTOR"]},
    "model": {"type": "string"}, "version": {"type": "string"}, "graph": {"type": "string"},
    "implementation": {"type": "string", "enum": ["SPLIT", "SHADOW"]},
    "weights": {"type": "array", "items": {"type": "number"}},
    "routing_header": {"type": "string"},
    "outputs": {"type": "array", "items": {"type": "string"}},
    "children": {"type": "array", "items": {"type": "object"}}}}
GRAPH_BODY = {"type": "object", "properties": {"graph": _NODE}}
GRAPH_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "graph": _NODE, "endpoint": {"type": "string"}, "status": {"type": "string"},
    "createdAt": {"type": "number"}, "updatedAt": {"type": "number"}}}


@router.put("/graphs/{name}", tags=["graphs"], response_model=None,
            responses=answers(404, 408, 409, 413, 500, 504, ok={
                200: status('replaced; every replica applied it ("Graph \"...\" updated")'),
                201: status('created; its replicas serve ("Graph \"...\" created")')}),
            openapi_extra=body_of(GRAPH_BODY, required=True))
async def put_graph(request: Request, name: str) -> JSONResponse:
    """Create or replace a graph; answered once it serves at ``/v2/models/{name}/infer``."""
    raw = await limited_body(request)
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        raise RequestError("the body is not valid JSON; send the graph as a JSON object", field="graph") from None
    code, answer = await in_thread(manager_of(request).put_graph, name, body)
    return JSONResponse(answer, status_code=code)


@router.get("/graphs", tags=["graphs"], response_model=None,
            responses=answers(ok={200: json_answer("every graph, in name order", {
                "type": "object", "properties": {"graphs": {"type": "array", "items": GRAPH_SCHEMA}}})}))
async def list_graphs(request: Request) -> dict:
    return await in_thread(manager_of(request).list_graphs)


@router.get("/graphs/{name}", tags=["graphs"], response_model=None,
            responses=answers(404, ok={200: json_answer("the graph as stored, and its application's state",
                                                        GRAPH_SCHEMA)}))
async def get_graph(request: Request, name: str) -> dict:
    return await in_thread(manager_of(request).get_graph, name)


@router.delete("/graphs/{name}", tags=["graphs"], response_model=None,
               responses=answers(404, 409, ok={200: status('"Graph \"...\" deleted"')}))
async def delete_graph(request: Request, name: str) -> dict:
    return await in_thread(manager_of(request).delete_graph, name)
