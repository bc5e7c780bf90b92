"""asyncio client of a modelpool cluster: :mod:`modelpool.client`'s API, as coroutines, on httpx.

For callers that already run an event loop (a web service fanning requests out to models, a
notebook scoring many services at once): calls do not block the loop, and many can be in flight
together over one connection pool. Methods, arguments, answers and typed errors are the sync
client's: both are written once, in :mod:`modelpool.client_api`, and this module only carries their
calls out with httpx. Only network failures differ: they raise httpx's exceptions
(:class:`httpx.HTTPError`) where the sync client raises requests'.

``async with AsyncClient(...) as c:`` keeps one :class:`httpx.AsyncClient` (one keep-alive
connection pool, the token and User-Agent set once) for every call inside, including those made
through :class:`AsyncService` and :class:`AsyncBatch`; outside an ``async with`` each method opens
and closes its own (one for all the pages or polls of a looping method), so nothing stays open
behind the caller's back.

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
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

import httpx

from modelpool.batch_results import BatchResults, RowResult
from modelpool.client_api import BatchCalls, ClientCalls, ServiceCalls, Steps, one_call
from modelpool.client_core import (DEFAULT_URL, RETRY_FOR_S, Call, Callback, Retries, Sleep, Stepper,
                                   default_headers, encode, request_headers, resolve_token)
from modelpool.errors import BadRequest, Conflict, ModelpoolError, NotFound, Overloaded, Unauthorized, error_from

__all__ = ["AsyncBatch", "AsyncClient", "AsyncService", "BadRequest", "BatchResults", "Conflict", "ModelpoolError",
           "NotFound", "Overloaded", "RowResult", "Unauthorized", "resolve_token"]  # the errors too: one import for asyncio callers

# progress(done, total) may be a plain function or a coroutine function (awaited before the next poll)
AsyncProgressCallback = Callable[[int, Optional[int]], Union[None, Awaitable[None]]]


@functools.lru_cache(maxsize=8)
def _tls_context(verify: Union[bool, str] = True) -> Union[ssl.SSLContext, bool]:
    """One TLS context per CA setting for every httpx client opened here.

    httpx builds a context (loading the CA bundle) per client, ~30 ms of CPU: more than a whole
    call to a local cluster, and every method outside ``async with`` opens a client.
    """
    if verify is False:
        return False
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context()


class AsyncClient(ClientCalls[httpx.AsyncClient]):
    """The management, pool, inference and batch API of one cluster, for asyncio (every method is awaited)."""

    _network_errors = (httpx.HTTPError, httpx.InvalidURL)

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
        return httpx.AsyncClient(headers=default_headers(self.token), timeout=self.timeout, follow_redirects=True,
                                 verify=_tls_context(self.verify))

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[httpx.AsyncClient]:
        """The block's client (or the caller's); otherwise a fresh one closed after the method."""
        reused = self._reused
        if reused is not None:
            yield reused
            return
        async with self._new_http() as http:
            yield http

    # -------------------------------------------------------------- carrying steps out
    async def _run(self, steps: Steps) -> Any:
        """Run a method's steps; every call of one method rides one httpx client (opened at its first call)."""
        stepper = Stepper(steps)
        async with AsyncExitStack() as opened:
            http: Optional[httpx.AsyncClient] = None
            step = stepper.next()
            while not stepper.done:
                reply, error = None, None
                try:
                    if isinstance(step, Call):
                        http = http or await opened.enter_async_context(self._http())
                        reply = await self._answer(http, step)
                    elif isinstance(step, Sleep):
                        await asyncio.sleep(step.seconds)  # other tasks run meanwhile
                    elif isinstance(step, Callback):
                        called = step.function(*step.args)
                        if inspect.isawaitable(called):
                            await called
                except Exception as exc:  # handed to the method, which may expect it (ping)
                    error = exc
                step = stepper.next(reply, error)
        return stepper.value

    async def _answer(self, http: httpx.AsyncClient, call: Call) -> Any:
        response = await self._send(http, call)
        if call.raw:
            return response.content
        return response.json() if response.content else None

    async def _send(self, http: httpx.AsyncClient, call: Call) -> httpx.Response:
        """One HTTP call, read whole (retried while transient if ``call.retry``); raises on a non-2xx answer."""
        retries = Retries(call.retry, self.retry_for)
        while True:
            try:
                response = await self._send_once(http, call)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):  # dropped, not refused
                if not retries.after_drop():
                    raise
            else:
                if response.is_success:
                    return response
                if not retries.after_answer(response.status_code, response.text,
                                            response.headers.get("Retry-After")):
                    raise error_from(response.status_code, response.text, response.reason_phrase)
            await asyncio.sleep(retries.delay())

    async def _send_once(self, http: httpx.AsyncClient, call: Call) -> httpx.Response:
        data = encode(call.body)
        headers = request_headers(data, call.headers)
        if http is self._external:  # never written into the caller's client
            headers.update(default_headers(self.token))
        return await http.request(call.method, self.url + call.path, params=call.params, content=data,
                                  headers=headers, timeout=call.timeout or self.timeout)

    async def _json(self, method: str, path: str, **call: Any) -> Any:
        """One call by hand (a route the API has no method for): its JSON answer, or the typed error."""
        return await self._run(one_call(Call(method, path, **call)))


@dataclass(eq=False)
class AsyncService(ServiceCalls):
    """A registered model version: online scoring and batch jobs over it (see :class:`modelpool.client.Service`)."""

    client: AsyncClient = field(repr=False)
    name: str
    version: str


@dataclass(eq=False)
class AsyncBatch(BatchCalls):
    """One batch execution: start it, follow it, read its results and artifacts (see :class:`modelpool.client.Batch`)."""

    service: AsyncService
    records: Optional[list] = field(default=None, repr=False)  # may be millions of rows
    parallel_count: int = 10
    execution_id: Optional[str] = None
    last_state: Optional[str] = field(default=None, init=False)  # as on Batch: no request to read it

    def state(self) -> Awaitable[str]:
        """Pending, Running, Complete, Failed or Cancelled (a method here: reading it is a request)."""
        return self._runner._run(self._state())


AsyncClient._service_class = AsyncService
AsyncService._batch_class = AsyncBatch
