"""Python client of a modelpool cluster, in the shape of Machine Learning Server's DeployClient.

A thin layer over the HTTP API (README: "Management API", "Batch scoring"): every method is one
route (``list_models``, ``Batch.results`` and ``Batch.wait`` loop over one), answers are the server's
JSON, and a non-2xx answer becomes a typed :class:`ModelpoolError` carrying the server's
``{"error", "field"}``, so callers can tell "no such model" from "wrong token" without parsing messages.

``with Client(...) as c:`` keeps one :class:`requests.Session` (one keep-alive connection pool)
for every call inside, including those made through :class:`Service` and :class:`Batch`;
outside a ``with`` each method opens and closes its own session (one for all the pages or polls of
a looping method), so nothing stays open behind the caller's back.

    with Client("http://127.0.0.1:8000") as c:
        svc = c.get_service("iris_report", "1")
        batch = svc.batch(frame, parallel_count=4).start()   # a DataFrame, CSV/TSV, columns or rows
        batch.wait(progress=lambda done, total: print(done, total))
        for row in batch.results():                          # RowResult: the outputs as an array
            print(row.index, list(row), row.outputs)
        batch.download(0, destination="reports")

Batch calls carry Machine Learning Server's SDK names and shapes (``list_batch_executions``,
``results()`` answering a :class:`~modelpool.batch_results.BatchResults`, ``execution(index)``
a :class:`~modelpool.batch_results.RowResult`, ``start()``/``cancel()`` the batch); modelpool's
earlier names (``get_batch_executions``, ``download(name=, dest=)``) remain as aliases.

The methods themselves are written once, in :mod:`modelpool.client_api`, for this client and the
asyncio one (:mod:`modelpool.async_client`); this module only carries their calls out with requests.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Optional, Union

import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelpool.batch_results import BatchResponse, BatchResults, RowResult
from modelpool.client_api import BatchCalls, ClientCalls, ServiceCalls, Steps, one_call
from modelpool.client_core import (DEFAULT_URL, FINAL_STATES, RETRY_FOR_S, Call, Callback, ProgressCallback, Retries,
                                   Rows, Sleep, Stepper, default_headers, encode, request_headers, resolve_token,
                                   retry_delay)
from modelpool.errors import BadRequest, Conflict, ModelpoolError, NotFound, Overloaded, Unauthorized, error_from, is_transient

__all__ = ["DEFAULT_URL", "FINAL_STATES", "BadRequest", "Batch", "BatchResponse", "BatchResults", "Client", "Conflict",
           "ModelpoolError", "NotFound", "Overloaded", "ProgressCallback", "RowResult", "Rows", "Service", "Unauthorized",
           "error_for", "error_from", "is_transient", "resolve_token", "retry_delay"]  # one import for sync callers


def error_for(response: requests.Response) -> ModelpoolError:
    """The typed error of a failed :mod:`requests` answer."""
    return error_from(response.status_code, response.text, response.reason)


def connection_dropped(exc: requests.ConnectionError) -> bool:
    """A connection that was made and then lost (the replica behind it died): worth a retry.

    A refused connection is not: nothing listens there (a wrong URL, a stopped cluster), and a CLI
    command should say so at once rather than after a minute of retries.
    """
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the connect failure
    return not isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


class _ClosingAdapter(HTTPAdapter):
    """An adapter whose ``close()`` closes its idle keep-alive connections.

    With urllib3 2.x, ``PoolManager.clear()`` (what ``Session.close()`` calls) only forgets its
    connection pools, so their sockets stay open until garbage collection; a client promising
    "closed on exit" has to close the pools itself.
    """

    def close(self) -> None:
        managers = [self.poolmanager, *self.proxy_manager.values()]
        pools = [manager.pools.get(key) for manager in managers for key in manager.pools.keys()]
        super().close()
        for pool in pools:
            if pool is not None:
                pool.close()


class Client(ClientCalls[requests.Session]):
    """The management, pool, inference and batch API of one cluster."""

    _network_errors = (requests.RequestException,)

    def __init__(self, url: str = DEFAULT_URL, token: Optional[str] = None, timeout: float = 60.0,
                 session: Optional[requests.Session] = None, verify: Union[bool, str] = True,
                 retry_for: float = RETRY_FOR_S) -> None:
        """``verify``: for https URLs, True (system CAs), a CA bundle path (a cluster's own CA), or False.

        ``retry_for``: seconds a call that is safe to repeat (scoring, reads, scale, pools, a register
        carrying its Idempotency-Key) keeps retrying when the ingress answers for a missing or restarting
        management replica, the connection drops, or a model's full queue answers 429 with ``Retry-After``
        (waited out as asked, plus up to half again at random); 0 turns retries off.
        """
        super().__init__(url, token, timeout, session, retry_for)
        self.verify = verify

    # -------------------------------------------------------------- sessions
    def __enter__(self) -> "Client":
        self._enter_block(self._new_session)
        return self

    def __exit__(self, *_: Any) -> None:
        if self._leave_block():
            self.close()

    def close(self) -> None:
        """Close the session of the ``with`` block (its pooled connections go with it)."""
        session = self._release()
        if session is not None:
            session.close()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        for prefix in ("http://", "https://"):
            session.mount(prefix, _ClosingAdapter())
        session.headers.update(default_headers(self.token))
        # The environment (proxies, REQUESTS_CA_BUNDLE, NO_PROXY) is read once here, for the cluster's URL:
        # requests re-reads it on every call otherwise, ~0.4 ms of a quick call. TLS is settled here too.
        settled = session.merge_environment_settings(self.url, {}, None, self.verify, None)
        session.proxies, session.verify = settled["proxies"], settled["verify"]
        session.trust_env = False
        return session

    @contextmanager
    def _session(self) -> Iterator[requests.Session]:
        """The ``with`` block's session (or the caller's); otherwise a fresh one closed after the method."""
        reused = self._reused
        if reused is not None:
            yield reused
            return
        session = self._new_session()
        try:
            yield session
        finally:
            session.close()

    # -------------------------------------------------------------- carrying steps out
    def _run(self, steps: Steps) -> Any:
        """Run a method's steps; every call of one method rides one session (opened at its first call)."""
        stepper = Stepper(steps)
        with ExitStack() as opened:
            session: Optional[requests.Session] = None
            step = stepper.next()
            while not stepper.done:
                reply, error = None, None
                try:
                    if isinstance(step, Call):
                        session = session or opened.enter_context(self._session())
                        reply = self._answer(session, step)
                    elif isinstance(step, Sleep):
                        time.sleep(step.seconds)
                    elif isinstance(step, Callback):
                        step.function(*step.args)
                except Exception as exc:  # handed to the method, which may expect it (ping)
                    error = exc
                step = stepper.next(reply, error)
        return stepper.value

    def _answer(self, session: requests.Session, call: Call) -> Any:
        response = self._send(session, call)
        if call.raw:
            return response.content
        return response.json() if response.content else None

    def _send(self, session: requests.Session, call: Call) -> requests.Response:
        """One HTTP call (retried while transient if ``call.retry``); raises the typed error of a non-2xx answer."""
        retries = Retries(call.retry, self.retry_for)
        while True:
            try:
                response = self._send_once(session, call)
            except requests.ConnectionError as exc:
                if not (connection_dropped(exc) and retries.after_drop()):
                    raise
            else:
                if 200 <= response.status_code < 300:
                    return response
                if not retries.after_answer(response.status_code, response.text, response.headers.get("Retry-After")):
                    raise error_for(response)
            time.sleep(retries.delay())

    def _send_once(self, session: requests.Session, call: Call) -> requests.Response:
        data = encode(call.body)
        headers = default_headers(self.token) if session is self._external else {}  # never set on the caller's
        headers.update(request_headers(data, call.headers))
        response = session.request(call.method, self.url + call.path, params=call.params, data=data,
                                   headers=headers, timeout=call.timeout or self.timeout)
        response.content  # read it whole, so the connection goes back to the pool
        return response

    def _json(self, method: str, path: str, **call: Any) -> Any:
        """One call by hand (a route the API has no method for): its JSON answer, or the typed error."""
        return self._run(one_call(Call(method, path, **call)))


class Service(ServiceCalls):
    """A registered model version: online scoring and batch jobs over it."""

    def __init__(self, client: Client, name: str, version: str) -> None:
        self.client = client
        self.name = name
        self.version = version

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.version!r})"


class Batch(BatchCalls):
    """One batch execution: start it, follow it, read its results and artifacts, cancel it."""

    def __init__(self, service: Service, records: Optional[list] = None, parallel_count: int = 10,
                 execution_id: Optional[str] = None) -> None:
        self.service = service
        self.records = records
        self.parallel_count = parallel_count
        self.execution_id = execution_id
        self.last_state: Optional[str] = None  # the state the server last answered start/status/cancel with

    def __repr__(self) -> str:
        return f"Batch({self.service!r}, execution_id={self.execution_id!r})"

    @property
    def state(self) -> str:
        """Pending, Running, Complete, Failed or Cancelled (one request per read)."""
        return self._runner._run(self._state())


Client._service_class = Service
Service._batch_class = Batch
