"""The overload benchmark's pure parts: wrk's summary, the saturating concurrency, the recovery time."""
from __future__ import annotations

import pytest

from loadtests.bench_overload import WrkRun, parse_wrk, percentile, recovery_s, saturating


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
