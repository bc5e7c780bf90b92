"""The overload benchmark's parts: wrk's summary, the saturating concurrency, the recovery time, and its wrk script
(run for real) waiting out Retry-After as modelpool's clients do."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtests.bench_overload import WrkRun, parse_wrk, percentile, recovery_s, run_wrk, saturating


def run(connections: int, ok: int) -> WrkRun:
    return WrkRun(connections, 10.0, ok, 0, 0, 0, 0, 1.0, 2.0)


def test_wrk_summary_splits_answers_refusals_and_connection_errors():
    parsed = parse_wrk("Running 20s test\nMODELPOOL_OVERLOAD 20000000 50000 120000 3 2 1 15000 42000\n", 128)
    assert parsed == WrkRun(128, 20.0, 50000, 120000, 3, 2, 1, 15.0, 42.0)
    assert parsed.ok_per_s == 2500
    with pytest.raises(RuntimeError, match="summary"):
        parse_wrk("wrk crashed", 1)


def test_the_saturating_concurrency_is_the_smallest_within_five_percent_of_the_best():
    sweep = [run(4, 10_000), run(8, 20_000), run(16, 28_600), run(32, 30_000), run(64, 29_000)]
    assert saturating(sweep) == 16
    assert saturating([run(4, 100)]) == 4


def test_recovery_counts_from_the_load_end_to_a_streak_of_fast_successes():
    end = 100.0
    samples = [(99.0, 429, 1.0), (100.5, 429, 1.0), (101.0, 200, 500.0)]  # refused, then slow: not back yet
    samples += [(102.0 + i * 0.1, 200, 5.0) for i in range(10)]
    assert recovery_s(samples, end, limit_ms=20.0) == pytest.approx(2.0)
    assert recovery_s(samples[:5], end, limit_ms=20.0) is None, "no streak of ten: not recovered"


def test_percentile_of_nothing_is_nan_not_an_error():
    assert percentile([], 99) != percentile([], 99)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 3.0


class _Refusing(BaseHTTPRequestHandler):
    """Answers every POST 429 with Retry-After: 1, as a full model does."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(429)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_wrks_clients_wait_out_retry_after_unless_harsh():
    """With 4 connections for 2 s against a server refusing everything: a client honouring Retry-After (1 s plus up
    to half again) sends at most 2 requests per connection; a harsh one sends again at once, hundreds of times."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v2/models/iris/infer"
    try:
        polite = run_wrk(url, 4, 2, honour_retry_after=True)
        harsh = run_wrk(url, 4, 2, honour_retry_after=False)
    finally:
        server.shutdown()
        server.server_close()
    assert polite.ok == 0 and 4 <= polite.shed <= 8, polite
    assert harsh.shed > 50, harsh
