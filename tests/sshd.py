"""A private sshd on a loopback port, for tests that drive real SSH (``ray up`` with Ray's local provider).

Nothing of the machine's own SSH set-up is read or changed: the daemon gets its own config, host key,
authorized key and pid file in a directory of the caller's, listens on 127.0.0.1 on a free port, and
logs to a file there. ``SetEnv HOME=...`` gives every session a throwaway home (sshd applies it after
the passwd home, so ``~`` and everything Ray writes under it land there; the working directory stays
the passwd home). Ray's SSH options have no port, so clients reach the port through a ProxyCommand
(``nc %h PORT``, from netcat-openbsd). ``tests/ensure_system_packages.sh`` installs sshd, rsync and nc.

:func:`running_sshd` always stops the daemon and every session process it started.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from modelpool.cluster.net import free_port

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; the system service normally creates it
TOOLS = {"sshd": SSHD, "ssh": "ssh", "ssh-keygen": "ssh-keygen", "rsync": "rsync", "nc": "nc"}


def missing_tools() -> list[str]:
    """The SSH tools this machine lacks (empty when a loopback sshd can run)."""
    return [name for name, tool in TOOLS.items()
            if not (os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool))]


def make_key(path: Path) -> Path:
    """A fresh ed25519 key pair without passphrase at ``path`` (and ``path.pub``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "modelpool-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@dataclass
class LoopbackSshd:
    port: int
    root: Path
    home: Path          # HOME of every session
    user: str
    process: subprocess.Popen

    @property
    def proxy_command(self) -> str:
        """What ssh's ProxyCommand (Ray's ``auth.ssh_proxy_command``) needs to reach this daemon."""
        return f"nc %h {self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    def log_text(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""


def _config(root: Path, port: int, home: Path) -> str:
    return "\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        f"PidFile {root / 'sshd.pid'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",        # the key files live under /tmp, which is world-writable
        "PrintMotd no",
        "X11Forwarding no",
        "AllowTcpForwarding local",
        f"SetEnv HOME={home}",
        "",
    ])


def _wait_listening(process: subprocess.Popen, log: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if log.exists() and "Server listening" in log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen) -> None:
    """End the daemon and everything below it (sessions, and whatever they left running)."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for proc in [process, *tree]:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def running_sshd(root: Path, authorized_key: Path, home: Path, attempts: int = 3) -> Iterator[LoopbackSshd]:
    """sshd on 127.0.0.1:<free port> accepting ``authorized_key`` (a .pub) for this user, sessions with HOME=home."""
    root.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    make_key(root / "host_key")
    shutil.copyfile(authorized_key, root / "authorized_keys")
    (root / "authorized_keys").chmod(0o600)
    created_privsep = not PRIVSEP_DIR.exists()
    if created_privsep:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
    process = None
    try:
        for _ in range(attempts):  # a free port can be taken between choosing and binding it
            port = free_port()
            (root / "sshd_config").write_text(_config(root, port, home))
            with open(root / "sshd.log", "wb") as log:
                process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            if _wait_listening(process, root / "sshd.log", timeout_s=10):
                break
            _stop(process)
            process = None
        if process is None:
            raise RuntimeError(f"sshd did not start:\n{(root / 'sshd.log').read_text(errors='replace')[-4000:]}")
        yield LoopbackSshd(port=port, root=root, home=home, user=getpass.getuser(), process=process)
    finally:
        if process is not None:
            _stop(process)
        if created_privsep:
            with contextlib.suppress(OSError):
                PRIVSEP_DIR.rmdir()
