"""The client's API, written once for the sync and the asyncio client.

Every method is a generator of steps (:mod:`modelpool.client_core`: :class:`Call`, :class:`Sleep`,
:class:`Callback`) that receives each call's answer and returns the method's answer. The client
that owns it runs the steps (:meth:`_run`): :class:`modelpool.client.Client` with requests, returning
the answer; :class:`modelpool.async_client.AsyncClient` with httpx, returning an awaitable. So a
method's paths, parameters, bodies, loops and answers exist once, and the two clients differ only
by their I/O (and by ``await``).

A run rides one session for all its calls: a looping helper (``list_models``' pages, ``results``'
pages, ``wait``'s polls) holds one connection for its whole loop even outside ``with``.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Generator, Generic, Optional, TypeVar, Union

from modelpool.batch_results import BatchResults, RowResult
from modelpool.client_core import (FINAL_STATES, GRAPH_START_WAIT_S, IDEMPOTENCY_HEADER, RESULTS_PAGE, RETRY_FOR_S,
                                   Call, Callback, ProgressCallback, Rows, Sleep, Step, alias, artifact_path,
                                   artifact_targets, batch_arguments, batch_path, done_and_total, graph_body,
                                   graph_path, in_index_order, infer_outputs, infer_request, model_path,
                                   new_idempotency_key, params, poll_delay, pool_path, predict_rows, predictions,
                                   resolve_token, server_wait, service_path, start_request)
from modelpool.errors import ModelpoolError
from modelpool.records import Records

Steps = Generator[Step, Any, Any]
Pool = TypeVar("Pool")  # what carries the calls: a requests.Session, an httpx.AsyncClient


def runs(steps: Callable[..., Steps]) -> Callable[..., Any]:
    """A method written as steps, run by its client: the answer (sync) or an awaitable of it (asyncio)."""
    @functools.wraps(steps)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._runner._run(steps(self, *args, **kwargs))
    return run


def one_call(call: Call) -> Steps:
    """The steps of a method that is a single call answered as the server answered it."""
    return (yield call)


# ------------------------------------------------------------------------------------------ client
class Endpoint(Generic[Pool]):
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
        """The pool a call rides on: the block's or the caller's; None means open one for the run."""
        return self._shared or self._external


class ClientCalls(Endpoint[Pool]):
    """The management, pool, inference and batch API of one cluster (the I/O is the subclass's)."""

    _service_class: type  # Service or AsyncService
    _network_errors: tuple[type[BaseException], ...] = ()  # what ping() reads as "nothing answers"

    @property
    def _runner(self) -> "ClientCalls":
        return self

    def _run(self, steps: Steps) -> Any:  # pragma: no cover - each client carries the steps out
        raise NotImplementedError

    # -------------------------------------------------------------- models (MMS / TorchServe API)
    @runs
    def register_model(self, url: str, model_name: Optional[str] = None, initial_workers: int = 0,
                       batch_size: Optional[int] = None, max_batch_delay: Optional[float] = None,
                       synchronous: bool = False, response_timeout: Optional[float] = None,
                       handler: Optional[str] = None, idempotency_key: Optional[str] = None,
                       startup_timeout: Optional[float] = None, max_queued_requests: Optional[int] = None) -> Steps:
        """Register an archive of the model store (or an allowed URL); ``max_batch_delay`` in ms.

        ``response_timeout`` (s) bounds each inference call; ``startup_timeout`` (s) bounds how long a
        ``synchronous`` registration waits for the workers to start (the HTTP call waits as long as
        the server may). ``max_queued_requests``: calls that may wait at a replica beyond those it runs, past
        which a call gets 429 at once (-1: no limit, 0: none wait; None: the server's --max-queued-requests).

        The call carries an Idempotency-Key (a new one unless given), so it is retried safely when
        its answer is lost: the server answers a repeat as it answered the first.
        """
        query = params(url=url, model_name=model_name, initial_workers=initial_workers, batch_size=batch_size,
                       max_batch_delay=max_batch_delay, synchronous=synchronous,
                       response_timeout=response_timeout, startup_timeout=startup_timeout, handler=handler,
                       max_queued_requests=max_queued_requests)
        return (yield Call("POST", "/models", params=query, retry=True,
                           headers={IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()},
                           timeout=server_wait(synchronous, startup_timeout, self.timeout)))

    @runs
    def scale_model(self, name: str, version: Optional[str] = None, min_worker: Optional[int] = None,
                    max_worker: Optional[int] = None, number_gpu: Optional[int] = None, synchronous: bool = False,
                    timeout: Optional[float] = None, batch_size: Optional[int] = None,
                    max_batch_delay: Optional[float] = None, max_queued_requests: Optional[int] = None) -> Steps:
        """Change workers, batching or the queue limit of a version (the default version when ``version`` is None);
        batching and ``max_queued_requests`` reach the running replicas without a restart."""
        query = params(min_worker=min_worker, max_worker=max_worker, number_gpu=number_gpu,
                       synchronous=synchronous, timeout=timeout, batch_size=batch_size,
                       max_batch_delay=max_batch_delay, max_queued_requests=max_queued_requests)
        return (yield Call("PUT", model_path(name, version), params=query, retry=True,
                           timeout=server_wait(synchronous, timeout, self.timeout)))

    @runs
    def describe_model(self, name: str, version: Optional[str] = None) -> Steps:
        """One version's description (the default's when None; ``"all"`` for every version)."""
        return (yield Call("GET", model_path(name, version), retry=True))

    @runs
    def unregister_model(self, name: str, version: Optional[str] = None) -> Steps:
        return (yield Call("DELETE", model_path(name, version)))

    @runs
    def list_models(self, limit: int = 100) -> Steps:
        """Every model, fetched ``limit`` per page; the pages are followed here (on one connection)."""
        models: list[dict] = []
        token: Optional[str] = None
        while True:
            page = yield Call("GET", "/models", params=params(limit=limit, next_page_token=token), retry=True)
            models.extend(page.get("models", []))
            token = page.get("nextPageToken")
            if not token:
                return models

    @runs
    def set_default(self, name: str, version: str) -> Steps:
        return (yield Call("PUT", f"{model_path(name, version)}/set-default"))

    # -------------------------------------------------------------- inference graphs (Seldon Core's graph shape)
    @runs
    def put_graph(self, name: str, graph: dict[str, Any]) -> Steps:
        """Create or replace graph ``name``, served as a model is at ``/v2/models/{name}/infer``.

        ``graph``: the root node (Seldon Core's nested shape: ``name``, ``type``, ``model``/``version`` or
        ``graph`` or a built-in ``implementation``, ``children``, ...), or ``{"graph": root}``. The server checks
        the whole tree before writing anything (a BadRequest names the node: ``field`` is ``node:<name>``) and
        answers once the graph serves, so the call may take as long as a new graph's replicas take to start;
        a name a model holds is a Conflict. Replacing a graph with the same tree is harmless, so a lost answer
        is retried (the repeat answers "updated").
        """
        return (yield Call("PUT", graph_path(name), body=graph_body(graph), retry=True,
                           timeout=server_wait(True, GRAPH_START_WAIT_S, self.timeout)))

    @runs
    def get_graph(self, name: str) -> Steps:
        """One graph as stored, with its ``endpoint`` and its application's ``status``; NotFound when absent."""
        return (yield Call("GET", graph_path(name), retry=True))

    @runs
    def list_graphs(self) -> Steps:
        """Every graph (as :meth:`get_graph` answers each), in name order."""
        return (yield Call("GET", "/graphs", retry=True)).get("graphs", [])

    @runs
    def delete_graph(self, name: str) -> Steps:
        """Stop serving graph ``name``; a Conflict while another graph calls it. Not retried: a repeat is NotFound."""
        return (yield Call("DELETE", graph_path(name)))

    # -------------------------------------------------------------- services and pools (ML Server)
    @runs
    def list_services(self) -> Steps:
        return (yield Call("GET", "/services"))

    @runs
    def get_service(self, name: str, version: Optional[str] = None) -> Steps:
        """A registered version (the default when None), checked now so a typo fails here, not later."""
        described = yield Call("GET", model_path(name, version), retry=True)
        return self._service_class(self, name, str(described[0]["modelVersion"]))

    @runs
    def create_or_update_service_pool(self, name: str, version: str, initial_pool_size: int,
                                      max_pool_size: int) -> Steps:
        body = {"initial_pool_size": initial_pool_size, "max_pool_size": max_pool_size}
        return (yield Call("PUT", pool_path(name, version), body=body))

    @runs
    def get_service_pool_status(self, name: str, version: str) -> Steps:
        return (yield Call("GET", pool_path(name, version)))

    @runs
    def delete_service_pool(self, name: str, version: str) -> Steps:
        return (yield Call("DELETE", pool_path(name, version)))

    @runs
    def ping(self) -> Steps:
        """True when the management application answers healthy; never raises."""
        try:
            return (yield Call("GET", "/ping")).get("status") == "Healthy"
        except (ModelpoolError, ValueError, AttributeError, *self._network_errors):
            return False


# ------------------------------------------------------------------------------------------ service
class ServiceCalls:
    """A registered model version: online scoring and batch jobs over it."""

    client: Any
    name: str
    version: str
    _batch_class: type  # Batch or AsyncBatch

    @property
    def _runner(self) -> ClientCalls:
        return self.client

    @property
    def _path(self) -> str:
        return service_path(self.name, self.version)

    @runs
    def predict(self, data: Rows) -> Steps:
        """Plain-JSON scoring; arrays and DataFrames get an array back, lists get a list."""
        rows = predict_rows(data)
        # scoring changes nothing: safe to send again after a refusal (429 Retry-After) or a dropped connection
        return predictions(rows, (yield Call("POST", f"{self._path}/predict", body={"instances": rows}, retry=True)))

    @runs
    def infer(self, rows: Rows, outputs: Optional[list[str]] = None) -> Steps:
        """V2 inference over rows as one FP64 matrix; ``outputs`` picks outputs and their order."""
        return infer_outputs((yield Call("POST", f"{self._path}/infer", body=infer_request(rows, outputs),
                                         retry=True)))

    def batch(self, records: Records, parallel_count: int = 10, *, parallelCount: Optional[int] = None):  # noqa: N803
        """A batch job over ``records``, not started: call ``.start()`` (``await`` it on the asyncio client).

        ``records``: a pandas DataFrame, a dict of columns, a list of rows, a numpy array, or a CSV/TSV
        file (a path or an open text file; see :mod:`modelpool.records`); column names are kept.
        """
        rows, parallel = batch_arguments(records, parallel_count, parallelCount)
        return self._batch_class(self, records=rows, parallel_count=parallel)

    @runs
    def list_batch_executions(self) -> Steps:
        """Execution ids of this version's batch jobs, oldest first."""
        return (yield Call("GET", "/batches", params=params(service=self.name, version=self.version)))

    get_batch_executions = list_batch_executions  # modelpool's earlier name (and the ML Server how-to's)

    def get_batch(self, execution_id: str):
        """A job started earlier (by anyone), to follow or read; no request until one is made."""
        return self._batch_class(self, execution_id=execution_id)


# ------------------------------------------------------------------------------------------ batch
class BatchCalls:
    """One batch execution: start it, follow it, read its results and artifacts, cancel it."""

    service: ServiceCalls
    records: Optional[list]
    parallel_count: int
    execution_id: Optional[str]
    last_state: Optional[str]  # the state the server last answered start/status/cancel with

    @property
    def _runner(self) -> ClientCalls:
        return self.service.client

    @property
    def _path(self) -> str:
        return batch_path(self.execution_id)

    @runs
    def start(self) -> Steps:
        """Submit the records; the server answers at once (202) and scores on Ray tasks.

        The call carries an Idempotency-Key and is retried while the connection drops or the ingress
        has no management replica: a retry whose first attempt was accepted gets that same job back.
        """
        body = start_request(self.service.name, self.service.version, self.records, self.parallel_count,
                             self.execution_id)
        answer = yield Call("POST", "/batches", body=body, retry=True,
                            headers={IDEMPOTENCY_HEADER: new_idempotency_key()})
        self.execution_id, self.last_state = answer["executionId"], answer.get("state")
        return self

    def _status(self) -> Steps:
        status = yield Call("GET", self._path, params=params(show_partial_results=False))
        self.last_state = status.get("state")
        return status

    def _state(self) -> Steps:
        return (yield from self._status())["state"]

    status = runs(_status)
    status.__doc__ = "The job's state and counts, without rows (cheap enough to poll)."

    @runs
    def results(self, show_partial_results: bool = True, page_size: int = RESULTS_PAGE) -> Steps:
        """The state and the rows scored so far, in index order: ``.state``, the counts, ``.results``.

        The server sends rows a page at a time (a job may hold millions); the pages are followed
        here, on one connection. With ``show_partial_results=False`` rows come only once the job is
        Complete, as in ML Server (before that ``.results`` is empty).
        """
        if not show_partial_results:
            status = yield from self._status()
            if status["state"] != "Complete":
                return BatchResults(status)
        rows: dict[int, dict] = {}
        offset: Optional[int] = 0
        while offset is not None:
            page = yield Call("GET", self._path, params=params(show_partial_results=True, offset=offset,
                                                                limit=page_size))
            rows.update((row["index"], row) for row in page.get("results", []))
            offset = page.get("nextOffset")
        return in_index_order(page, rows)

    @runs
    def execution(self, index: int) -> Steps:
        """Row ``index``'s outputs as an array (a RowResult: also ``.outputs``, ``.status``, ``.error``).

        NotFound while the row is not scored yet, or when the job has no such row.
        """
        return RowResult((yield Call("GET", f"{self._path}/results/{int(index)}")))

    def _list_artifacts(self, index: int) -> Steps:
        return (yield Call("GET", f"{self._path}/results/{int(index)}/artifacts"))

    list_artifacts = runs(_list_artifacts)

    def _artifact(self, index: int, file_name: Optional[str] = None, *, name: Optional[str] = None) -> Steps:
        """One artifact's bytes (``name``: the earlier name of ``file_name``)."""
        return (yield Call("GET", artifact_path(self._path, index, alias(file_name, name, "file_name", "name")),
                           raw=True))

    artifact = runs(_artifact)

    @runs
    def download(self, index: int, file_name: Optional[str] = None, destination: Union[str, Path, None] = None, *,
                 name: Optional[str] = None, dest: Union[str, Path, None] = None) -> Steps:
        """Write one artifact (every artifact of the row when ``file_name`` is None) into ``destination``.

        ``destination`` defaults to the working directory and is created when missing; ``name`` and
        ``dest`` are the earlier names of ``file_name`` and ``destination``. Names come from the
        server; each is checked before anything is written, so a hostile or broken server cannot
        make the client write outside the destination (``../x``, absolute paths, or a symlink
        already there that points elsewhere).
        """
        file_name = alias(file_name, name, "file_name", "name")
        destination = alias(destination, dest, "destination", "dest")
        names = [file_name] if file_name is not None else (yield from self._list_artifacts(index))
        written = []
        for artifact_name, target in artifact_targets(destination or ".", names):
            target.write_bytes((yield from self._artifact(index, artifact_name)))  # reports are small
            written.append(target)
        return written

    @runs
    def cancel(self) -> Steps:
        """Stop scheduling rows and return this batch; rows already scored stay readable.

        ``last_state`` is then the state the cancel left: Cancelled, or the final state the job had already reached.
        """
        self.last_state = (yield Call("DELETE", self._path)).get("state")
        return self

    @runs
    def wait(self, timeout: float = 600, poll: float = 0.5, progress: Optional[ProgressCallback] = None) -> Steps:
        """Poll until Complete, Failed or Cancelled and return that state (TimeoutError after ``timeout`` s).

        The state carries counts, not rows (polling must stay cheap): read rows with ``results()``.
        Every poll rides one connection, even outside ``with``.

        ``progress(done, total)`` is called after every poll (the asyncio client awaits it when it is a
        coroutine function); ``done`` counts failed rows too, so it reaches ``total`` (None until an
        ``input_uri`` job has read its input).
        """
        deadline = time.monotonic() + timeout
        while True:
            status = yield from self._status()
            if progress is not None:
                yield Callback(progress, done_and_total(status))
            if status["state"] in FINAL_STATES:
                return status
            yield Sleep(poll_delay(self.execution_id, status, deadline, timeout, poll))
