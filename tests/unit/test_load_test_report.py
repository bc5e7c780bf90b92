"""The load test's report: locust's CSVs read into one summary row per locustfile, no cluster needed.

The headers below are copied from files locust 2.47 wrote (``locust --csv``), so a locust upgrade that
renames a column fails here rather than in a silent report of zeros.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.load_summary import Summary, problem_lines, summarise, table
from loadtests.run_load_test import locust_command, plans, require_loopback

STATS_HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
                "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
                "99.99%,100%")
FAILURES_HEADER = "Method,Name,Error,Occurrences,First Seen,Last Seen"
EXCEPTIONS_HEADER = "Count,Message,Traceback,Nodes"


def write_run(out: Path, name: str, stats: list[str], failures: list[str] = (), exceptions: list[str] = ()) -> Path:
    prefix = out / name
    Path(f"{prefix}_stats.csv").write_text("\n".join([STATS_HEADER, *stats]) + "\n")
    Path(f"{prefix}_failures.csv").write_text("\n".join([FAILURES_HEADER, *failures]) + "\n")
    Path(f"{prefix}_exceptions.csv").write_text("\n".join([EXCEPTIONS_HEADER, *exceptions]) + "\n")
    return prefix


CLEAN = [
    "POST,/v2/models/iris/infer,900,0,4,5.2,1.1,80.0,120.0,180.0,0.0,4,5,6,6,8,11,15,21,60,80,80",
    "POST,/v2/models/diabetes/predict,100,0,5,6.0,1.3,40.0,110.0,20.0,0.0,5,6,6,7,9,12,16,22,40,40,40",
    ",Aggregated,1000,0,4,5.3,1.1,80.0,119.0,200.5,0.0,4,5,6,6,8,11,15,21,60,80,80",
]


def test_the_aggregated_row_becomes_the_summary(tmp_path):
    summary = summarise("inference", write_run(tmp_path, "inference", CLEAN))
    assert summary == Summary("inference", requests=1000, failures=0, median_ms=4, p95_ms=11, p99_ms=21, rps=200.5)
    assert summary.ok and summary.failure_pct == 0


def test_failures_fail_the_run_and_are_listed_most_frequent_first(tmp_path):
    prefix = write_run(tmp_path, "management", [
        "GET,/models/{name} [describe],40,3,12,14.0,5.0,300.0,400.0,2.0,0.1,12,13,14,15,20,40,300,300,300,300,300",
        ",Aggregated,40,3,12,14.0,5.0,300.0,400.0,2.0,0.1,12,13,14,15,20,40,300,300,300,300,300",
    ], failures=[
        "GET,/models/{name} [describe],CatchResponseError('HTTP 500: boom'),1,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z",
        "GET,/models/{name} [describe],CatchResponseError('HTTP 503: busy'),2,2026-01-01T00:00:00Z,2026-01-01T00:00:01Z",
    ])
    summary = summarise("management", prefix)
    assert not summary.ok and summary.failure_pct == pytest.approx(7.5)
    lines = problem_lines([summary], tmp_path)
    assert "2x GET /models/{name} [describe]: CatchResponseError('HTTP 503: busy')" in lines[0]
    assert "HTTP 500: boom" in lines[1]


def test_a_run_without_requests_or_csv_is_a_problem_not_a_pass(tmp_path):
    empty = summarise("batch", write_run(tmp_path, "batch", [",Aggregated,0,0,0,0.0,0,0,0,0.0,0.0,"
                                                             "N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A"]))
    assert (empty.requests, empty.p95_ms, empty.ok) == (0, None, False)
    missing = summarise("inference", tmp_path / "never-ran")
    assert not missing.ok and "did not finish" in missing.problem
    lines = problem_lines([empty, missing], tmp_path)
    assert lines == ["  batch: no requests were made (see batch.log)",
                     f"  inference: {missing.problem}"]


def test_exceptions_in_the_locustfile_are_reported(tmp_path):
    prefix = write_run(tmp_path, "batch", CLEAN, exceptions=['1,KeyError(\'executionId\'),"Traceback ...",local'])
    assert problem_lines([summarise("batch", prefix)], tmp_path) == [
        "  batch: exception 1x in the locustfile: KeyError('executionId')"]


def test_table_has_one_aligned_row_per_locustfile():
    text = table([Summary("inference", 1000, 0, 4, 11, 21.4, 200.5), Summary("batch", 8, 1, 1500, 2100, 2300, 0.26)])
    header, rule, first, second = text.splitlines()
    assert header.split() == ["locustfile", "requests", "failures", "fail", "%", "median", "ms", "p95", "ms", "p99",
                              "ms", "req/s"]
    assert first.split() == ["inference", "1000", "0", "0.00", "4.0", "11", "21", "200.5"]
    assert second.split() == ["batch", "8", "1", "12.50", "1500", "2100", "2300", "0.3"]
    assert len({len(line) for line in (header, rule, first, second)}) == 1


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://127.0.0.2"])
def test_loopback_targets_are_accepted(url):
    require_loopback(url)


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "https://example.com", "http://8.8.8.8", "not a url"])
def test_other_targets_are_refused(url):
    with pytest.raises(SystemExit, match="only loopback"):
        require_loopback(url)


def test_every_locustfile_runs_headless_bounded_with_all_reports(tmp_path):
    inference, management, batch = plans(32, 2, 2)
    assert inference.users > management.users and inference.users > batch.users
    command = locust_command(management, "http://127.0.0.1:8000", 20, tmp_path / "management")
    for flag, value in [("-f", str(management.locustfile)), ("-u", "2"), ("-t", "20s"), ("--host", "http://127.0.0.1:8000"),
                        ("--csv", str(tmp_path / "management")), ("--html", f"{tmp_path / 'management'}.html"),
                        ("--stop-timeout", str(management.stop_timeout_s))]:
        assert command[command.index(flag) + 1] == value
    assert "--headless" in command and "--only-summary" in command
    assert all(plan.locustfile.is_file() for plan in (inference, management, batch))
