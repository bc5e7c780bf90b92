"""The overload benchmark's wire timing: requests and answers paired per connection, and a real tcpdump capture
that times a server's quick refusals and slow answers apart from the client."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from loadtests.wire_timing import PROBE_SOURCE, FromAddress, LoopbackCapture, pair_exchanges

SERVER = 8000


def test_each_request_pairs_with_the_first_answer_segment_on_its_own_connection():
    segments = [
        (1.000, 40001, SERVER, b"POST /v2/models/iris/infer HTTP/1.1\r\n"),
        (1.001, 40001, SERVER, b'{"inputs": []}'),  # the body, a second segment of the same request
        (1.002, 40002, SERVER, b"POST /v2/models/iris/infer HTTP/1.1\r\n"),
        (1.004, SERVER, 40002, b"HTTP/1.1 429 Too Many Requests\r\n"),
        (1.030, SERVER, 40001, b"HTTP/1.1 200 OK\r\n"),
        (1.031, SERVER, 40001, b'{"outputs": []}'),  # the answer's body: not a new exchange
        (1.100, 40001, SERVER, b"POST /v2/models/iris/infer HTTP/1.1\r\n"),
        (1.105, SERVER, 40001, b"HTTP/1.1 5xx ?"),
        (2.000, 40003, SERVER, b"POST /v2/models/iris/infer HTTP/1.1\r\n"),  # its answer was not captured ...
        (9.000, 40003, SERVER, b"GET /v2/health/ready HTTP/1.1\r\n"),  # ... so the port's next request starts anew
        (9.001, SERVER, 40003, b"HTTP/1.1 200 OK\r\n"),
    ]
    exchanges = pair_exchanges(segments, SERVER)
    assert [(e.sent, e.status, round(e.ms, 3)) for e in exchanges] == [
        (1.002, 429, 2.0), (1.000, 200, 30.0), (1.100, 0, 5.0), (9.000, 200, 1.0)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/slow":
            time.sleep(0.05)
        body = b"{}"
        self.send_response(200 if self.path == "/slow" else 429)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_capture_times_quick_refusals_and_slow_answers_apart_from_other_clients():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with LoopbackCapture(server.server_port) as wire, requests.Session() as probe, requests.Session() as other:
            probe.mount("http://", FromAddress(PROBE_SOURCE))
            started = time.monotonic()
            for _ in range(5):
                assert probe.post(f"{url}/now", data=b"x").status_code == 429
                assert probe.post(f"{url}/slow", data=b"x").status_code == 200
                other.post(f"{url}/now", data=b"x")  # from 127.0.0.1: not the probe's, not captured
            ended = time.monotonic()
    finally:
        server.shutdown()
        server.server_close()
    exchanges = wire.exchanges()
    assert wire.dropped == 0
    assert [e.status for e in exchanges] == [429, 200] * 5, "the probe's ten exchanges, in order, nobody else's"
    assert all(started <= e.sent <= ended for e in exchanges), "stamped on the probe's clock"
    assert all(e.ms < 50 for e in exchanges if e.status == 429)
    assert all(e.ms >= 50 for e in exchanges if e.status == 200), "the server's 50 ms are on the wire"
