"""--pidfile: written atomically with the holder's PID once the cluster serves, refused while it names a running
cluster, replaced when stale, removed at stop. The real cluster's pidfile (a live gcs_server) is checked in
tests/integration/test_zzz_server_settings.py."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from modelpool import cli
from modelpool.cluster import local_cluster, runtime
from modelpool.cluster.net import free_port
from modelpool.cluster.pidfile import PidfileError, check_pidfile, remove_pidfile, write_pidfile
from modelpool.cluster.settings import SettingsError, load_settings


@pytest.fixture()
def running_cluster_process():
    """A live process that looks like a `modelpool start --block` (its command line names modelpool)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "modelpool", "start", "--block"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_pidfile_holds_the_pid_mode_0644_whatever_the_umask_and_no_temporary_file(tmp_path):
    path = tmp_path / "modelpool.pid"
    path.write_text("99999999\n")  # a stale one is replaced
    old_umask = os.umask(0o077)
    try:
        write_pidfile(str(path), 4321)
    finally:
        os.umask(old_umask)
    assert path.read_text() == "4321\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["modelpool.pid"], "the temporary file is renamed, not left"


def test_a_pidfile_naming_a_running_cluster_is_refused_in_one_line_naming_file_and_pid(tmp_path, running_cluster_process):
    path = tmp_path / "modelpool.pid"
    path.write_text(f"{running_cluster_process}\n")
    with pytest.raises(PidfileError) as refused:
        check_pidfile(str(path), block=False, joined=False)
    message = str(refused.value)
    assert str(path) in message and str(running_cluster_process) in message and "\n" not in message
    assert "modelpool stop" in message, "the message says how to get past it"


def test_a_stale_pidfile_passes(tmp_path):
    path = tmp_path / "modelpool.pid"
    for pid in (dead_pid(), os.getpid()):  # a dead process; this process (a container restarted as PID 1 finds itself)
        path.write_text(f"{pid}\n")
        check_pidfile(str(path), block=True, joined=False)


def test_a_pid_reused_by_an_unrelated_process_is_stale(tmp_path):
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        path = tmp_path / "modelpool.pid"
        path.write_text(f"{unrelated.pid}\n")
        check_pidfile(str(path), block=False, joined=False)
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_file_that_is_not_a_pidfile_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    with pytest.raises(PidfileError, match="is not a pidfile"):
        check_pidfile(str(path), block=False, joined=False)
    assert path.read_text() == "my notes\n"
    assert remove_pidfile(str(path), None) is False and path.exists()


def test_a_missing_directory_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(SettingsError) as refused:
        check_pidfile(str(tmp_path / "nowhere" / "modelpool.pid"), block=False, joined=False)
    assert str(refused.value).startswith("--pidfile ") and "does not exist" in str(refused.value)
    with pytest.raises(SettingsError, match="is a directory"):
        check_pidfile(str(tmp_path), block=False, joined=False)


def test_a_joined_cluster_needs_block(tmp_path):
    path = str(tmp_path / "modelpool.pid")
    with pytest.raises(SettingsError) as refused:
        check_pidfile(path, block=False, joined=True)
    assert "--block" in str(refused.value) and "--address" in str(refused.value)
    check_pidfile(path, block=True, joined=True)


def test_stop_removes_only_the_pidfile_it_wrote(tmp_path):
    path = tmp_path / "modelpool.pid"
    path.write_text("4321\n")
    assert remove_pidfile(str(path), 1234) is False and path.exists(), "another start took it over"
    assert remove_pidfile(str(path), 4321) is True and not path.exists()
    path.write_text(f"{dead_pid()}\n")
    assert remove_pidfile(str(path), None) is True, "no record of the PID: removed once its process is gone"
    assert remove_pidfile(str(path), None) is False, "already gone"


# ------------------------------------------------------------------------------ through start, stop and the CLI
def _settings(tmp_path, **changes):
    ports = {"http_port": free_port(), "grpc_port": free_port(), "serve_http_port": free_port(),
             "grpc_ingress_port": free_port()}
    return load_settings({"home": str(tmp_path / "home"), **ports, **changes}, {})


def test_start_refuses_a_live_pidfile_before_anything_starts(tmp_path, monkeypatch, running_cluster_process):
    path = tmp_path / "modelpool.pid"
    path.write_text(f"{running_cluster_process}\n")
    started = []
    monkeypatch.setattr(runtime, "start_local_head", lambda *_: started.append("ray"))
    with pytest.raises(PidfileError):
        local_cluster.start(_settings(tmp_path, pidfile=str(path)), deploy=lambda token: started.append("deploy"))
    assert started == [] and path.read_text() == f"{running_cluster_process}\n"


def test_the_cli_refuses_with_exit_1_and_one_line(tmp_path, capsys, running_cluster_process):
    path = tmp_path / "modelpool.pid"
    path.write_text(f"{running_cluster_process}\n")
    assert cli.main(["start", "--home", str(tmp_path / "home"), "--pidfile", str(path), "--no-examples"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"modelpool: {path} names process {running_cluster_process}")
    assert not (tmp_path / "home").exists(), "refused before the home folder was even made"


def test_the_cli_refuses_a_pidfile_on_a_joined_cluster_without_block(tmp_path, capsys):
    assert cli.main(["start", "--home", str(tmp_path / "home"), "--address", "10.0.0.5:6379",
                     "--pidfile", str(tmp_path / "modelpool.pid"), "--no-examples"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelpool: bad setting: --pidfile") and "needs --block" in err


def _fake_cluster(monkeypatch) -> list[str]:
    """Everything start and stop would do to Ray, recorded instead."""
    calls: list[str] = []
    monkeypatch.setattr(runtime, "start_local_head", lambda settings: calls.append("head") or "127.0.0.1:1")
    monkeypatch.setattr(runtime, "connect", lambda address: calls.append("connect"))
    monkeypatch.setattr(runtime, "start_serve", lambda *_: calls.append("serve"))
    monkeypatch.setattr(runtime, "stop_local_head", lambda: calls.append("stopped"))
    monkeypatch.setattr(local_cluster, "wait_until_ready", lambda *_: calls.append("ready"))
    # nothing binds a port here, and a cluster the suite runs beside holds Serve's and Ray's fixed ones
    monkeypatch.setattr(local_cluster, "check_can_start", lambda settings: None)
    return calls


def test_without_block_the_pidfile_names_the_gcs_server_and_stop_finds_it_in_the_state(tmp_path, monkeypatch):
    calls = _fake_cluster(monkeypatch)
    monkeypatch.setattr(runtime, "gcs_server_pid", lambda port: 4242)
    path = tmp_path / "modelpool.pid"
    settings = _settings(tmp_path, pidfile=str(path))
    local_cluster.prepare_home(settings)

    def deploy(token: str) -> None:
        calls.append("deploy")
        assert not path.exists(), "written only once the cluster serves"

    local_cluster.start(settings, deploy)
    assert calls == ["head", "connect", "serve", "deploy", "ready"]
    assert path.read_text() == "4242\n"
    assert local_cluster.read_state(settings.home_path)["pidfile"] == str(path)
    local_cluster.stop(settings.model_copy(update={"pidfile": None}))  # `modelpool stop` without the flag
    assert calls[-1] == "stopped" and not path.exists()


def test_with_block_the_pidfile_names_this_process_which_takes_sigterm_as_stop(tmp_path, monkeypatch):
    _fake_cluster(monkeypatch)
    path = tmp_path / "modelpool.pid"
    settings = _settings(tmp_path, pidfile=str(path))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        local_cluster.start(settings, lambda token: None, block=True)
        assert path.read_text() == f"{os.getpid()}\n"
        os.kill(os.getpid(), signal.SIGTERM)  # what a supervisor sends as soon as it has read the file
        local_cluster.wait_for_signal()  # returns: the signal asked for a stop instead of killing the process
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        local_cluster._stop_requested.clear()
    local_cluster.stop(settings)
    assert not path.exists()


def test_a_failed_start_writes_no_pidfile(tmp_path, monkeypatch):
    calls = _fake_cluster(monkeypatch)
    path = tmp_path / "modelpool.pid"

    def broken(token: str) -> None:
        raise RuntimeError("deploy failed")

    with pytest.raises(RuntimeError, match="deploy failed"):
        local_cluster.start(_settings(tmp_path, pidfile=str(path)), broken)
    assert calls[-1] == "stopped" and not path.exists()


def test_a_relative_pidfile_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert write_pidfile("modelpool.pid", 4321) == tmp_path / "modelpool.pid"
