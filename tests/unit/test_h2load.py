"""The benchmark's load generator, run for real against a loopback server: rates, percentiles and errors are read."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from loadtests.h2load import grpc_frame, run_h2load


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        status = 500 if self.path == "/fail" else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_successes_give_a_rate_and_percentiles(server):
    result = run_h2load(f"{server}/ok", b'{"x": 1}', connections=2, seconds=1)
    assert result.errors == 0 and result.requests_per_s > 10
    assert 0 < result.p50_ms <= result.p99_ms


def test_non_2xx_answers_count_as_errors(server):
    result = run_h2load(f"{server}/fail", b"{}", connections=1, seconds=1)
    assert result.errors > 0


def test_a_grpc_body_is_the_length_prefixed_message():
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
