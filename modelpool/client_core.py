"""What the sync and the asyncio client share, written once: no I/O here.

The cluster's token, the HTTP paths, query parameters and bodies of each call, the retry policy,
the V2 datatypes (modelpool.deployments.datatypes' one table), the shaping of answers, and the steps a call is made of (:class:`Call`,
:class:`Sleep`, :class:`Callback`). :mod:`modelpool.client_api` writes every method as a sequence
of these steps; :mod:`modelpool.client` (requests) and :mod:`modelpool.async_client` (httpx) only
carry them out, so the two clients cannot drift apart.
"""
from __future__ import annotations

import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Optional, Union
from urllib.parse import quote

import numpy as np

from modelpool.cluster.defaults import DEFAULT_HTTP_URL, DEFAULT_STARTUP_TIMEOUT_S, MANAGEMENT_TOKEN_ENV
from modelpool.cluster.paths import token_path
from modelpool.cluster.version import __version__
from modelpool.deployments.datatypes import V2_DATATYPES
from modelpool.batch_results import BatchResults
from modelpool.errors import is_transient, retry_after
from modelpool.records import Records, batch_records, is_frame

DEFAULT_URL = DEFAULT_HTTP_URL
TOKEN_ENV = MANAGEMENT_TOKEN_ENV
FINAL_STATES = ("Complete", "Failed", "Cancelled")
RESULTS_PAGE = 1000  # batch result rows per request (the server's default page)
INPUT_NAME = "input-0"  # the input every modelpool handler receives rows under (see /predict)
SERVER_WAIT_DEFAULT_S = DEFAULT_STARTUP_TIMEOUT_S  # the server's default startup_timeout / scale timeout
SERVER_WAIT_MARGIN_S = 10.0
RETRY_FOR_S = 60.0  # how long a retryable call keeps trying while the management replica restarts (~5-20 s)
IDEMPOTENCY_HEADER = "Idempotency-Key"
GRAPH_START_WAIT_S = 120.0  # how long the server's PUT /graphs/{name} waits for a new graph (GRAPH_START_TIMEOUT_S)

ProgressCallback = Callable[[int, Optional[int]], Any]
Rows = Union[list, np.ndarray, Any]  # a list of rows, an array, or a pandas DataFrame


# ------------------------------------------------------------------------------------------ steps
@dataclass(frozen=True)
class Call:
    """One HTTP call: the client answers it with the JSON body (``raw``: the bytes), or raises the typed error."""

    method: str
    path: str
    params: Optional[dict] = None
    body: Any = None
    timeout: Optional[float] = None
    retry: bool = False
    headers: Optional[dict] = None
    raw: bool = False


@dataclass(frozen=True)
class Sleep:
    """Wait between polls (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


@dataclass(frozen=True)
class Callback:
    """Call the caller's function; the asyncio client awaits what it returns when that is awaitable."""

    function: Callable[..., Any]
    args: tuple


Step = Union[Call, Sleep, Callback]


class Stepper:
    """Feeds a method's steps their answers (or the error a step raised) until the method returns."""

    def __init__(self, steps: Generator[Step, Any, Any]) -> None:
        self._steps = steps
        self.done = False
        self.value: Any = None

    def next(self, reply: Any = None, error: Optional[BaseException] = None) -> Optional[Step]:
        """The next step, given the answer to the last one; None once the method returned (``value``)."""
        try:
            return self._steps.throw(error) if error is not None else self._steps.send(reply)
        except StopIteration as returned:
            self.done, self.value = True, returned.value
            return None


_JITTER = random.Random()


class Retries:
    """When a failed call is sent again: only a call safe to repeat, and only for ``retry_for`` seconds."""

    def __init__(self, enabled: bool, retry_for: float, jitter: Optional[random.Random] = None) -> None:
        self.enabled = enabled
        self.deadline = time.monotonic() + retry_for
        self.attempt = 0
        self.wanted_wait: Optional[float] = None  # the last answer's Retry-After, in seconds
        self.jitter = jitter or _JITTER

    def after_drop(self) -> bool:
        """Again after a dropped connection (a refused one is the caller's to judge: see each client)."""
        return self.enabled and time.monotonic() < self.deadline

    def after_answer(self, status: int, body: Union[bytes, str], retry_after_header: Optional[str] = None) -> bool:
        """Again after an answer from the ingress that nobody behind it took (never after modelpool's own), or
        after a refusal that says when to come back (429 or 503 with ``Retry-After``: a full queue)."""
        if not self.enabled or time.monotonic() >= self.deadline:
            return False
        self.wanted_wait = retry_after(status, retry_after_header)
        return self.wanted_wait is not None or is_transient(status, body)

    def delay(self) -> float:
        """0.25 s, 0.5 s, 1 s, then 2 s between tries: quick for a blip, gentle on a restarting replica.

        After a ``Retry-After``, at least what it asked, plus up to half again at random: every client refused
        in the same second would otherwise come back in the same second, and be refused together again.
        """
        delay = retry_delay(self.attempt)
        self.attempt += 1
        if self.wanted_wait is not None:
            base = max(self.wanted_wait, delay)
            delay = base + self.jitter.uniform(0, base / 2)
            self.wanted_wait = None
        return min(delay, max(0.0, self.deadline - time.monotonic()))


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
    try:
        return token_path().read_text().strip() or None
    except OSError:
        return None


def default_headers(token: Optional[str]) -> dict[str, str]:
    """Headers of every call: who is asking and, when there is one, the management token."""
    headers = {"User-Agent": f"modelpool-client/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# ------------------------------------------------------------------------------------------ wire
def _jsonable(value: Any) -> Any:
    """numpy values (from DataFrames and arrays) as plain JSON values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(body: Any) -> Optional[str]:
    """A request body as JSON text (None for no body); numpy values become plain JSON."""
    return None if body is None else json.dumps(body, default=_jsonable)


def request_headers(body: Optional[str], extra: Optional[dict]) -> dict[str, str]:
    """A call's own headers: the content type of a JSON body and the call's extras (an Idempotency-Key)."""
    headers = {} if body is None else {"Content-Type": "application/json"}
    headers.update(extra or {})
    return headers


def retry_delay(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: doubling from 0.25 s, at most 2 s."""
    return min(2.0, 0.25 * 2 ** attempt)


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def segment(value: Any) -> str:
    """One URL path segment: a '/' in a name must not reach another route."""
    return quote(str(value), safe="")


def _query_value(value: Any) -> Any:
    """Booleans as the lowercase words the server's validation expects."""
    return ("true" if value else "false") if isinstance(value, bool) else value


def params(**values: Any) -> dict[str, Any]:
    """Query parameters without the ones left unset (the server applies its defaults)."""
    return {k: _query_value(v) for k, v in values.items() if v is not None}


def server_wait(synchronous: bool, server_timeout: Optional[float], client_timeout: float) -> float:
    """HTTP timeout of a call the server may hold open: outlive the server's own wait."""
    if not synchronous:
        return client_timeout
    return max(client_timeout, (server_timeout or SERVER_WAIT_DEFAULT_S) + SERVER_WAIT_MARGIN_S)


def model_path(name: str, version: Optional[str]) -> str:
    path = f"/models/{segment(name)}"
    return path if version is None else f"{path}/{segment(version)}"


def pool_path(name: str, version: str) -> str:
    return f"/pools/{segment(name)}/{segment(version)}"


def graph_path(name: str) -> str:
    return f"/graphs/{segment(name)}"


def graph_body(graph: dict) -> dict:
    """The body of ``PUT /graphs/{name}``: ``{"graph": root}``, given the root node or a body that already wraps it.

    Read as the server reads a body: a dict with a ``name`` is a node (a node's own ``graph`` key names a graph it
    calls), else its ``graph`` is the root. Anything else is wrapped too, for the server to refuse with its
    message and field.
    """
    if isinstance(graph, dict) and "name" not in graph and "graph" in graph:
        return graph
    return {"graph": graph}


def service_path(name: str, version: str) -> str:
    return f"/v2/models/{segment(name)}/versions/{segment(version)}"


def batch_path(execution_id: Optional[str]) -> str:
    if execution_id is None:
        raise RuntimeError("this batch is not started; call start() first")
    return f"/batches/{segment(execution_id)}"


def artifact_path(batch: str, index: int, file_name: Optional[str]) -> str:
    if file_name is None:
        raise TypeError("artifact() needs the artifact's file_name; list_artifacts(index) names them")
    return f"{batch}/results/{int(index)}/artifacts/{segment(file_name)}"


# ------------------------------------------------------------------------------------------ inference
def predict_rows(data: Rows) -> Any:
    """What ``predict`` sends as instances: a DataFrame's values, anything else as given."""
    return data.to_numpy() if is_frame(data) else data


def predictions(rows: Any, answer: dict) -> Union[list, np.ndarray]:
    """Arrays and DataFrames get an array back, lists get a list."""
    return np.asarray(answer["predictions"]) if isinstance(rows, np.ndarray) else answer["predictions"]


def _matrix(rows: Rows) -> np.ndarray:
    """Rows as an FP64 matrix; a single flat row is one row, not a column."""
    array = np.asarray(rows.to_numpy() if is_frame(rows) else rows, dtype=np.float64)
    return array.reshape(1, -1) if array.ndim == 1 else array


def tensor(output: dict) -> np.ndarray:
    """A V2 output tensor as the array it describes (dtype from datatype, shape from shape)."""
    dtype = V2_DATATYPES.get(output.get("datatype"), None)
    return np.asarray(output["data"], dtype=dtype).reshape(output["shape"])


def infer_request(rows: Rows, outputs: Optional[list[str]]) -> dict[str, Any]:
    """A V2 request carrying rows as one FP64 matrix; ``outputs`` picks outputs and their order."""
    matrix = _matrix(rows)
    request: dict[str, Any] = {"inputs": [{"name": INPUT_NAME, "shape": list(matrix.shape), "datatype": "FP64",
                                           "data": matrix.ravel().tolist()}]}
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    return request


def infer_outputs(answer: dict) -> dict[str, np.ndarray]:
    return {output["name"]: tensor(output) for output in answer["outputs"]}


# ------------------------------------------------------------------------------------------ batches
def batch_arguments(records: Records, parallel_count: int,
                    parallelCount: Optional[int]) -> tuple[list, int]:  # noqa: N803
    """(records as JSON, parallel count) of ``Service.batch``; ``parallelCount`` is how ML Server's docs spell it."""
    return batch_records(records), parallel_count if parallelCount is None else parallelCount


def alias(value: Any, alias_value: Any, name: str, alias_name: str) -> Any:
    """An argument passed by its ML Server name or by modelpool's earlier name, not both."""
    if alias_value is None:
        return value
    if value is not None:
        raise TypeError(f"pass {name} or {alias_name} (its earlier name), not both")
    return alias_value


def start_request(service: str, version: str, records: Optional[list], parallel_count: int,
                  execution_id: Optional[str]) -> dict:
    """The body that starts a batch job; refuses a job already started or opened by id."""
    if execution_id is not None:
        raise RuntimeError(f"batch {execution_id} is already started")
    if records is None:
        raise RuntimeError("this batch has no records to start (it was opened by execution id)")
    return {"service": service, "version": version, "records": records, "parallel_count": parallel_count}


def _check_artifact_name(name: str) -> str:
    """A single plain file name, so writing ``dest/name`` cannot land outside ``dest``."""
    if (not isinstance(name, str) or not name or name in (".", "..") or ".." in name or "/" in name
            or "\\" in name or "\x00" in name or name.startswith(".") or Path(name).name != name):
        raise ValueError(f"refusing artifact name {name!r}: not a single plain file name, "
                         "it could be written outside the destination directory")
    return name


def artifact_targets(dest: Union[str, Path], names: list[str]) -> list[tuple[str, Path]]:
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


def in_index_order(last_page: dict, rows: dict[int, dict]) -> BatchResults:
    """The last page's state with every row read, in index order.

    Rows are keyed by index: a row finishing between two pages of a running job is neither lost
    nor doubled.
    """
    return BatchResults({**last_page, "results": [rows[i] for i in sorted(rows)], "nextOffset": None})


def done_and_total(status: dict) -> tuple[int, Optional[int]]:
    """Progress of a job: ``done`` counts failed rows too, so it reaches ``total``."""
    return int(status.get("completedItems") or 0) + int(status.get("failedItems") or 0), status.get("totalItems")


def poll_delay(execution_id: Optional[str], status: dict, deadline: float, timeout: float, poll: float) -> float:
    """Seconds to sleep before polling a running job again; TimeoutError once ``deadline`` passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"batch {execution_id} still {status['state']} after {timeout}s")
    return min(poll, remaining)
