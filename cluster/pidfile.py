"""``--pidfile``: a file naming the process that holds the cluster, for a supervisor (Seldon/gunicorn's --pidfile).

Which process that is depends on how ``modelpool start`` runs: with ``--block`` the start process itself (a
SIGTERM to it stops the cluster cleanly), without it the local Ray head's GCS server (``start`` returns and
leaves Ray running, so the only process whose life is the cluster's is Ray's own). A joined cluster's Ray
is not this machine's to name, so there the pidfile needs ``--block``.

The file is checked before anything starts (a second start against a live cluster is refused at once),
written atomically once the cluster serves, and removed by ``modelpool stop``. Only the standard library and
psutil: these are plain file and process checks, unit-tested without Ray.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import psutil

from modelpool.cluster.settings import SettingsError

#: Permissions of the written file: anyone may read a PID (a supervisor often runs as another user).
PIDFILE_MODE = 0o644
#: Names of processes that can hold a cluster; a PID reused by anything else does not make a pidfile live.
HOLDER_NAMES = ("gcs_server",)


class PidfileError(RuntimeError):
    """The pidfile names a cluster that is still running (or is not a pidfile at all): ``start`` stops at once."""


def read_pid(path: Path) -> Optional[int]:
    """The PID in ``path``; None when the file is missing or empty. A file holding anything else raises
    PidfileError: ``--pidfile`` pointed at some other file, which ``start`` must not overwrite."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise PidfileError(f"{path} (--pidfile) is not a pidfile (it holds {text[:40]!r}, not a PID); "
                           "point --pidfile at a new file or remove that one")
    return int(text)


def holds_cluster(pid: int) -> bool:
    """Whether ``pid`` is a running process that can hold a cluster: a GCS server or a ``modelpool`` process.

    Why not just "does the PID exist": PIDs are reused. A container restarted with the pidfile on a volume
    finds its own PID (often 1) in it, and a machine rebooted since may have given the PID to anything; a
    start refused for those would never start again without a person removing the file.
    """
    if pid == os.getpid():
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if process.name() in HOLDER_NAMES:
            return True
        return any("modelpool" in part for part in process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it may be a cluster, so do not take its file
        return True


def check_pidfile(pidfile: Optional[str], *, block: bool, joined: bool) -> None:
    """Refuse a ``--pidfile`` that cannot work before anything starts.

    SettingsError (from the settings layer) for a misuse of the flag; PidfileError when the file names a
    cluster that is still running. A stale file (its process is gone) passes: ``start`` replaces it.
    """
    if not pidfile:
        return
    path = Path(pidfile).expanduser()
    if joined and not block:
        raise SettingsError(
            f"--pidfile {pidfile} on a joined cluster (--address) needs --block: the cluster's Ray processes are "
            "not this command's, so the pidfile can only name the `modelpool start --block` process that serves "
            "until it gets SIGTERM")
    if not path.parent.is_dir():
        raise SettingsError(f"--pidfile {pidfile}: the directory {path.parent} does not exist; create it or choose "
                            "a pidfile in an existing directory")
    if path.is_dir():
        raise SettingsError(f"--pidfile {pidfile} is a directory; name a file in it, e.g. {path / 'modelpool.pid'}")
    pid = read_pid(path)
    if pid is not None and holds_cluster(pid):
        raise PidfileError(f"{path} names process {pid}, which is running: a cluster started with this --pidfile "
                           f"is still up; stop it first (modelpool stop, or kill {pid} if it runs with --block), "
                           "or choose another --pidfile")


def write_pidfile(pidfile: str, pid: int) -> Path:
    """Write ``pid`` to ``pidfile`` atomically (a temporary file in the same directory, then a rename), mode 0644.

    Atomic because a supervisor may read the file at any moment: it must see the old PID or the new one,
    never an empty or half-written file. Returns the absolute path (what ``stop`` finds in the state file, from
    any directory).
    """
    path = Path(pidfile).expanduser().absolute()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, PIDFILE_MODE)  # mkstemp makes 0600, and a umask must not decide what a reader sees
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{pid}\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def remove_pidfile(pidfile: str, pid: Optional[int]) -> bool:
    """Remove ``pidfile`` if it still names ``pid`` (what this cluster's start wrote), or, when ``pid`` is not
    known, if the process it names no longer holds a cluster. A file a later start took over stays.
    Returns whether the file was removed."""
    path = Path(pidfile).expanduser()
    try:
        named = read_pid(path)
    except PidfileError:
        return False  # not ours to remove
    if named is None:
        return False  # missing, or empty: not a file start wrote
    if named == pid or (pid is None and not holds_cluster(named)):
        path.unlink(missing_ok=True)
        return True
    return False
