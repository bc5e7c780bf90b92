"""Reading what the status page shows: the registry, Serve, Ray's nodes, the status board, the batch jobs.

The page polls ``GET /ui/state`` every 1-2 s, perhaps from several tabs while a benchmark runs, so the whole
state is built at most once per :data:`STATE_TTL_S` and shared (``TtlCache``); Serve's details come from the
model manager's own one-second cache. A source that fails is shown empty and named in ``unavailable``: the
page keeps showing the rest. What the page makes of the inputs is ``status_page``'s (pure).
"""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import pyarrow.fs as pafs

from modelpool.cluster.object_store import ObjectNotFound, ObjectStore
from modelpool.deployments import status_board
from modelpool.management import status_page
from modelpool.management.batch import jobs as batch_jobs
from modelpool.management.batch.jobs import FINAL_STATES, JobRecord
from modelpool.management.batch.layout import BATCHES_PREFIX
from modelpool.management.ttl_cache import TtlCache

logger = logging.getLogger(__name__)

STATE_TTL_S = 1.0
BOARD_TIMEOUT_S = 2.0
#: How often a missing board is looked up (and created) again.
BOARD_RETRY_S = 10.0
_EXECUTION_ID = re.compile(r"[0-9a-f]{32}")


def _ray_nodes() -> list[dict]:
    import ray

    return ray.nodes() if ray.is_initialized() else []


class BoardReader:
    """The status board's snapshot, or None; the board is created when missing (at most every BOARD_RETRY_S)."""

    def __init__(self, create: Callable[[], Any] = status_board.create_board,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._create, self._clock = create, clock
        self._board: Any = None
        self._tried_at: Optional[float] = None

    def start(self) -> None:
        """Create the board now (the management replica calls this at start)."""
        self._handle()

    def snapshot(self) -> Optional[dict]:
        import ray

        if not ray.is_initialized():
            return None
        board = self._handle()
        if board is None:
            return None
        try:
            return ray.get(board.snapshot.remote(), timeout=BOARD_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - dead, restarting or slow: no stats this time
            logger.info("the status board did not answer: %s", type(exc).__name__)
            self._board = None
            return None

    def _handle(self) -> Any:
        if self._board is not None:
            return self._board
        now = self._clock()
        if self._tried_at is not None and now - self._tried_at < BOARD_RETRY_S:
            return None
        self._tried_at = now
        try:
            self._board = self._create()
        except Exception as exc:  # noqa: BLE001 - Ray not reachable: no stats, the rest of the page still shows
            logger.warning("could not start the status board: %s", exc)
        return self._board


class JobReader:
    """The batch jobs, read from object storage: one listing of ``batches/`` (not recursive: a job's results and
    artifacts are under it) and one read per unfinished job. A job that ended never changes again, so it is
    read once and kept."""

    def __init__(self, store: ObjectStore, readers: int = 8) -> None:
        self.store = store
        self._ended: dict[str, JobRecord] = {}
        self._pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="status-jobs")

    def jobs(self) -> list[JobRecord]:
        ids = self._execution_ids()
        self._ended = {i: job for i, job in self._ended.items() if i in ids}
        unread = [i for i in ids if i not in self._ended]
        found = [job for job in self._pool.map(self._read, unread) if job is not None]
        for job in found:
            if job.state in FINAL_STATES:
                self._ended[job.execution_id] = job
        return found + [job for i, job in self._ended.items() if i not in unread]

    def _execution_ids(self) -> set[str]:
        selector = pafs.FileSelector(self.store.path(BATCHES_PREFIX), recursive=False, allow_not_found=True)
        names = (info.path.rstrip("/").rsplit("/", 1)[-1] for info in self.store.filesystem.get_file_info(selector)
                 if info.type == pafs.FileType.Directory)
        return {name for name in names if _EXECUTION_ID.fullmatch(name)}

    def _read(self, execution_id: str) -> Optional[JobRecord]:
        try:
            return batch_jobs.read_job(self.store, execution_id)
        except (ObjectNotFound, ValueError):  # being written, or not a job
            return None


class StatusSources:
    """Everything ``GET /ui/state`` shows, read at most once per ``ttl_s`` whoever asks.

    ``manager`` is the replica's :class:`~modelpool.management.model_manager.ModelManager` (its registry and its
    cached Serve details); ``board`` and ``nodes`` are the Ray reads, replaceable in tests.
    """

    def __init__(self, manager: Any, board: Optional[BoardReader] = None,
                 nodes: Callable[[], list[dict]] = _ray_nodes, ttl_s: float = STATE_TTL_S) -> None:
        self.manager = manager
        self.board = board or BoardReader()
        self._nodes = nodes
        self._jobs = JobReader(manager.store)
        self._state = TtlCache(self._assemble, ttl_s=ttl_s)

    def state(self) -> dict[str, Any]:
        return self._state.get()

    def _assemble(self) -> dict[str, Any]:
        unavailable: list[str] = []

        def read(name: str, function: Callable[[], Any], empty: Any) -> Any:
            try:
                return function()
            except Exception as exc:  # noqa: BLE001 - one source down must not blank the page
                logger.warning("status page: could not read %s: %s", name, exc)
                unavailable.append(name)
                return empty

        registry = self.manager.registry
        records = read("models", registry.list_models, [])
        names = sorted({record.name for record in records})
        defaults = read("models", lambda: dict(zip(names, (r.version if r else None
                                                            for r in registry.default_records(names)))), {})
        pools = read("pools", registry.list_pools, [])
        graphs = read("graphs", registry.list_graphs, [])
        details = read("serve", self.manager._details.get, {})
        nodes = read("nodes", self._nodes, [])
        board = read("stats", self.board.snapshot, None)
        if board is None and "stats" not in unavailable:
            unavailable.append("stats")
        jobs = read("batches", self._jobs.jobs, [])
        return status_page.page_state(time.time(), records, defaults, pools, graphs, details, nodes, board, jobs,
                                      unavailable)
