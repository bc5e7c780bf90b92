"""The batch routes (Machine Learning Server's batch API): start, list, state, results, artifacts, cancel.

Thin over :class:`modelpool.management.batch.service.BatchService`; the body of a start is
:class:`modelpool.management.batch.params.BatchParams`.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from modelpool.deployments.errors import RequestError
from modelpool.management.batch.params import BatchParams
from modelpool.management.openapi_docs import IDEMPOTENCY_KEY_HEADER, answers, body_of, json_body
from modelpool.management.route_support import IDEMPOTENCY_HEADER, limited_body, in_thread, authorized, state

router = APIRouter(tags=["batches"], dependencies=authorized)


async def _json_body(request: Request) -> Any:
    body = await limited_body(request)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise RequestError("the body is not valid JSON; send {\"service\", \"version\", \"records\" | \"input_uri\"}",
                           field="body") from None


@router.post("/batches", status_code=202,
             responses=answers(404, 408, 413), openapi_extra={**body_of(json_body(BatchParams), required=True),
                                                              "parameters": [IDEMPOTENCY_KEY_HEADER]})
async def start_batch(request: Request) -> JSONResponse:
    """Score records (or a Parquet, CSV or TSV input_uri) asynchronously on Ray tasks: 202 with an executionId.

    An ``Idempotency-Key`` header makes the request safe to retry: the same key gets the job it
    started the first time, not a second job."""
    answer = await in_thread(state.batches.submit, await _json_body(request), request.headers.get(IDEMPOTENCY_HEADER),
                             request.headers.get("traceparent"))
    return JSONResponse(answer, status_code=202)


@router.get("/batches")
async def list_batches(request: Request, service: Optional[str] = None, version: Optional[str] = None) -> list:
    return await in_thread(state.batches.list, service, version)


@router.get("/batches/{execution_id}", responses=answers(404))
async def batch_state(request: Request, execution_id: str, show_partial_results: bool = False,
                      offset: int = 0, limit: int = 1000) -> dict:
    """State and totals; with show_partial_results, the rows scored so far in index order, a page
    at a time (offset, limit; nextOffset is null on the last page)."""
    return await in_thread(state.batches.state, execution_id, show_partial_results, offset, limit)


@router.get("/batches/{execution_id}/results/{index}", responses=answers(404))
async def batch_result(request: Request, execution_id: str, index: int) -> dict:
    return await in_thread(state.batches.result, execution_id, index)


@router.get("/batches/{execution_id}/results/{index}/artifacts",
            responses=answers(404))
async def batch_artifacts(request: Request, execution_id: str, index: int) -> list:
    return await in_thread(state.batches.artifacts, execution_id, index)


@router.get("/batches/{execution_id}/results/{index}/artifacts/{name}",
            response_class=Response, responses=answers(404, ok={200: {
                "description": "the file, as the handler wrote it",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}))
async def batch_artifact(request: Request, execution_id: str, index: int, name: str) -> Response:
    data = await in_thread(state.batches.artifact, execution_id, index, name)
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": attachment(name)})


def attachment(name: str) -> str:
    """RFC 6266 ``Content-Disposition``: an ASCII stand-in and the exact name percent-encoded.

    Artifact names are whatever a handler wrote; a quote, ';' or a non-Latin-1 character quoted
    as is would break or extend the header (or fail to encode: a 500).
    """
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.delete("/batches/{execution_id}", responses=answers(404))
async def cancel_batch(request: Request, execution_id: str) -> dict:
    return await in_thread(state.batches.cancel, execution_id)


@router.post("/batches/{execution_id}/cancel", responses=answers(404))
async def cancel_batch_post(request: Request, execution_id: str) -> dict:
    return await in_thread(state.batches.cancel, execution_id)
