"""The replica port's access lines: written in batches, read exactly as Serve's own path writes them.

Serve's real logger set-up (``configure_component_logger``: a memory handler before a rotating file with
Serve's formatter) is built in a temp dir, so a change in Serve's format shows here.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterator

import pytest
from ray.serve._private.logging_utils import configure_component_logger
from ray.serve.schema import LoggingConfig

from modelpool.deployments.access_log import ACCESS_LOG_EXTRA, AccessLog

SERVE_LOGGER = logging.getLogger("ray.serve")
STAMP = re.compile(r"^(INFO) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@pytest.fixture
def serve_logging(tmp_path: Path) -> Iterator:
    """Configure Serve's replica logger in tmp_path; gives a function (config, max_bytes) -> the log file."""
    saved = (list(SERVE_LOGGER.handlers), SERVE_LOGGER.level, SERVE_LOGGER.propagate)

    def configure(max_bytes: int = 10_000_000, **config) -> Path:
        configure_component_logger(component_name="model:iris:2_iris_v2", component_id="abcd1234",
                                   logging_config=LoggingConfig(logs_dir=str(tmp_path), **config),
                                   max_bytes=max_bytes, backup_count=2, buffer_size=1000)
        return next(tmp_path.glob("*.log"))

    yield configure
    for handler in SERVE_LOGGER.handlers:
        handler.close()
    SERVE_LOGGER.handlers[:] = saved[0]
    SERVE_LOGGER.setLevel(saved[1])
    SERVE_LOGGER.propagate = saved[2]


def serve_path_line(request_id: str, message: str) -> None:
    """An access line as Serve's path (and, before, the replica port) writes it: through ``logging``."""
    from ray.serve import context

    context._set_request_context(request_id=request_id)
    SERVE_LOGGER.info(message, extra=ACCESS_LOG_EXTRA)
    for handler in SERVE_LOGGER.handlers:
        handler.flush()


def test_a_batched_line_reads_as_serves_own_line(serve_logging) -> None:
    log_file = serve_logging()
    serve_path_line("req-serve", "POST /v2/models/iris/infer 200 1.2ms")
    access = AccessLog(SERVE_LOGGER)
    access.record("POST", "/v2/models/iris/infer", 200, 1.234, "req-port")
    assert "req-port" not in log_file.read_text(), "written on the request path, not by the flusher"
    access.flush()
    serve_line, port_line = log_file.read_text().splitlines()
    assert STAMP.sub("", serve_line).replace("req-serve", "req-port") == STAMP.sub("", port_line)
    assert port_line.endswith(" model:iris:2_iris_v2 abcd1234 req-port -- POST /v2/models/iris/infer 200 1.2ms")
    assert STAMP.match(port_line).group(2) >= STAMP.match(serve_line).group(2)


def test_lines_keep_their_order_and_times_across_seconds(serve_logging) -> None:
    log_file = serve_logging()
    clock = iter([1_700_000_000.998, 1_700_000_001.004, 1_700_000_001.5])
    access = AccessLog(SERVE_LOGGER, clock=lambda: next(clock))
    for n in range(3):
        access.record("GET", f"/v2/models/iris/ready?n={n}", 200, 0.1, f"r{n}")
    access.flush()
    lines = log_file.read_text().splitlines()
    assert [line.split()[5] for line in lines] == ["r0", "r1", "r2"]
    expected = [logging.Formatter().formatTime(logging.makeLogRecord({"created": t, "msecs": int((t % 1) * 1000)}))
                for t in (1_700_000_000.998, 1_700_000_001.004, 1_700_000_001.5)]
    assert [STAMP.match(line).group(2) for line in lines] == expected


def test_the_file_rotates_when_a_batch_would_pass_max_bytes(serve_logging) -> None:
    log_file = serve_logging(max_bytes=2_000)
    access = AccessLog(SERVE_LOGGER)
    for batch in range(4):
        for n in range(10):
            access.record("POST", "/v2/models/iris/infer", 200, 1.0, f"b{batch}-{n}")
        access.flush()
    rotated = sorted(log_file.parent.glob(log_file.name + ".*"))
    assert rotated, "no rotation at maxBytes"
    assert log_file.stat().st_size < 2_000 and all(p.stat().st_size < 2_000 for p in rotated)
    kept = "".join(p.read_text() for p in [*rotated, log_file])
    assert "b3-9" in kept and kept.count(" -- POST ") == 30, "the current file and two backups hold the last 30 lines"


def test_no_access_line_when_the_access_log_is_off(serve_logging) -> None:
    log_file = serve_logging(enable_access_log=False)
    access = AccessLog(SERVE_LOGGER)
    access.record("POST", "/v2/models/iris/infer", 200, 1.0, "quiet")
    access.flush()
    SERVE_LOGGER.info("not an access line")
    for handler in SERVE_LOGGER.handlers:
        handler.flush()
    assert "quiet" not in log_file.read_text() and "not an access line" in log_file.read_text()


def test_json_logs_take_serves_own_path(serve_logging) -> None:
    log_file = serve_logging(encoding="JSON")
    from ray.serve import context

    context._set_request_context(request_id="json-1")
    AccessLog(SERVE_LOGGER).record("POST", "/v2/models/iris/infer", 200, 1.0, "json-1")
    for handler in SERVE_LOGGER.handlers:
        handler.flush()
    line = json.loads(log_file.read_text().splitlines()[-1])
    assert line["message"] == "POST /v2/models/iris/infer 200 1.0ms" and line["request_id"] == "json-1"


def test_a_reconfigured_logger_is_followed(serve_logging) -> None:
    serve_logging()
    access = AccessLog(SERVE_LOGGER)
    access.record("POST", "/v2/models/iris/infer", 200, 1.0, "before")
    log_file = serve_logging(encoding="JSON")  # Serve replaces the handlers on a new logging_config
    access.flush()
    from ray.serve import context

    context._set_request_context(request_id="after")  # as the replica port sets it for each call
    access.record("POST", "/v2/models/iris/infer", 200, 1.0, "after")
    for handler in SERVE_LOGGER.handlers:
        handler.flush()
    ids = [json.loads(line)["request_id"] for line in log_file.read_text().splitlines() if line.startswith("{")]
    assert ids[-2:] == ["before", "after"]
