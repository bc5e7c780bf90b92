"""Metrics scrapes write no access line unless ``--debug`` (Seldon's FILTER_METRICS_ACCESS_LOGS, on when not debugging).

Prometheus scrapes every 15 s or so, forever: one line each in management's log buries the requests a person
reads the log for. Serve writes one access line per request (``GET /metrics 200 3.2ms``) through the
``ray.serve`` logger, marking the record with ``serve_access_log=True``. The filter sits on that logger, not
on its handlers: Serve's handler chain ends with a filter that deletes ``serve_access_log`` from the record
(``ServeLogAttributeRemovalFilter``), so a filter appended after it would never see the mark, and Serve
rebuilds its handlers when a logging config changes, which would drop a handler's filter but not the
logger's. Only GET and HEAD on the metrics path go; every other request keeps its line.
"""
from __future__ import annotations

import logging
import re

SERVE_LOGGER = "ray.serve"
#: Serve's access message: ``[client ]METHOD ROUTE STATUS LATENCYms`` (ray.serve._private.logging_utils.access_log_msg)
_ACCESS = re.compile(r"(?:^|\s)(?P<method>[A-Z]+) (?P<route>\S+) \S+ [\d.]+ms$")


class ScrapeAccessFilter(logging.Filter):
    """Drops Serve's access records of GET/HEAD requests on one path (the metrics path)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path.rstrip("/") or "/"

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False):
            return True
        match = _ACCESS.search(record.getMessage())
        if match is None or match["method"] not in ("GET", "HEAD"):
            return True
        return (match["route"].rstrip("/") or "/") != self.path


def filter_scrape_logs(path: str, debug: bool) -> None:
    """Install the filter for ``path`` on Serve's logger in this process (none under ``debug``); idempotent,
    so a second call (a new path, or debug turned on) replaces the first instead of stacking."""
    logger = logging.getLogger(SERVE_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, ScrapeAccessFilter)]:
        logger.removeFilter(old)
    if not debug:
        logger.addFilter(ScrapeAccessFilter(path))
