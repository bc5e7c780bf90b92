"""One loaded model version and its batcher: the part shared by dedicated apps and the generic pool.

Every request is decoded on arrival, then joins the adaptive batcher; one handler call serves a
whole batch. Slow models run on a single model thread so the replica's event loop keeps reading
requests (and answering health checks) while they compute; models faster than a thread handoff is
worth run inline.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import numpy as np

from modelpool.cluster.settings import DEFAULT_MAX_BATCH_DELAY_MS, DEFAULT_MAX_BATCH_SIZE, DEFAULT_RESPONSE_TIMEOUT_S
from modelpool.deployments import dataplane, tracing
from modelpool.deployments.archive import LoadedArchive
from modelpool.deployments.batcher import AdaptiveBatcher
from modelpool.deployments.codecs.json_values import json_bytes
from modelpool.deployments.handler_loader import load_handler
from modelpool.deployments.handlers import Handler, ModelContext
from modelpool.deployments.metrics import ModelMetrics
from modelpool.deployments.serving_options import ServingOptions
from modelpool.deployments.tensors import InferenceRequest, InferenceResult, model_metadata

INLINE_BELOW_S = 0.002

BodyReader = Callable[[], Awaitable[bytes]]
Decoder = Callable[[], Awaitable[InferenceRequest]]


@dataclass(frozen=True)
class ModelAnswer:
    """An encoded answer and how many requests shared its model call."""

    payload: bytes
    batch_size: int
    media_type: str = "application/json"


@dataclass(frozen=True)
class RawRequest:
    """An undecoded body for a handler's ``predict_raw`` (payload passthrough); never batched with others."""

    body: bytes
    content_type: str


class LoadedModel:
    """A model version ready to answer V2 and plain JSON requests through its own batcher."""

    def __init__(self, archive: LoadedArchive, name: str, version: str,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_batch_delay_s: float = DEFAULT_MAX_BATCH_DELAY_MS / 1000, replica: str = "") -> None:
        self.name = name
        self.version = version
        self.replica = replica
        self.manifest = archive.manifest
        self.context = ModelContext(model_dir=archive.model_dir, manifest=archive.manifest, artifact_root=None)
        self.handler: Handler = load_handler(archive.model_dir, archive.manifest, self.context)
        self.loaded_at = time.time()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self.batcher: AdaptiveBatcher[dataplane.ModelRequest] = AdaptiveBatcher(self._predict_batch, max_batch_size, max_batch_delay_s)
        self._call_seconds = float("inf")  # running average of handler calls; unknown until the first
        self.options = ServingOptions()
        self.metrics = ModelMetrics(name, version, replica)
        self._has_predict_raw = callable(getattr(self.handler, "predict_raw", None))
        self.response_timeout_s = DEFAULT_RESPONSE_TIMEOUT_S
        self._call_started: Optional[float] = None  # monotonic start of the handler call running now

    def configure(self, max_batch_size: int, max_batch_delay_s: float,
                  response_timeout_s: Optional[float] = None) -> None:
        self.batcher.configure(max_batch_size, max_batch_delay_s)
        if response_timeout_s:
            self.response_timeout_s = float(response_timeout_s)

    def overdue_call_s(self) -> Optional[float]:
        """How long the running handler call has taken, when that is past the response timeout (else None).

        A call that never returns (a deadlock, an endless loop) holds the one model thread, and every
        later request would time out behind it; the replica's health check uses this to have Serve
        replace the replica, as TorchServe restarts a worker that misses its response_timeout.
        """
        started = self._call_started
        if started is None:
            return None
        running = time.monotonic() - started
        return running if running > self.response_timeout_s else None

    async def infer(self, decode: Decoder) -> InferenceResult:
        """Decode (inside the batcher's view, so a batch waits for requests still being read), batch, run.

        ``decode`` reads the body and turns it into a request with the transport's codec; the
        outputs come back selected and ordered for the codec to encode.
        """
        with self.batcher.incoming() as incoming:
            request = await decode()
            queued = dataplane.model_request(request, self.manifest.inputs)
            if tracing.active():
                queued = dataclasses.replace(queued, trace=tracing.current_context())
            incoming.release()
            outputs, batch_size = await self.batcher.submit(queued, dataplane.batch_key(queued))
        return InferenceResult(self.name, self.version, request,
                               dataplane.select_outputs(outputs, request, self.name), batch_size)

    @property
    def takes_raw_payloads(self) -> bool:
        """Payload passthrough is on and this model's handler can read raw bodies."""
        return self.options.payload_passthrough and self._has_predict_raw

    async def raw(self, read_body: BodyReader, content_type: str) -> ModelAnswer:
        """Payload passthrough: the body goes to ``predict_raw`` as sent, its answer back as returned.

        It still queues behind the batcher (keyed per request, so alone in its call): the handler
        is never called concurrently, whichever route a request took.
        """
        with self.batcher.incoming() as incoming:
            request = RawRequest(await read_body(), content_type)
            incoming.release()
            answer, _ = await self.batcher.submit(request, ("raw", id(request)))
        return answer

    def metadata(self, versions: list[str]) -> dict:
        manifest = self.manifest
        return model_metadata(
            self.name, versions, manifest.handler,
            [_spec(t) for t in manifest.inputs], [_spec(t) for t in manifest.outputs])

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    async def _predict_batch(self, requests: list[dataplane.ModelRequest]) -> list[Any]:
        """One handler call for the batch; on failure, retry alone so one bad request fails alone."""
        self.metrics.batch(len(requests), self.batcher.waiting, self.batcher.stats.last_wait_s)
        if isinstance(requests[0], RawRequest):
            return [(await self._run_raw(request), 1) for request in requests]
        spans = tracing.start_batch(f"{self.name}:{self.version}", (r.trace for r in requests), len(requests), {
            "modelpool.model": self.name, "modelpool.version": self.version, "modelpool.replica": self.replica,
            "modelpool.batch.rows": sum(r.rows for r in requests)}) if tracing.active() else None
        if spans is not None:
            return await self._traced_batch(requests, spans)
        return await self._run_batch(requests)

    async def _traced_batch(self, requests: list[dataplane.ModelRequest], spans: tracing.BatchSpans) -> list[Any]:
        error: Optional[BaseException] = None
        try:
            with spans.handler():
                return await self._run_batch(requests)
        except BaseException as exc:
            error = exc
            raise
        finally:
            spans.end(error)

    async def _run_batch(self, requests: list[dataplane.ModelRequest]) -> list[Any]:
        wanted = requests[0].requested_outputs
        try:
            outputs = await self._run_model(dataplane.concatenate(requests), wanted)
            return [(out, len(requests)) for out in dataplane.split_outputs(outputs, requests)]
        except Exception:
            if len(requests) == 1:
                raise
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

    async def _run_raw(self, request: RawRequest) -> ModelAnswer:
        answer = await asyncio.get_running_loop().run_in_executor(self._executor, self._watched_raw, request)
        return raw_answer(answer, getattr(self.handler, "raw_media_type", "application/octet-stream"))

    def _watched_raw(self, request: RawRequest) -> Any:
        self._call_started = time.monotonic()
        try:
            return self.handler.predict_raw(request.body, request.content_type)
        finally:
            self._call_started = None

    def _timed_handle(self, inputs: dict[str, np.ndarray], wanted: Optional[tuple[str, ...]]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        self._call_started = time.monotonic()
        self.context.requested_outputs = wanted
        try:
            return self.handler.handle(inputs)
        finally:
            self._call_started = None
            elapsed = time.perf_counter() - started
            self._call_seconds = elapsed if self._call_seconds == float("inf") else 0.8 * self._call_seconds + 0.2 * elapsed


def raw_answer(answer: Any, bytes_media_type: str) -> ModelAnswer:
    """bytes go back as they are, text as text/plain, anything else as JSON."""
    if isinstance(answer, (bytes, bytearray, memoryview)):
        return ModelAnswer(bytes(answer), 1, bytes_media_type)
    if isinstance(answer, str):
        return ModelAnswer(answer.encode(), 1, "text/plain; charset=utf-8")
    return ModelAnswer(json_bytes(answer), 1)


def _spec(tensor: Any) -> dict:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
