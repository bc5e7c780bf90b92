"""The Serve deployment that hosts one model version.

One replica loads the archive once, then answers the Open Inference Protocol V2 and the plain JSON
form on its own HTTP route (HAProxy sends requests straight to it: one hop). Every request is decoded
on arrival, then joins the adaptive batcher; one handler call serves a whole batch. Slow models run
on a single model thread so the replica's event loop keeps reading requests (and answering health
checks) while they compute; models faster than a thread handoff is worth run inline.

Live settings arrive through ``user_config`` (``reconfigure``), which Serve applies in place: batch
size and delay change without restarting the replica.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from deployments import v2_protocol
from deployments.archive import unpack_archive
from deployments.batcher import AdaptiveBatcher
from deployments.errors import RequestError
from deployments.handlers import Handler, ModelContext, load_handler

logger = logging.getLogger("ray.serve")

JSON = "application/json"
INLINE_BELOW_S = 0.002


@dataclass(frozen=True)
class ModelRequest:
    """A decoded request: named input arrays that share their first (row) dimension."""

    inputs: dict[str, np.ndarray]
    rows: int
    requested_outputs: Optional[tuple[str, ...]] = None


def batch_key(request: ModelRequest) -> tuple:
    """Requests share a model call only when their arrays concatenate and they want the same outputs."""
    return (tuple((name, array.shape[1:], array.dtype.str) for name, array in request.inputs.items()),
            request.requested_outputs)


def concatenate(requests: list[ModelRequest]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return requests[0].inputs
    return {name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs}


def split_outputs(outputs: dict[str, np.ndarray], requests: list[ModelRequest]) -> list[dict[str, np.ndarray]]:
    if len(requests) == 1:
        return [outputs]
    results: list[dict[str, np.ndarray]] = []
    start = 0
    for request in requests:
        stop = start + request.rows
        results.append({name: array[start:stop] for name, array in outputs.items()})
        start = stop
    return results


def request_from_v2(parsed: v2_protocol.InferenceRequest, manifest_inputs: list) -> ModelRequest:
    """Check that the tensors are rows of one batch and fit the model's declared input."""
    rows: Optional[int] = None
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(parsed.inputs):
        data = tensor.data
        if data.ndim == 0:
            raise RequestError(
                f"input '{tensor.name}' is a scalar; send shape [rows, ...] with one row per instance",
                field=f"inputs[{i}].shape",
            )
        if rows is None:
            rows = data.shape[0]
        elif data.shape[0] != rows:
            raise RequestError(
                f"input '{tensor.name}' has {data.shape[0]} rows but the first input has {rows}; "
                "every input needs the same first dimension",
                field=f"inputs[{i}].shape",
            )
        inputs[tensor.name] = data
    if len(manifest_inputs) == 1 and len(parsed.inputs) == 1:
        _check_declared_shape(parsed.inputs[0].data, manifest_inputs[0])
    return ModelRequest(inputs=inputs, rows=rows or 0, requested_outputs=parsed.requested_outputs)


def _check_declared_shape(data: np.ndarray, declared: Any) -> None:
    shape = list(getattr(declared, "shape", None) or (declared.get("shape") if isinstance(declared, dict) else []) or [])
    if not shape:
        return
    expected_tail = shape[1:]
    actual_tail = list(data.shape[1:])
    fits = len(expected_tail) == len(actual_tail) and all(e in (-1, a) for e, a in zip(expected_tail, actual_tail))
    if not fits:
        raise RequestError(
            f"the model expects input shape {shape} (rows first) but got {list(data.shape)}; "
            f"send rows of {expected_tail or 'scalars'}",
            status=422,
            field="inputs[0].shape",
        )


class ModelServer:
    """Loads one model version and serves its V2 and plain JSON routes.

    Not decorated here: ``management`` wraps it with ``serve.deployment`` options computed from the
    model's config, so this class stays importable and testable without Serve.
    """

    def __init__(self, source: str, cache_dir: str, name: str, version: str, max_body_bytes: int = 16 << 20) -> None:
        archive = unpack_archive(Path(source), Path(cache_dir))
        self.name = name
        self.version = version
        self.manifest = archive.manifest
        self.context = ModelContext(model_dir=archive.model_dir, manifest=archive.manifest, artifact_root=None)
        self.handler: Handler = load_handler(archive.model_dir, archive.manifest, self.context)
        self.max_body_bytes = max_body_bytes
        self.versions = [version]
        self.started_at = time.time()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self.batcher: AdaptiveBatcher[ModelRequest] = AdaptiveBatcher(self._predict_batch)
        self._call_seconds = float("inf")  # running average of handler calls; unknown until the first
        self.replica_id = _replica_id()
        self._headers = {"x-modelpool-replica": self.replica_id}

    # --- live configuration -------------------------------------------------------------
    def reconfigure(self, user_config: dict) -> None:
        """Apply batch size, delay and the served version list without a restart."""
        self.batcher.configure(
            int(user_config.get("max_batch_size", self.batcher.max_batch_size)),
            float(user_config.get("max_batch_delay_ms", self.batcher.max_delay_s * 1000)) / 1000,
        )
        self.versions = [str(v) for v in user_config.get("versions", self.versions)]
        self.max_body_bytes = int(user_config.get("max_body_bytes", self.max_body_bytes))

    # --- HTTP entry point ---------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        path = request.url.path[len(request.scope.get("root_path", "")):].rstrip("/")
        version = self.version
        if path.startswith("/versions/"):
            version, _, rest = path[len("/versions/"):].partition("/")
            path = "/" + rest if rest else ""
            if version != self.version:
                return self._error(RequestError(
                    f"model '{self.name}' has no version '{version}' here; served versions: {', '.join(self.versions)}",
                    status=404, field="version"))
        method = request.method
        try:
            if path == "/infer" and method == "POST":
                return await self._infer(request)
            if path == "/predict" and method == "POST":
                return await self._predict(request)
            if path == "/ready" and method == "GET":
                return self._json({"name": self.name, "version": version, "ready": True})
            if path == "" and method == "GET":
                return self._json(self._metadata())
            if path in ("/infer", "/predict", "/ready", ""):
                raise RequestError(f"method {method} not allowed on this path", status=405, field="method")
            raise RequestError(
                f"no route {request.url.path}; model routes are /infer, /predict, /ready and the model path itself",
                status=404, field="path")
        except RequestError as exc:
            return self._error(exc)
        except Exception as exc:  # the handler failed: report it, keep serving
            logger.exception("model %s:%s failed", self.name, self.version)
            return self._json({"error": f"model '{self.name}' version '{self.version}' failed: {type(exc).__name__}: {exc}"}, 500)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes}; send fewer rows per request", status=413, field="body")
        body = await request.body()
        if len(body) > self.max_body_bytes:
            raise RequestError(f"request body exceeds the limit of {self.max_body_bytes} bytes; send fewer rows per request", status=413, field="body")
        return body

    async def _infer(self, request: Request) -> Response:
        with self.batcher.incoming() as incoming:
            body = await self._read_body(request)
            parsed = v2_protocol.parse_infer_request(body)
            model_request = request_from_v2(parsed, self.manifest.inputs)
            incoming.release()
            outputs, batch_size = await self.batcher.submit(model_request, batch_key(model_request))
        payload = v2_protocol.encode_infer_response(self.name, self.version, parsed.id, outputs, parsed.requested_outputs)
        return Response(payload, media_type=JSON, headers={**self._headers, "x-modelpool-batch-size": str(batch_size)})

    async def _predict(self, request: Request) -> Response:
        with self.batcher.incoming() as incoming:
            body = await self._read_body(request)
            instances = v2_protocol.parse_predict_request(body)
            if len(self.manifest.inputs) == 1:
                _check_declared_shape(instances, self.manifest.inputs[0])
            model_request = ModelRequest(inputs={"input-0": instances}, rows=instances.shape[0])
            incoming.release()
            outputs, batch_size = await self.batcher.submit(model_request, batch_key(model_request))
        predictions = outputs["predict"] if "predict" in outputs else next(iter(outputs.values()))
        return Response(v2_protocol.encode_predict_response(predictions), media_type=JSON,
                        headers={**self._headers, "x-modelpool-batch-size": str(batch_size)})

    # --- batching -----------------------------------------------------------------------
    async def _predict_batch(self, requests: list[ModelRequest]) -> list[Any]:
        """One handler call for the batch; on failure, retry alone so one bad request fails alone."""
        wanted = requests[0].requested_outputs
        try:
            outputs = await self._run_model(concatenate(requests), wanted)
            return [(out, len(requests)) for out in split_outputs(outputs, requests)]
        except Exception as exc:
            if len(requests) == 1:
                raise
            logger.warning("batch of %d failed (%s); retrying requests one by one", len(requests), exc)
        results: list[Any] = []
        for request in requests:
            try:
                results.append((await self._run_model(request.inputs, wanted), 1))
            except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                results.append(exc)
        return results

    async def _run_model(self, inputs: dict[str, np.ndarray], wanted: Optional[tuple[str, ...]]) -> dict[str, np.ndarray]:
        """Run the handler inline when it is cheap, else on the model thread.

        A thread handoff costs about 50 us, a quarter of a small scikit-learn call, so models
        whose calls take under ``INLINE_BELOW_S`` (a running average) run on the event loop;
        slower ones run on the model thread so the loop keeps reading requests and answering
        health checks meanwhile. One batch runs at a time either way.
        """
        if self._call_seconds < INLINE_BELOW_S:
            return self._timed_handle(inputs, wanted)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_handle, inputs, wanted)

    def _timed_handle(self, inputs: dict[str, np.ndarray], wanted: Optional[tuple[str, ...]]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        self.context.requested_outputs = wanted
        try:
            return self.handler.handle(inputs)
        finally:
            elapsed = time.perf_counter() - started
            self._call_seconds = elapsed if self._call_seconds == float("inf") else 0.8 * self._call_seconds + 0.2 * elapsed

    # --- helpers ------------------------------------------------------------------------
    def _metadata(self) -> dict:
        manifest = self.manifest
        return v2_protocol.model_metadata(
            self.name, self.versions, manifest.handler if manifest.handler != "sklearn" else "sklearn",
            [_spec(t) for t in manifest.inputs], [_spec(t) for t in manifest.outputs])

    def _json(self, body: dict, status: int = 200) -> Response:
        import json
        return Response(json.dumps(body).encode(), status_code=status, media_type=JSON, headers=self._headers)

    def _error(self, exc: RequestError) -> Response:
        return Response(exc.to_json(), status_code=exc.status, media_type=JSON, headers=self._headers)


def _spec(tensor: Any) -> dict:
    if isinstance(tensor, dict):
        return {"name": tensor["name"], "datatype": tensor["datatype"], "shape": list(tensor["shape"])}
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return f"local-{os.getpid()}"
