"""The CLI's errors are one line naming the cause (Ray's wrappers taken off), and --debug adds the traceback."""
from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from modelpool import cli
from modelpool.cluster.runtime import ray_start_cause

HAPROXY_FAILURE = RuntimeError("HAProxy failed to start: cannot bind socket (Address already in use) [0.0.0.0:8000]\n"
                               "[ALERT] (1234) : config : parsing [/tmp/haproxy.cfg:40]\n[ALERT] more alerts")


def wrapped_by_ray(cause: Exception) -> RayTaskError:
    """What ``ray.get`` raises when an actor's method failed: the cause inside a RayTaskError, whose text is the
    remote traceback."""
    remote = (f"Traceback (most recent call last):\n  File \"haproxy.py\", line 1, in ready\n"
              f"{type(cause).__name__}: {cause}")
    return RayTaskError("HAProxyManager.ready", remote, cause)


def test_the_line_is_the_innermost_causes_first_line():
    assert cli.one_line(wrapped_by_ray(HAPROXY_FAILURE)) == (
        "RuntimeError: HAProxy failed to start: cannot bind socket (Address already in use) [0.0.0.0:8000]")
    try:  # an error of modelpool's own, raised from another, is written for the user: kept
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise ValueError("outer\ndetails") from exc
    except ValueError as exc:
        assert cli.one_line(exc) == "ValueError: outer"
    assert cli.one_line(RuntimeError("")) == "RuntimeError"


def test_ray_starts_cause_is_its_last_error_line():
    output = ("Usage stats collection is disabled.\n\nLocal node IP: 127.0.0.1\n"
              "Traceback (most recent call last):\n  File \"ray/scripts/scripts.py\", line 1, in start\n"
              "ConnectionError: Ray is trying to start at 127.0.0.1:6379, but is already running at 127.0.0.1:6379.\n")
    assert ray_start_cause(output) == ("ConnectionError: Ray is trying to start at 127.0.0.1:6379, but is already "
                                       "running at 127.0.0.1:6379.")
    assert ray_start_cause("something odd\nthe last line\n") == "the last line"
    assert ray_start_cause("") == "no output"


@pytest.mark.parametrize("debug", [False, True])
def test_a_failing_command_prints_one_line_and_debug_adds_the_traceback(monkeypatch, capsys, tmp_path, debug):
    def failing_stop(args):
        raise wrapped_by_ray(HAPROXY_FAILURE)

    monkeypatch.setattr(cli, "cmd_stop", failing_stop)
    monkeypatch.setenv("MODELPOOL_HOME", str(tmp_path))
    assert cli.main(["stop", *(["--debug"] if debug else [])]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    line = ("modelpool: RuntimeError: HAProxy failed to start: cannot bind socket (Address already in use) "
            "[0.0.0.0:8000]")
    if debug:
        assert lines[0] == "Traceback (most recent call last):" and lines[-1] == line
        assert any("[ALERT] more alerts" in text for text in lines), "the whole error, with its details"
    else:
        assert lines == [line + " (--debug shows the whole error)"]


def test_a_remote_command_keeps_the_clients_message_and_offers_no_debug_flag(monkeypatch, capsys):
    def failing(args):
        raise RuntimeError("cannot reach http://127.0.0.1:1 (is modelpool running?)")

    parser = cli.build_parser()
    args = parser.parse_args(["models", "list"])
    assert not hasattr(args, "debug")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", failing, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv: args)
    assert cli.main(["models", "list"]) == 1
    assert capsys.readouterr().err == ("modelpool: RuntimeError: cannot reach http://127.0.0.1:1 "
                                       "(is modelpool running?)\n")
