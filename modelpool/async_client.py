"""asyncio client of a modelpool cluster: :mod:`modelpool.client`'s API, as coroutines, on httpx.

For callers that already run an event loop (a web service fanning requests out to models, a
notebook scoring many services at once): calls do not block the loop, and many can be in flight
together over one connection pool. Methods, arguments, answers and typed errors are the sync
client's: the request bodies, paths, error mapping and download checks are the sync module's own
functions, imported, so the two clients cannot drift apart. Only network failures differ: they
raise httpx's exceptions (:class:`httpx.HTTPError`) where the sync client raises requests'.

``async with AsyncClient(...) as c:`` keeps one :class:`httpx.AsyncClient` (one keep-alive
connection pool, the token and User-Agent set once) for every call inside, including those made
through :class:`AsyncService` and :class:`AsyncBatch`; outside an ``async with`` each call opens and
closes its own, so nothing stays open behind the caller's back.

    async with AsyncClient("http://127.0.0.1:8000") as c:
        iris = await c.get_service("iris", "1")
        print(await asyncio.gather(*(iris.predict(rows) for rows in chunks)))  # concurrent calls
        report = await c.get_service("iris_report", "1")
        batch = await report.batch(frame, parallel_count=4).start()
        await batch.wait(progress=lambda done, total: print(done, total))
        print([list(row) for row in await batch.results()])   # each row's outputs as an array
        await batch.download(0, destination="reports")
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import ssl
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

import httpx
import numpy as np

from modelpool.batch_results import BatchResults, RowResult
from modelpool.client import (DEFAULT_URL, FINAL_STATES, RESULTS_PAGE, BadRequest, Conflict, ModelpoolError, NotFound,
                              Rows, Unauthorized, _Endpoint, _alias, _artifact_path, _artifact_targets,
                              _batch_arguments, _batch_path, _default_headers, _done_and_total, _encode,
                              _in_index_order, _infer_outputs, _infer_request, _is_frame, _model_path, _params,
                              _poll_delay, _pool_path, _server_wait, _service_path, _start_request, error_from,
                              resolve_token,
                              IDEMPOTENCY_HEADER, RETRY_FOR_S, is_transient, new_idempotency_key, retry_delay)
from modelpool.records import Records

__all__ = ["AsyncBatch", "AsyncClient", "AsyncService", "BadRequest", "BatchResults", "Conflict", "ModelpoolError",
           "NotFound", "RowResult", "Unauthorized", "resolve_token"]  # the errors too: one import for asyncio callers

# progress(done, total) may be a plain function or a coroutine function (awaited before the next poll)
AsyncProgressCallback = Callable[[int, Optional[int]], Union[None, Awaitable[None]]]


@functools.lru_cache(maxsize=8)
def _tls_context(verify: Union[bool, str] = True) -> Union[ssl.SSLContext, bool]:
    """One TLS context per CA setting for every httpx client opened here.

    httpx builds a context (loading the CA bundle) per client, ~30 ms of CPU: more than a whole
    call to a local cluster, and every call outside ``async with`` opens a client.
    """
    if verify is False:
        return False
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context()


class AsyncClient(_Endpoint[httpx.AsyncClient]):
    """The management, pool, inference and batch API of one cluster, for asyncio."""

    def __init__(self, url: str = DEFAULT_URL, token: Optional[str] = None, timeout: float = 60.0,
                 client: Optional[httpx.AsyncClient] = None, verify: Union[bool, str] = True,
                 retry_for: float = RETRY_FOR_S) -> None:
        """``verify``: for https URLs, True (system CAs), a CA bundle path (a cluster's own CA), or False.
        ``retry_for``: as :class:`modelpool.client.Client`'s."""
        super().__init__(url, token, timeout, client, retry_for)
        self.verify = verify

    # -------------------------------------------------------------- connection pool
    async def __aenter__(self) -> "AsyncClient":
        self._enter_block(self._new_http)
        return self

    async def __aexit__(self, *_: Any) -> None:
        if self._leave_block():
            await self.aclose()

    async def aclose(self) -> None:
        """Close the ``async with`` block's httpx client (its pooled connections go with it)."""
        http = self._release()
        if http is not None:
            await http.aclose()

    def _new_http(self) -> httpx.AsyncClient:
        # requests (the sync client) follows redirects; keep the two clients' answers the same
        return httpx.AsyncClient(headers=_default_headers(self.token), timeout=self.timeout, follow_redirects=True,
                                 verify=_tls_context(self.verify))

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[httpx.AsyncClient]:
        """The block's client (or the caller's); otherwise a fresh one closed after the call."""
        reused = self._reused
        if reused is not None:
            yield reused
            return
        async with self._new_http() as http:
            yield http

    async def _send(self, method: str, path: str, *, params: Optional[dict] = None, body: Any = None,
                    timeout: Optional[float] = None, retry: bool = False,
                    headers: Optional[dict] = None) -> httpx.Response:
        """One HTTP call, read whole (retried while transient if ``retry``); raises on a non-2xx answer."""
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            try:
                response = await self._send_once(method, path, params, body, timeout, headers)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):  # dropped, not refused
                if not retry or time.monotonic() >= deadline:
                    raise
            else:
                if response.is_success:
                    return response
                if not (retry and is_transient(response.status_code, response.text) and time.monotonic() < deadline):
                    raise error_from(response.status_code, response.text, response.reason_phrase)
            await asyncio.sleep(retry_delay(attempt))
            attempt += 1

    async def _send_once(self, method: str, path: str, params: Optional[dict], body: Any, timeout: Optional[float],
                         extra_headers: Optional[dict]) -> httpx.Response:
        data = _encode(body)
        headers = {} if data is None else {"Content-Type": "application/json"}
        headers.update(extra_headers or {})
        async with self._http() as http:
            if http is self._external:  # never written into the caller's client
                headers.update(_default_headers(self.token))
            return await http.request(method, self.url + path, params=params, content=data, headers=headers,
                                      timeout=timeout or self.timeout)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        return response.json() if response.content else None

    # -------------------------------------------------------------- models (MMS / TorchServe API)
    async def register_model(self, url: str, model_name: Optional[str] = None, initial_workers: int = 0,
                             batch_size: Optional[int] = None, max_batch_delay: Optional[float] = None,
                             synchronous: bool = False, response_timeout: Optional[float] = None,
                             handler: Optional[str] = None, idempotency_key: Optional[str] = None,
                             startup_timeout: Optional[float] = None) -> dict:
        """As :meth:`Client.register_model`; a synchronous call waits as long as the server may."""
        params = _params(url=url, model_name=model_name, initial_workers=initial_workers, batch_size=batch_size,
                         max_batch_delay=max_batch_delay, synchronous=synchronous,
                         response_timeout=response_timeout, startup_timeout=startup_timeout, handler=handler)
        return await self._json("POST", "/models", params=params, retry=True,
                                headers={IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()},
                                timeout=_server_wait(synchronous, startup_timeout, self.timeout))

    async def scale_model(self, name: str, version: Optional[str] = None, min_worker: Optional[int] = None,
                          max_worker: Optional[int] = None, number_gpu: Optional[int] = None,
                          synchronous: bool = False, timeout: Optional[float] = None,
                          batch_size: Optional[int] = None, max_batch_delay: Optional[float] = None) -> dict:
        """As :meth:`Client.scale_model` (the default version when ``version`` is None)."""
        params = _params(min_worker=min_worker, max_worker=max_worker, number_gpu=number_gpu,
                         synchronous=synchronous, timeout=timeout, batch_size=batch_size,
                         max_batch_delay=max_batch_delay)
        return await self._json("PUT", _model_path(name, version), params=params, retry=True,
                                timeout=_server_wait(synchronous, timeout, self.timeout))

    async def describe_model(self, name: str, version: Optional[str] = None) -> list[dict]:
        """One version's description (the default's when None; ``"all"`` for every version)."""
        return await self._json("GET", _model_path(name, version), retry=True)

    async def unregister_model(self, name: str, version: Optional[str] = None) -> dict:
        return await self._json("DELETE", _model_path(name, version))

    async def list_models(self, limit: int = 100) -> list[dict]:
        """Every model: the ``nextPageToken`` pages are followed here, ``limit`` models a request."""
        models: list[dict] = []
        token: Optional[str] = None
        while True:
            page = await self._json("GET", "/models", params=_params(limit=limit, next_page_token=token), retry=True)
            models.extend(page.get("models", []))
            token = page.get("nextPageToken")
            if not token:
                return models

    async def set_default(self, name: str, version: str) -> dict:
        return await self._json("PUT", f"{_model_path(name, version)}/set-default")

    # -------------------------------------------------------------- services and pools (ML Server)
    async def list_services(self) -> list[dict]:
        return await self._json("GET", "/services")

    async def get_service(self, name: str, version: Optional[str] = None) -> "AsyncService":
        """A registered version (the default when None), checked now so a typo fails here, not later."""
        described = await self.describe_model(name, version)
        return AsyncService(self, name, str(described[0]["modelVersion"]))

    async def create_or_update_service_pool(self, name: str, version: str, initial_pool_size: int,
                                            max_pool_size: int) -> dict:
        body = {"initial_pool_size": initial_pool_size, "max_pool_size": max_pool_size}
        return await self._json("PUT", _pool_path(name, version), body=body)

    async def get_service_pool_status(self, name: str, version: str) -> list[dict]:
        return await self._json("GET", _pool_path(name, version))

    async def delete_service_pool(self, name: str, version: str) -> dict:
        return await self._json("DELETE", _pool_path(name, version))

    async def ping(self) -> bool:
        """True when the management application answers healthy; never raises."""
        try:
            return (await self._json("GET", "/ping")).get("status") == "Healthy"
        except (httpx.HTTPError, httpx.InvalidURL, ModelpoolError, ValueError, AttributeError):
            return False


@dataclass(eq=False)
class AsyncService:
    """A registered model version: online scoring and batch jobs over it (see :class:`Service`)."""

    client: AsyncClient = field(repr=False)
    name: str
    version: str

    @property
    def _path(self) -> str:
        return _service_path(self.name, self.version)

    async def predict(self, data: Rows) -> Union[list, np.ndarray]:
        """Plain-JSON scoring; arrays and DataFrames get an array back, lists get a list."""
        rows = data.to_numpy() if _is_frame(data) else data
        answer = await self.client._json("POST", f"{self._path}/predict", body={"instances": rows})
        return np.asarray(answer["predictions"]) if isinstance(rows, np.ndarray) else answer["predictions"]

    async def infer(self, rows: Rows, outputs: Optional[list[str]] = None) -> dict[str, np.ndarray]:
        """V2 inference over rows as one FP64 matrix; ``outputs`` picks outputs and their order."""
        return _infer_outputs(await self.client._json("POST", f"{self._path}/infer",
                                                      body=_infer_request(rows, outputs)))

    def batch(self, records: Records, parallel_count: int = 10, *,
              parallelCount: Optional[int] = None) -> "AsyncBatch":  # noqa: N803
        """A batch job over ``records`` (as :meth:`Service.batch` takes them), not started: ``await ....start()``."""
        rows, parallel = _batch_arguments(records, parallel_count, parallelCount)
        return AsyncBatch(self, records=rows, parallel_count=parallel)

    async def list_batch_executions(self) -> list[str]:
        """Execution ids of this version's batch jobs, oldest first."""
        return await self.client._json("GET", "/batches", params=_params(service=self.name, version=self.version))

    get_batch_executions = list_batch_executions  # modelpool's earlier name

    def get_batch(self, execution_id: str) -> "AsyncBatch":
        """A job started earlier (by anyone), to follow or read; no request until one is awaited."""
        return AsyncBatch(self, execution_id=execution_id)


@dataclass(eq=False)
class AsyncBatch:
    """One batch execution: start it, follow it, read its results and artifacts (see :class:`Batch`)."""

    service: AsyncService
    records: Optional[list] = field(default=None, repr=False)  # may be millions of rows
    parallel_count: int = 10
    execution_id: Optional[str] = None
    last_state: Optional[str] = field(default=None, init=False)  # as on Batch: no request to read it

    @property
    def _client(self) -> AsyncClient:
        return self.service.client

    @property
    def _path(self) -> str:
        return _batch_path(self.execution_id)

    async def start(self) -> "AsyncBatch":
        """As :meth:`Batch.start`: idempotent, retried while the connection drops."""
        body = _start_request(self.service.name, self.service.version, self.records, self.parallel_count,
                              self.execution_id)
        answer = await self._client._json("POST", "/batches", body=body, retry=True,
                                          headers={IDEMPOTENCY_HEADER: new_idempotency_key()})
        self.execution_id, self.last_state = answer["executionId"], answer.get("state")
        return self

    async def state(self) -> str:
        """Pending, Running, Complete, Failed or Cancelled (a method here: reading it is a request)."""
        return (await self.status())["state"]

    async def status(self) -> dict:
        """The job's state and counts, without rows (cheap enough to poll)."""
        status = await self._client._json("GET", self._path, params=_params(show_partial_results=False))
        self.last_state = status.get("state")
        return status

    async def results(self, show_partial_results: bool = True, page_size: int = RESULTS_PAGE) -> BatchResults:
        """The state and every row scored so far, in index order (pages followed here), as :meth:`Batch.results`.

        With ``show_partial_results=False`` rows come only once the job is Complete, as in ML Server.
        """
        if not show_partial_results:
            status = await self.status()
            if status["state"] != "Complete":
                return BatchResults(status)
        rows: dict[int, dict] = {}
        offset: Optional[int] = 0
        while offset is not None:
            page = await self._client._json("GET", self._path, params=_params(
                show_partial_results=True, offset=offset, limit=page_size))
            rows.update((row["index"], row) for row in page.get("results", []))
            offset = page.get("nextOffset")
        return _in_index_order(page, rows)

    async def execution(self, index: int) -> RowResult:
        """Row ``index``'s outputs as an array (a RowResult), as :meth:`Batch.execution`."""
        return RowResult(await self._client._json("GET", f"{self._path}/results/{int(index)}"))

    async def list_artifacts(self, index: int) -> list[str]:
        return await self._client._json("GET", f"{self._path}/results/{int(index)}/artifacts")

    async def artifact(self, index: int, file_name: Optional[str] = None, *, name: Optional[str] = None) -> bytes:
        """One artifact's bytes (``name``: the earlier name of ``file_name``)."""
        path = _artifact_path(self._path, index, _alias(file_name, name, "file_name", "name"))
        return (await self._client._send("GET", path)).content

    async def download(self, index: int, file_name: Optional[str] = None, destination: Union[str, Path, None] = None,
                       *, name: Optional[str] = None, dest: Union[str, Path, None] = None) -> list[Path]:
        """Write one artifact (every artifact of the row when ``file_name`` is None) into ``destination``.

        As :meth:`Batch.download`, with its checks: every name is checked before any artifact is
        fetched or written, so a hostile or broken server cannot make the client write outside it.
        """
        file_name = _alias(file_name, name, "file_name", "name")
        destination = _alias(destination, dest, "destination", "dest")
        names = [file_name] if file_name is not None else await self.list_artifacts(index)
        written = []
        for artifact_name, target in _artifact_targets(destination or ".", names):
            target.write_bytes(await self.artifact(index, artifact_name))  # reports are small: no thread hop
            written.append(target)
        return written

    async def cancel(self) -> "AsyncBatch":
        """Stop scheduling rows and return this batch (``last_state``: what the cancel left), as Batch.cancel."""
        self.last_state = (await self._client._json("DELETE", self._path)).get("state")
        return self

    async def wait(self, timeout: float = 600, poll: float = 0.5,
                   progress: Optional[AsyncProgressCallback] = None) -> dict:
        """Poll until Complete, Failed or Cancelled and return that state (TimeoutError after ``timeout`` s).

        The state carries counts, not rows (polling must stay cheap): read rows with ``results()``.
        ``progress(done, total)`` runs after every poll, as in :meth:`Batch.wait`; it may be a
        coroutine function. The loop sleeps with :func:`asyncio.sleep`, so other tasks run meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if progress is not None:
                reported = progress(*_done_and_total(status))
                if inspect.isawaitable(reported):
                    await reported
            if status["state"] in FINAL_STATES:
                return status
            await asyncio.sleep(_poll_delay(self.execution_id, status, deadline, timeout, poll))
