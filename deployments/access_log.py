"""Access lines of a replica's own port, in Serve's replica log, written a batch at a time.

Why: an access line through ``logging`` costs a replica about 15% of its CPU under load (BENCHMARKS.md,
issue 15): the caller lookup and the record on the request path, then, when Serve's 1,000-record
buffer flushes, a formatting, two ``stat`` calls (the rotating handler's check) and a ``write`` per
line. That flush runs in whichever thread fills the buffer, the event loop's under load: a stall of
tens of ms every second, which was the replica's p99 at c=1 and c=64.

Here the request path only appends a tuple. The log flusher (``log_flush``) turns the tuples into the
very lines Serve's formatter writes (its own format string, its own time format) and appends them to
Serve's file with one ``write``, checking for rotation once per batch.

The fast path is taken when Serve's replica logger has its default shape: a memory handler in front of
a rotating file handler with Serve's text formatter and no extra record attributes. With
``encoding: JSON``, extra attributes or any other set-up (a process without Serve's logger, as in
unit tests) each line goes through ``logging`` as before, so what the log says never depends on the
path. ``enable_access_log: false`` writes no access line on either path.
"""
from __future__ import annotations

import collections
import logging
import logging.handlers
import re
import threading
import time
from typing import Callable, Optional

logger = logging.getLogger("ray.serve")

#: what Serve's own access-log records carry so its formatter prints them as access lines
ACCESS_LOG_EXTRA = {"serve_access_log": True, "log_to_stderr": False}
#: the record fields a batch can fill in; a format naming any other falls back to ``logging``
_FIELDS = {"levelname", "asctime", "request_id", "message"}
_FIELD = re.compile(r"%\((\w+)\)s")

Entry = tuple[float, str, str, int, float, str, str]  # created, method, path, status, elapsed ms, request id, trace id


def access_message(method: str, path: str, status: int, elapsed_ms: float, trace_id: str = "") -> str:
    """Serve's access message (``POST /path 200 1.2ms``), then ``trace_id=...`` when the request was traced, so a
    line found in the log leads to its trace in the collector."""
    message = f"{method} {path} {status} {elapsed_ms:.1f}ms"
    return f"{message} trace_id={trace_id}" if trace_id else message


class _ServeFile:
    """Serve's rotating replica log file and the format string of its request lines."""

    def __init__(self, handler: logging.handlers.RotatingFileHandler, line_format: str,
                 time_format: logging.Formatter) -> None:
        self.handler = handler
        self.line_format = line_format
        self.time_format = time_format

    @classmethod
    def find(cls, serve_logger: logging.Logger) -> tuple[bool, Optional["_ServeFile"]]:
        """(access lines wanted, Serve's file when the fast path can write it) for the logger's handlers."""
        for handler in serve_logger.handlers:
            if not isinstance(handler, logging.handlers.MemoryHandler):
                continue
            probe = logging.makeLogRecord({"serve_access_log": True, "msg": ""})
            if not all(f.filter(probe) if isinstance(f, logging.Filter) else f(probe) for f in handler.filters):
                return False, None  # enable_access_log: false (Serve's filter drops access records)
            target = handler.target
            formatter = getattr(target, "formatter", None)
            request_formatter = getattr(formatter, "request_formatter", None)
            if (not isinstance(target, logging.handlers.RotatingFileHandler) or request_formatter is None
                    or getattr(formatter, "additional_log_standard_attrs", None)):
                return True, None
            line_format = request_formatter._fmt or ""
            if not set(_FIELD.findall(line_format)) <= _FIELDS or "%(" in _FIELD.sub("", line_format):
                return True, None
            return True, cls(target, line_format, request_formatter)
        return True, None

    def lines(self, entries: list[Entry]) -> str:
        """The entries as Serve's formatter would print them, one per line."""
        out = []
        second, stamp = -1, ""
        time_format = self.time_format
        for created, method, path, status, elapsed_ms, request_id, trace_id in entries:
            whole = int(created)
            if whole != second:  # strftime once per second of records, as the batch is in time order
                second = whole
                stamp = time.strftime(time_format.default_time_format, time_format.converter(created))
            asctime = time_format.default_msec_format % (stamp, int((created - whole) * 1000))
            out.append(self.line_format % {
                "levelname": "INFO", "asctime": asctime, "request_id": request_id,
                "message": access_message(method, path, status, elapsed_ms, trace_id)})
        out.append("")
        return "\n".join(out)

    def write(self, text: str) -> None:
        """Append to the file under the handler's lock, rotating first when the text would pass maxBytes."""
        handler = self.handler
        handler.acquire()
        try:
            if handler.stream is None:
                handler.stream = handler._open()
            if handler.maxBytes > 0 and handler.stream.tell() + len(text) >= handler.maxBytes:
                handler.doRollover()
            handler.stream.write(text)
            handler.stream.flush()
        finally:
            handler.release()


class AccessLog:
    """One per process: ``record`` on the request path, ``flush`` from the log flusher's thread."""

    def __init__(self, serve_logger: logging.Logger = logger, clock: Callable[[], float] = time.time) -> None:
        self.serve_logger = serve_logger
        self.clock = clock  # logging's own clock: the lines' times read as Serve's
        self._entries: collections.deque[Entry] = collections.deque()  # append/popleft: safe across threads
        self._file: Optional[_ServeFile] = None
        self._wanted = True
        self._seen_handlers: Optional[list] = None
        self._flush_lock = threading.Lock()

    def _shape(self) -> tuple[bool, Optional[_ServeFile]]:
        """Re-read when Serve reconfigures its logger (a new logging_config replaces the handlers)."""
        handlers = self.serve_logger.handlers
        if handlers != self._seen_handlers:
            self._seen_handlers = list(handlers)
            self._wanted, self._file = _ServeFile.find(self.serve_logger)
        return self._wanted, self._file

    def record(self, method: str, path: str, status: int, elapsed_ms: float, request_id: str,
               trace_id: str = "") -> None:
        wanted, serve_file = self._shape()
        if serve_file is not None:
            self._entries.append((self.clock(), method, path, status, elapsed_ms, request_id, trace_id))
        elif wanted:
            self.serve_logger.info(access_message(method, path, status, elapsed_ms, trace_id), extra=ACCESS_LOG_EXTRA)

    def flush(self) -> None:
        """Write what was recorded before this call; ``record`` never waits for it."""
        with self._flush_lock:
            pending = self._entries
            entries = [pending.popleft() for _ in range(len(pending))]
            if not entries:
                return
            wanted, serve_file = self._shape()
            if serve_file is not None:
                serve_file.write(serve_file.lines(entries))
            elif wanted:  # Serve's logging changed shape since these were recorded: its own path
                from ray.serve import context

                for _, method, path, status, elapsed_ms, request_id, trace_id in entries:
                    context._set_request_context(request_id=request_id)  # this thread's context only
                    self.serve_logger.info(access_message(method, path, status, elapsed_ms, trace_id),
                                           extra=ACCESS_LOG_EXTRA)


ACCESS_LOG = AccessLog()
