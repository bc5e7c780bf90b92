"""Flush a replica's buffered log lines often, so access-log lines show up while they matter.

With ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` Serve buffers a replica's log records in a
``logging.handlers.MemoryHandler`` of 1,000 records that flushes only when full or on an ERROR. That
saves a write per request under load, but at low traffic an access-log line could sit in memory for
hours. A daemon thread per replica process flushes that buffer and the access lines of the replica's own
port (``access_log``) every quarter second: small batches, so the thread holds the interpreter for a
short while at a time and the buffer rarely fills on the request path; a line is on disk within 0.25 s.
"""
from __future__ import annotations

import logging
import logging.handlers
import threading
import time

from modelpool.deployments.access_log import ACCESS_LOG

FLUSH_EVERY_S = 0.25
_started = False
_lock = threading.Lock()


def flush_serve_logs() -> None:
    for handler in logging.getLogger("ray.serve").handlers:
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.flush()


def start_log_flusher() -> None:
    """Idempotent: one flusher per process, however many models it hosts."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_flush_forever, name="serve-log-flush", daemon=True).start()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_EVERY_S)
        try:
            flush_serve_logs()
            ACCESS_LOG.flush()
        except Exception:  # noqa: BLE001 - logging must never take the replica down
            pass
