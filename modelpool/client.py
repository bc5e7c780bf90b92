"""Python client of a modelpool cluster, in the shape of Machine Learning Server's DeployClient.

A thin layer over the HTTP API (README: "Management API", "Batch scoring"): every method is one
route (``list_models`` and ``Batch.wait`` loop over one), answers are the server's JSON, and a
non-2xx answer becomes a typed :class:`ModelpoolError` carrying the server's ``{"error", "field"}``,
so callers can tell "no such model" from "wrong token" without parsing messages.

``with Client(...) as c:`` keeps one :class:`requests.Session` (one keep-alive connection pool)
for every call inside, including those made through :class:`Service` and :class:`Batch`;
outside a ``with`` each call opens and closes its own session, so nothing stays open behind the
caller's back.

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

:mod:`modelpool.async_client` is the same API for asyncio; the pure pieces below (error mapping,
paths, request bodies, token) are shared with it so the two clients cannot drift apart.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar, Union
from urllib.parse import quote

import numpy as np
import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelpool import __version__
from modelpool.batch_results import BatchResponse, BatchResults, RowResult  # noqa: F401 (re-exported)
from modelpool.records import Records, batch_records, is_frame

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "MODELPOOL_MANAGEMENT_TOKEN"
HOME_ENV = "MODELPOOL_HOME"
TOKEN_FILE = "management_token"
FINAL_STATES = ("Complete", "Failed", "Cancelled")
RESULTS_PAGE = 1000  # batch result rows per request (the server's default page)
INPUT_NAME = "input-0"  # the input every modelpool handler receives rows under (see /predict)
SERVER_WAIT_DEFAULT_S = 120.0  # the server's default startup_timeout / scale timeout
SERVER_WAIT_MARGIN_S = 10.0
RETRY_FOR_S = 60.0  # how long a retryable call keeps trying while the management replica restarts (~5-20 s)
IDEMPOTENCY_HEADER = "Idempotency-Key"
_INGRESS_STATUSES = (500, 502, 503, 504)

_V2_DTYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}

ProgressCallback = Callable[[int, Optional[int]], None]


# ------------------------------------------------------------------------------------------ errors
class ModelpoolError(Exception):
    """A non-2xx answer: ``status``, the server's ``message`` and the ``field`` it names (or None)."""

    def __init__(self, status: int, message: str, field: Optional[str] = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        where = f", field {field}" if field else ""
        super().__init__(f"{message} (HTTP {status}{where})")


class BadRequest(ModelpoolError):
    """400, 413 or 422: the request itself must change (the field says which part)."""


class Unauthorized(ModelpoolError):
    """401: missing or wrong management token."""


class NotFound(ModelpoolError):
    """404: no such model, version, batch execution or row."""


class Conflict(ModelpoolError):
    """409: the model version is already registered."""


_ERRORS: dict[int, type[ModelpoolError]] = {400: BadRequest, 413: BadRequest, 422: BadRequest,
                                             401: Unauthorized, 404: NotFound, 409: Conflict}


def error_from(status: int, body: Union[bytes, str], reason: Optional[str] = None) -> ModelpoolError:
    """The typed error of a failed answer; bodies that are not the project's JSON keep their text.

    Pure (status, body, reason phrase), so the requests and the httpx client map errors alike.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and ("error" in parsed or "detail" in parsed):
        message, field = str(parsed.get("error") or parsed.get("detail")), parsed.get("field")
    else:
        message, field = text.strip() or reason or "request failed", None
    return _ERRORS.get(status, ModelpoolError)(status, message, field)


def error_for(response: requests.Response) -> ModelpoolError:
    """The typed error of a failed :mod:`requests` answer."""
    return error_from(response.status_code, response.text, response.reason)


# ------------------------------------------------------------------------------------------ token
def resolve_token(token: Optional[str] = None) -> Optional[str]:
    """Explicit token, else $MODELPOOL_MANAGEMENT_TOKEN, else the token file ``modelpool start`` wrote.

    The same order the server uses to pick its token, so a client on the cluster's machine needs no
    configuration. An unreadable or empty file means no token (calls then fail with Unauthorized).
    """
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    home = os.environ.get(HOME_ENV) or os.path.join(os.path.expanduser("~"), ".modelpool")
    try:
        return Path(home, TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ JSON
def _jsonable(value: Any) -> Any:
    """numpy values (from DataFrames and arrays) as plain JSON values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(body: Any) -> Optional[str]:
    """A request body as JSON text (None for no body); numpy values become plain JSON."""
    return None if body is None else json.dumps(body, default=_jsonable)


def _default_headers(token: Optional[str]) -> dict[str, str]:
    """Headers of every call: who is asking and, when there is one, the management token."""
    headers = {"User-Agent": f"modelpool-client/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def is_transient(status: int, body: Union[bytes, str]) -> bool:
    """An answer from the ingress, not from modelpool: nobody took the call (the replica died or restarts).

    modelpool's own errors are JSON with an ``error`` key; HAProxy's are plain text (Serve normalises
    its 502/503/504 to a text 500), so a retry never repeats a call modelpool answered.
    """
    if status not in _INGRESS_STATUSES:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return True
    return not (isinstance(parsed, dict) and ("error" in parsed or "detail" in parsed))


def connection_dropped(exc: requests.ConnectionError) -> bool:
    """A connection that was made and then lost (the replica behind it died): worth a retry.

    A refused connection is not: nothing listens there (a wrong URL, a stopped cluster), and a CLI
    command should say so at once rather than after a minute of retries.
    """
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the connect failure
    return not isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def retry_delay(attempt: int) -> float:
    """0.25 s, 0.5 s, 1 s, then 2 s between tries: quick for a blip, gentle on a restarting replica."""
    return min(2.0, 0.25 * 2 ** attempt)


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _segment(value: Any) -> str:
    """One URL path segment: a '/' in a name must not reach another route."""
    return quote(str(value), safe="")


def _query_value(value: Any) -> Any:
    """Booleans as the lowercase words the server's validation expects."""
    return ("true" if value else "false") if isinstance(value, bool) else value


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters without the ones left unset (the server applies its defaults)."""
    return {k: _query_value(v) for k, v in values.items() if v is not None}


def _server_wait(synchronous: bool, server_timeout: Optional[float], client_timeout: float) -> float:
    """HTTP timeout of a call the server may hold open: outlive the server's own wait."""
    if not synchronous:
        return client_timeout
    return max(client_timeout, (server_timeout or SERVER_WAIT_DEFAULT_S) + SERVER_WAIT_MARGIN_S)


def _model_path(name: str, version: Optional[str]) -> str:
    path = f"/models/{_segment(name)}"
    return path if version is None else f"{path}/{_segment(version)}"


def _pool_path(name: str, version: str) -> str:
    return f"/pools/{_segment(name)}/{_segment(version)}"


def _service_path(name: str, version: str) -> str:
    return f"/v2/models/{_segment(name)}/versions/{_segment(version)}"


def _batch_path(execution_id: Optional[str]) -> str:
    if execution_id is None:
        raise RuntimeError("this batch is not started; call start() first")
    return f"/batches/{_segment(execution_id)}"


# ------------------------------------------------------------------------------------------ client
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


Pool = TypeVar("Pool")  # what carries the calls: a requests.Session, an httpx.AsyncClient


class _Endpoint(Generic[Pool]):
    """What the sync and the asyncio client keep alike: the cluster, its token, and the pool of a block.

    The block's pool (``with`` / ``async with``) serves every call inside it, nested blocks
    included; a caller's own pool serves every call and is never closed here.
    """

    def __init__(self, url: str, token: Optional[str], timeout: float, external: Optional[Pool],
                 retry_for: float = RETRY_FOR_S) -> None:
        self.url = url.rstrip("/")
        self.token = resolve_token(token)
        self.timeout = timeout
        self.retry_for = retry_for
        self._external = external  # the caller's: used for every call, never closed or modified here
        self._shared: Optional[Pool] = None
        self._depth = 0

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}({self.url!r})"

    def _enter_block(self, new_pool: Callable[[], Pool]) -> None:
        if self._shared is None:
            self._shared = self._external or new_pool()
        self._depth += 1

    def _leave_block(self) -> bool:
        """True when the outermost block ends (its pool should close)."""
        self._depth -= 1
        return self._depth <= 0

    def _release(self) -> Optional[Pool]:
        """Forget the block's pool; returns it when it is ours to close (never the caller's)."""
        shared, self._shared, self._depth = self._shared, None, 0
        return shared if shared is not None and shared is not self._external else None

    @property
    def _reused(self) -> Optional[Pool]:
        """The pool a call rides on: the block's or the caller's; None means open one for the call."""
        return self._shared or self._external


class Client(_Endpoint[requests.Session]):
    """The management, pool, inference and batch API of one cluster."""

    def __init__(self, url: str = DEFAULT_URL, token: Optional[str] = None, timeout: float = 60.0,
                 session: Optional[requests.Session] = None, verify: Union[bool, str] = True,
                 retry_for: float = RETRY_FOR_S) -> None:
        """``verify``: for https URLs, True (system CAs), a CA bundle path (a cluster's own CA), or False.

        ``retry_for``: seconds a management call that is safe to repeat (reads, scale, pools, a register
        carrying its Idempotency-Key) keeps retrying when the ingress answers for a missing or restarting
        management replica, or the connection drops; 0 turns retries off.
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
        session.headers.update(self._headers())
        # The environment (proxies, REQUESTS_CA_BUNDLE, NO_PROXY) is read once here, for the cluster's URL:
        # requests re-reads it on every call otherwise, ~0.4 ms of a quick call. TLS is settled here too.
        settled = session.merge_environment_settings(self.url, {}, None, self.verify, None)
        session.proxies, session.verify = settled["proxies"], settled["verify"]
        session.trust_env = False
        return session

    def _headers(self) -> dict[str, str]:
        return _default_headers(self.token)

    @contextmanager
    def _session(self) -> Iterator[requests.Session]:
        """The ``with`` block's session (or the caller's); otherwise a fresh one closed after the call."""
        reused = self._reused
        if reused is not None:
            yield reused
            return
        session = self._new_session()
        try:
            yield session
        finally:
            session.close()

    def _send(self, method: str, path: str, *, params: Optional[dict] = None, body: Any = None,
              timeout: Optional[float] = None, retry: bool = False,
              headers: Optional[dict] = None) -> requests.Response:
        """One HTTP call (retried while transient if ``retry``); raises the typed error of a non-2xx answer."""
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            try:
                response = self._send_once(method, path, params, body, timeout, headers)
            except requests.ConnectionError as exc:
                if not (retry and connection_dropped(exc)) or time.monotonic() >= deadline:
                    raise
            else:
                if 200 <= response.status_code < 300:
                    return response
                if not (retry and is_transient(response.status_code, response.text) and time.monotonic() < deadline):
                    raise error_for(response)
            time.sleep(retry_delay(attempt))
            attempt += 1

    def _send_once(self, method: str, path: str, params: Optional[dict], body: Any, timeout: Optional[float],
                   extra_headers: Optional[dict]) -> requests.Response:
        data = _encode(body)
        with self._session() as session:
            headers = self._headers() if session is self._external else {}
            headers.update(extra_headers or {})
            if data is not None:
                headers["Content-Type"] = "application/json"
            response = session.request(method, self.url + path, params=params, data=data, headers=headers,
                                       timeout=timeout or self.timeout)
            response.content  # read it whole, so the connection goes back to the pool
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    # -------------------------------------------------------------- models (MMS / TorchServe API)
    def register_model(self, url: str, model_name: Optional[str] = None, initial_workers: int = 0,
                       batch_size: Optional[int] = None, max_batch_delay: Optional[float] = None,
                       synchronous: bool = False, response_timeout: Optional[float] = None,
                       handler: Optional[str] = None, idempotency_key: Optional[str] = None,
                       startup_timeout: Optional[float] = None) -> dict:
        """Register an archive of the model store (or an allowed URL); ``max_batch_delay`` in ms.

        ``response_timeout`` (s) bounds each inference call; ``startup_timeout`` (s) bounds how long a
        ``synchronous`` registration waits for the workers to start.

        The call carries an Idempotency-Key (a new one unless given), so it is retried safely when
        its answer is lost: the server answers a repeat as it answered the first.
        """
        params = _params(url=url, model_name=model_name, initial_workers=initial_workers, batch_size=batch_size,
                         max_batch_delay=max_batch_delay, synchronous=synchronous,
                         response_timeout=response_timeout, startup_timeout=startup_timeout, handler=handler)
        return self._json("POST", "/models", params=params, retry=True,
                          headers={IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()},
                          timeout=_server_wait(synchronous, startup_timeout, self.timeout))

    def scale_model(self, name: str, version: Optional[str] = None, min_worker: Optional[int] = None,
                    max_worker: Optional[int] = None, number_gpu: Optional[int] = None, synchronous: bool = False,
                    timeout: Optional[float] = None, batch_size: Optional[int] = None,
                    max_batch_delay: Optional[float] = None) -> dict:
        """Change workers or batching of a version (the default version when ``version`` is None)."""
        params = _params(min_worker=min_worker, max_worker=max_worker, number_gpu=number_gpu,
                         synchronous=synchronous, timeout=timeout, batch_size=batch_size,
                         max_batch_delay=max_batch_delay)
        return self._json("PUT", _model_path(name, version), params=params, retry=True,
                          timeout=_server_wait(synchronous, timeout, self.timeout))

    def describe_model(self, name: str, version: Optional[str] = None) -> list[dict]:
        """One version's description (the default's when None; ``"all"`` for every version)."""
        return self._json("GET", _model_path(name, version), retry=True)

    def unregister_model(self, name: str, version: Optional[str] = None) -> dict:
        return self._json("DELETE", _model_path(name, version))

    def list_models(self, limit: int = 100) -> list[dict]:
        """Every model, fetched ``limit`` per page; the pages are followed here so callers get them all."""
        models: list[dict] = []
        token: Optional[str] = None
        while True:
            page = self._json("GET", "/models", params=_params(limit=limit, next_page_token=token), retry=True)
            models.extend(page.get("models", []))
            token = page.get("nextPageToken")
            if not token:
                return models

    def set_default(self, name: str, version: str) -> dict:
        return self._json("PUT", f"{_model_path(name, version)}/set-default")

    # -------------------------------------------------------------- services and pools (ML Server)
    def list_services(self) -> list[dict]:
        return self._json("GET", "/services")

    def get_service(self, name: str, version: Optional[str] = None) -> "Service":
        """A registered version (the default when None), checked now so a typo fails here, not later."""
        described = self.describe_model(name, version)
        return Service(self, name, str(described[0]["modelVersion"]))

    def create_or_update_service_pool(self, name: str, version: str, initial_pool_size: int,
                                      max_pool_size: int) -> dict:
        return self._json("PUT", _pool_path(name, version),
                          body={"initial_pool_size": initial_pool_size, "max_pool_size": max_pool_size})

    def get_service_pool_status(self, name: str, version: str) -> list[dict]:
        return self._json("GET", _pool_path(name, version))

    def delete_service_pool(self, name: str, version: str) -> dict:
        return self._json("DELETE", _pool_path(name, version))

    def ping(self) -> bool:
        """True when the management application answers healthy; never raises."""
        try:
            return self._json("GET", "/ping").get("status") == "Healthy"
        except (requests.RequestException, ModelpoolError, ValueError, AttributeError):
            return False


# ------------------------------------------------------------------------------------------ service
Rows = Union[list, np.ndarray, Any]  # a list of rows, an array, or a pandas DataFrame
_is_frame = is_frame


def _matrix(rows: Rows) -> np.ndarray:
    """Rows as an FP64 matrix; a single flat row is one row, not a column."""
    array = np.asarray(rows.to_numpy() if _is_frame(rows) else rows, dtype=np.float64)
    return array.reshape(1, -1) if array.ndim == 1 else array


def _tensor(output: dict) -> np.ndarray:
    """A V2 output tensor as the array it describes (dtype from datatype, shape from shape)."""
    dtype = _V2_DTYPES.get(output.get("datatype"), None)
    return np.asarray(output["data"], dtype=dtype).reshape(output["shape"])


def _infer_request(rows: Rows, outputs: Optional[list[str]]) -> dict[str, Any]:
    """A V2 request carrying rows as one FP64 matrix; ``outputs`` picks outputs and their order."""
    matrix = _matrix(rows)
    request: dict[str, Any] = {"inputs": [{"name": INPUT_NAME, "shape": list(matrix.shape), "datatype": "FP64",
                                           "data": matrix.ravel().tolist()}]}
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    return request


def _infer_outputs(answer: dict) -> dict[str, np.ndarray]:
    return {output["name"]: _tensor(output) for output in answer["outputs"]}


def _batch_arguments(records: Records, parallel_count: int,
                     parallelCount: Optional[int]) -> tuple[list, int]:  # noqa: N803
    """(records as JSON, parallel count) of ``Service.batch``; ``parallelCount`` is how ML Server's docs spell it."""
    return batch_records(records), parallel_count if parallelCount is None else parallelCount


def _alias(value: Any, alias_value: Any, name: str, alias: str) -> Any:
    """An argument passed by its ML Server name or by modelpool's earlier name, not both."""
    if alias_value is None:
        return value
    if value is not None:
        raise TypeError(f"pass {name} or {alias} (its earlier name), not both")
    return alias_value


class Service:
    """A registered model version: online scoring and batch jobs over it."""

    def __init__(self, client: Client, name: str, version: str) -> None:
        self.client = client
        self.name = name
        self.version = version

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.version!r})"

    @property
    def _path(self) -> str:
        return _service_path(self.name, self.version)

    def predict(self, data: Rows) -> Union[list, np.ndarray]:
        """Plain-JSON scoring; arrays and DataFrames get an array back, lists get a list."""
        rows = data.to_numpy() if _is_frame(data) else data
        predictions = self.client._json("POST", f"{self._path}/predict", body={"instances": rows})["predictions"]
        return np.asarray(predictions) if isinstance(rows, np.ndarray) else predictions

    def infer(self, rows: Rows, outputs: Optional[list[str]] = None) -> dict[str, np.ndarray]:
        """V2 inference over rows as one FP64 matrix; ``outputs`` picks outputs and their order."""
        return _infer_outputs(self.client._json("POST", f"{self._path}/infer", body=_infer_request(rows, outputs)))

    def batch(self, records: Records, parallel_count: int = 10, *,
              parallelCount: Optional[int] = None) -> "Batch":  # noqa: N803
        """A batch job over ``records`` (not started: call ``.start()``).

        ``records``: a pandas DataFrame, a dict of columns, a list of rows, a numpy array, or a CSV/TSV
        file (a path or an open text file; see :mod:`modelpool.records`); column names are kept.
        """
        rows, parallel = _batch_arguments(records, parallel_count, parallelCount)
        return Batch(self, records=rows, parallel_count=parallel)

    def list_batch_executions(self) -> list[str]:
        """Execution ids of this version's batch jobs, oldest first."""
        return self.client._json("GET", "/batches", params=_params(service=self.name, version=self.version))

    get_batch_executions = list_batch_executions  # modelpool's earlier name (and the ML Server how-to's)

    def get_batch(self, execution_id: str) -> "Batch":
        """A job started earlier (by anyone), to follow or read."""
        return Batch(self, execution_id=execution_id)


# ------------------------------------------------------------------------------------------ batch
def _check_artifact_name(name: str) -> str:
    """A single plain file name, so writing ``dest/name`` cannot land outside ``dest``."""
    if (not isinstance(name, str) or not name or name in (".", "..") or ".." in name or "/" in name
            or "\\" in name or "\x00" in name or name.startswith(".") or Path(name).name != name):
        raise ValueError(f"refusing artifact name {name!r}: not a single plain file name, "
                         "it could be written outside the destination directory")
    return name


def _artifact_targets(dest: Union[str, Path], names: list[str]) -> list[tuple[str, Path]]:
    """Where each artifact goes, every name checked before anything is written; creates ``dest``.

    A name must be a plain file name and its target must resolve inside ``dest``, so neither
    ``../x`` nor a symlink already in ``dest`` that points elsewhere can move the write.
    """
    directory = Path(dest)
    targets = []
    for name in names:
        target = directory / _check_artifact_name(name)
        if target.resolve().parent != directory.resolve():
            raise ValueError(f"refusing artifact {name!r}: {target} resolves outside {directory}")
        targets.append((name, target))
    if targets:
        directory.mkdir(parents=True, exist_ok=True)
    return targets


def _start_request(service: str, version: str, records: Optional[list], parallel_count: int,
                   execution_id: Optional[str]) -> dict:
    """The body that starts a batch job; refuses a job already started or opened by id."""
    if execution_id is not None:
        raise RuntimeError(f"batch {execution_id} is already started")
    if records is None:
        raise RuntimeError("this batch has no records to start (it was opened by execution id)")
    return {"service": service, "version": version, "records": records, "parallel_count": parallel_count}


def _artifact_path(batch_path: str, index: int, file_name: Optional[str]) -> str:
    if file_name is None:
        raise TypeError("artifact() needs the artifact's file_name; list_artifacts(index) names them")
    return f"{batch_path}/results/{int(index)}/artifacts/{_segment(file_name)}"


def _in_index_order(last_page: dict, rows: dict[int, dict]) -> BatchResults:
    """The last page's state with every row read, in index order.

    Rows are keyed by index: a row finishing between two pages of a running job is neither lost
    nor doubled.
    """
    return BatchResults({**last_page, "results": [rows[i] for i in sorted(rows)], "nextOffset": None})


def _done_and_total(status: dict) -> tuple[int, Optional[int]]:
    """Progress of a job: ``done`` counts failed rows too, so it reaches ``total``."""
    return int(status.get("completedItems") or 0) + int(status.get("failedItems") or 0), status.get("totalItems")


def _poll_delay(execution_id: Optional[str], status: dict, deadline: float, timeout: float, poll: float) -> float:
    """Seconds to sleep before polling a running job again; TimeoutError once ``deadline`` passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"batch {execution_id} still {status['state']} after {timeout}s")
    return min(poll, remaining)


class Batch:
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
    def _client(self) -> Client:
        return self.service.client

    @property
    def _path(self) -> str:
        return _batch_path(self.execution_id)

    def start(self) -> "Batch":
        """Submit the records; the server answers at once (202) and scores on Ray tasks.

        The call carries an Idempotency-Key and is retried while the connection drops or the ingress
        has no management replica: a retry whose first attempt was accepted gets that same job back.
        """
        body = _start_request(self.service.name, self.service.version, self.records, self.parallel_count,
                              self.execution_id)
        answer = self._client._json("POST", "/batches", body=body, retry=True,
                                    headers={IDEMPOTENCY_HEADER: new_idempotency_key()})
        self.execution_id, self.last_state = answer["executionId"], answer.get("state")
        return self

    @property
    def state(self) -> str:
        """Pending, Running, Complete, Failed or Cancelled (one request per read)."""
        return self.status()["state"]

    def status(self) -> dict:
        """The job's state and counts, without rows (cheap enough to poll)."""
        status = self._client._json("GET", self._path, params=_params(show_partial_results=False))
        self.last_state = status.get("state")
        return status

    def results(self, show_partial_results: bool = True, page_size: int = RESULTS_PAGE) -> BatchResults:
        """The state and the rows scored so far, in index order: ``.state``, the counts, ``.results``.

        The server sends rows a page at a time (a job may hold millions); the pages are followed
        here. With ``show_partial_results=False`` rows come only once the job is Complete, as in
        ML Server (before that ``.results`` is empty).
        """
        if not show_partial_results:
            status = self.status()
            if status["state"] != "Complete":
                return BatchResults(status)
        rows: dict[int, dict] = {}
        offset: Optional[int] = 0
        while offset is not None:
            page = self._client._json("GET", self._path, params=_params(
                show_partial_results=True, offset=offset, limit=page_size))
            rows.update((row["index"], row) for row in page.get("results", []))
            offset = page.get("nextOffset")
        return _in_index_order(page, rows)

    def execution(self, index: int) -> RowResult:
        """Row ``index``'s outputs as an array (a RowResult: also ``.outputs``, ``.status``, ``.error``).

        NotFound while the row is not scored yet, or when the job has no such row.
        """
        return RowResult(self._client._json("GET", f"{self._path}/results/{int(index)}"))

    def list_artifacts(self, index: int) -> list[str]:
        return self._client._json("GET", f"{self._path}/results/{int(index)}/artifacts")

    def artifact(self, index: int, file_name: Optional[str] = None, *, name: Optional[str] = None) -> bytes:
        """One artifact's bytes (``name``: the earlier name of ``file_name``)."""
        path = _artifact_path(self._path, index, _alias(file_name, name, "file_name", "name"))
        return self._client._send("GET", path).content

    def download(self, index: int, file_name: Optional[str] = None, destination: Union[str, Path, None] = None, *,
                 name: Optional[str] = None, dest: Union[str, Path, None] = None) -> list[Path]:
        """Write one artifact (every artifact of the row when ``file_name`` is None) into ``destination``.

        ``destination`` defaults to the working directory and is created when missing; ``name`` and
        ``dest`` are the earlier names of ``file_name`` and ``destination``. Names come from the
        server; each is checked before anything is written, so a hostile or broken server cannot
        make the client write outside the destination (``../x``, absolute paths, or a symlink
        already there that points elsewhere).
        """
        file_name = _alias(file_name, name, "file_name", "name")
        destination = _alias(destination, dest, "destination", "dest")
        names = [file_name] if file_name is not None else self.list_artifacts(index)
        written = []
        for artifact_name, target in _artifact_targets(destination or ".", names):
            target.write_bytes(self.artifact(index, artifact_name))
            written.append(target)
        return written

    def cancel(self) -> "Batch":
        """Stop scheduling rows and return this batch; rows already scored stay readable.

        ``last_state`` is then the state the cancel left: Cancelled, or the final state the job had already reached.
        """
        self.last_state = self._client._json("DELETE", self._path).get("state")
        return self

    def wait(self, timeout: float = 600, poll: float = 0.5, progress: Optional[ProgressCallback] = None) -> dict:
        """Poll until Complete, Failed or Cancelled and return that state (TimeoutError after ``timeout`` s).

        The state carries counts, not rows (polling must stay cheap): read rows with ``results()``.

        ``progress(done, total)`` is called after every poll; ``done`` counts failed rows too, so
        it reaches ``total`` (None until an ``input_uri`` job has read its input).
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if progress is not None:
                progress(*_done_and_total(status))
            if status["state"] in FINAL_STATES:
                return status
            time.sleep(_poll_delay(self.execution_id, status, deadline, timeout, poll))
