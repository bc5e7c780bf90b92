"""The model routes: the MMS/TorchServe model API, TorchServe's explanations, ML Server pools and services, and
the V2 model repository extension. Each validates its parameters, calls
:class:`modelpool.management.model_manager.ModelManager` in a worker thread (its Serve calls block) and shapes the answer.
"""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from modelpool.deployments.errors import RequestError
from modelpool.deployments.http_io import check_inference_token
from modelpool.deployments.model_calls import protocol_error
from modelpool.management import repository
from modelpool.management.openapi_docs import (DESCRIBED, EMPTY_200, INDEX_BODY, INDEX_ENTRY, LOAD_BODY, UNLOAD_BODY, answers,
                                     body_of, json_answer, query_of, query_or_body_of, status)
from modelpool.management.params import ListParams, PoolParams, RegisterParams, ScaleParams
from modelpool.management.route_support import (IDEMPOTENCY_HEADER, authorized, in_thread, limited_body, manager_of, params_from,
                                      query_values, state)

#: Behind the management token.
router = APIRouter(dependencies=authorized)
#: TorchServe's explanations route, under management's prefix but behind the inference token.
explanations = APIRouter()

SCALE_ANSWERS = answers(404, 500, 504, params=True, ok={
    200: status('synchronous: the workers run ("Workers scaled to N for model: ...")'),
    202: status('asynchronous: "Processing worker updates..."')})
UNREGISTERED = answers(404, ok={200: status('"Model \"...\" unregistered"')})


# ---------------------------------------------------------------------------------- models
@router.post("/models", tags=["models"], response_model=None,
             responses=answers(403, 404, 408, 409, 413, 500, 504, params=True, ok={
                 200: status('registered; nothing pending: no workers asked for ("... registered with 0 initial '
                             'workers. ..."), or synchronous and the workers run'),
                 202: status('registered; the workers start asynchronously ("Processing worker updates...")')}),
             openapi_extra=query_or_body_of(RegisterParams))
async def register_model(request: Request) -> JSONResponse:
    """Register a model archive: url, model_name, handler, runtime, batch_size, max_batch_delay (ms),
    initial_workers, synchronous, response_timeout (s: each inference call), startup_timeout (s: the
    synchronous wait), max_queued_requests (calls that may wait at a replica; past them 429).

    Parameters come as a query string or, as TorchServe also takes them, as a JSON object body
    (``Content-Type: application/json``). An ``Idempotency-Key`` header makes the request safe to retry
    when its answer was lost (the connection dropped, the management replica died after the registry
    write): the same key gets the first answer again instead of a 409."""
    is_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
    query = await params_from(request) if is_json else query_values(request)  # TorchServe reads a body only if JSON
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        query["idempotency_key"] = key
    params = RegisterParams.parse(query)
    status, body = await in_thread(manager_of(request).register, params)
    return JSONResponse(body, status_code=status)


@router.get("/models", tags=["models"], response_model=None,
            responses=answers(params=True, ok={200: json_answer("a page of models, in name order",
                                                                {"$ref": "#/components/schemas/ModelList"})}),
            openapi_extra=query_of(ListParams))
async def list_models(request: Request) -> dict:
    return await in_thread(manager_of(request).list_models, ListParams.parse(query_values(request)))


@router.get("/models/{model_name}", tags=["models"], response_model=None,
            responses=answers(404, ok={200: DESCRIBED}))
async def describe_model(request: Request, model_name: str) -> list:
    return await in_thread(manager_of(request).describe, model_name, None)


@router.get("/models/{model_name}/{model_version}", tags=["models"], response_model=None,
            responses=answers(404, ok={200: DESCRIBED}))
async def describe_model_version(request: Request, model_name: str, model_version: str) -> list:
    """A version, or ``all`` for every version."""
    return await in_thread(manager_of(request).describe, model_name, model_version)


async def _scale(request: Request, name: str, version: Optional[str]) -> JSONResponse:
    params = ScaleParams.parse(query_values(request))
    status, body = await in_thread(manager_of(request).scale, name, version, params)
    return JSONResponse(body, status_code=status)


@router.put("/models/{model_name}", tags=["models"], response_model=None,
            responses=SCALE_ANSWERS, openapi_extra=query_of(ScaleParams))
async def scale_model(request: Request, model_name: str) -> JSONResponse:
    """Scale workers: min_worker, max_worker, number_gpu, synchronous, timeout (and batch_size, max_batch_delay,
    max_queued_requests: applied to running replicas, no restart)."""
    return await _scale(request, model_name, None)


@router.put("/models/{model_name}/{model_version}", tags=["models"], response_model=None,
            responses=SCALE_ANSWERS, openapi_extra=query_of(ScaleParams))
async def scale_model_version(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return await _scale(request, model_name, model_version)


@router.put("/models/{model_name}/{model_version}/set-default", tags=["models"],
            response_model=None, responses=answers(404, ok={200: status("the default version changed")}))
async def set_default(request: Request, model_name: str, model_version: str) -> dict:
    return await in_thread(manager_of(request).set_default, model_name, model_version)


@router.delete("/models/{model_name}", tags=["models"], response_model=None,
               responses=UNREGISTERED)
async def unregister_model(request: Request, model_name: str) -> dict:
    return await in_thread(manager_of(request).unregister, model_name, None)


@router.delete("/models/{model_name}/{model_version}", tags=["models"],
               response_model=None, responses=UNREGISTERED)
async def unregister_model_version(request: Request, model_name: str, model_version: str) -> dict:
    return await in_thread(manager_of(request).unregister, model_name, model_version)


# ---------------------------------------------------------------------------------- explanations
# described with the inference routes (management/openapi_inference.py)
@explanations.api_route("/explanations/{model_name}", methods=["POST", "PUT"], include_in_schema=False)
async def explain(request: Request, model_name: str) -> Response:
    return await _no_explainer(request, model_name, None)


@explanations.api_route("/explanations/{model_name}/{model_version}", methods=["POST", "PUT"], include_in_schema=False)
async def explain_version(request: Request, model_name: str, model_version: str) -> Response:
    return await _no_explainer(request, model_name, model_version)


async def _no_explainer(request: Request, name: str, version: Optional[str]) -> Response:
    """TorchServe's explanations route: 501 for a registered model, 404 for an unknown one, in TorchServe's shape.

    modelpool's handler contract has no explain step (KServe V1's ``:explain`` answers 501 alike). Served
    here because ``/explanations`` is under management's route prefix; the inference token guards it.
    """
    try:
        check_inference_token(request, state.serving)
        await in_thread(state.manager.record, name, version)
        raise RequestError(f"model '{name}' has no explainer (modelpool's handler contract has no explain step); "
                           f"use /predictions/{name}", status=501, field="path")
    except RequestError as exc:
        status, payload, headers = protocol_error("torchserve", exc, {}, state.debug)
        return Response(payload, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------- pools
@router.put("/pools/{name}/{version}", tags=["pools"],
            responses=answers(404, 408, 413, 500, params=True), openapi_extra=query_of(PoolParams))
async def create_or_update_pool(request: Request, name: str, version: str) -> dict:
    """A dedicated session pool: initial_pool_size replicas preloaded, up to max_pool_size."""
    params = PoolParams.parse(await params_from(request))
    return await in_thread(manager_of(request).put_pool, name, version, params)


@router.get("/pools/{name}/{version}", tags=["pools"], responses=answers(404))
async def pool_status(request: Request, name: str, version: str) -> list:
    return await in_thread(manager_of(request).pool_status, name, version)


@router.delete("/pools/{name}/{version}", tags=["pools"], responses=answers(404))
async def delete_pool(request: Request, name: str, version: str) -> dict:
    return await in_thread(manager_of(request).delete_pool, name, version)


@router.get("/services", tags=["services"])
async def services(request: Request) -> list:
    return await in_thread(manager_of(request).services)


# ---------------------------------------------------------------------------------- model repository (V2)
# The Open Inference Protocol's model repository extension, in Triton's shape (MLServer's is the same):
# the store is the repository, the registry what is loaded. Behind the token, unlike Triton's.
@router.post("/v2/repository/index", tags=["repository"], response_model=None,
             responses=answers(408, 413, ok={200: json_answer("the index, sorted by name and version",
                                                              {"type": "array", "items": INDEX_ENTRY})}),
             openapi_extra=body_of(INDEX_BODY))
async def repository_index(request: Request) -> JSONResponse:
    """Every registered model version with its state (READY, LOADING, UNLOADING, UNAVAILABLE) and every
    model store archive that is not registered (UNAVAILABLE); the body ``{"ready": true}`` keeps the READY ones."""
    ready_only = repository.parse_index_request(await limited_body(request))
    return JSONResponse(await in_thread(manager_of(request).repository_index, ready_only))


@router.post("/v2/repository/models/{model_name}/load", tags=["repository"],
             response_class=Response, responses=answers(404, 408, 413, 500, 504, ok={200: EMPTY_200}),
             openapi_extra=body_of(LOAD_BODY))
async def repository_load(request: Request, model_name: str) -> Response:
    """Register the model's archives from the model store and answer once it serves: 200, empty body, as Triton.

    Already registered: nothing changes. ``parameters`` are ignored but for Triton's ``config`` and
    ``file:`` ones, which are refused (modelpool cannot honour them)."""
    repository.parse_load_request(await limited_body(request))
    await in_thread(manager_of(request).load, model_name)
    return Response(status_code=200)


@router.post("/v2/repository/models/{model_name}/unload", tags=["repository"],
             response_class=Response, responses=answers(404, 408, 413, ok={200: EMPTY_200}),
             openapi_extra=body_of(UNLOAD_BODY))
async def repository_unload(request: Request, model_name: str) -> Response:
    """Unregister every version of the model: 200, empty body, as Triton. ``unload_dependents`` is ignored."""
    repository.parse_unload_request(await limited_body(request))
    await in_thread(manager_of(request).unload, model_name)
    return Response(status_code=200)
