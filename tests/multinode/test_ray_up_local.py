"""`ray up cluster/local.yaml` over real SSH to this machine, inferences through it, `ray down`.

What runs is cluster/local.yaml as shipped, with only what a user of this machine would set differently:

- ``auth.ssh_user``: this user (root on CI) instead of the placeholder; ``auth.ssh_private_key``: the
  shipped ``~/.ssh/id_ed25519`` spelt out under "your" HOME (Ray hands it to ``ssh -i`` as written, and ssh
  expands ``~`` from the passwd entry, not from $HOME); ``auth.ssh_proxy_command``: how to reach the test's
  own sshd (see below); ``cluster_name``: a unique one, so the local provider's state file
  (/tmp/ray/cluster-NAME.state), Ray's config cache (/tmp/ray-config-HASH) and its SSH control sockets
  are this test's alone;
- the install step (the one setup command with ``pip install``) becomes ``ln -sfn <this venv>
  ~/modelpool-venv``: a fresh venv would download Ray for minutes; every other setup line runs as shipped,
  including the one that puts ``~/modelpool-venv/bin`` on PATH;
- the object-store line keeps its shape, with a local directory instead of the ``s3://`` placeholder (one
  machine needs no shared storage; the registry must appear there, which proves the line reached
  ``modelpool start`` on the node).

The token step is the README's: ``ray get-auth-token --generate`` on "your machine" (a temporary HOME for
the ``ray`` commands, which also holds the SSH key at the shipped path ``~/.ssh/id_ed25519``), then
file_mounts carries ``~/.ray/auth_token`` to the node. The head must enforce it (the dashboard answers 401
without the token, 200 with it) and ``modelpool start --address auto`` must have joined with it.

SSH: a private sshd (tests/sshd.py) listens on 127.0.0.1 on a free port; Ray's SSH options have no port,
so ``auth.ssh_proxy_command`` is ``nc %h PORT`` (netcat-openbsd): Ray still connects to the head_ip
127.0.0.1 as shipped, over real TCP to a real sshd, without depending on port 22 or touching the
system's sshd or root's ~/.ssh. The sessions' HOME is a temporary directory (sshd ``SetEnv HOME``), so
the rsynced checkout, ~/.bashrc, ~/.modelpool and Ray's bootstrap files land there, not in root's home.

The model: local.yaml starts modelpool with ``--no-examples`` (a real cluster serves what its users
register), so the test keeps that and registers the iris example the way a user would: the archive goes
into the head's model store with ``ray rsync-up`` and is registered with ``ray exec ... 'modelpool models
register ...'`` (the head's own CLI, URL and management token). Then V2 inferences on 127.0.0.1:8000.

The head's start commands run ``ray stop``, which ends every Ray on the machine: the test refuses to run
while any Ray process or one of local.yaml's ports is in use. Everything it made is removed at the end,
also on failure: the cluster (``ray down``, then ``ray stop --force`` and haproxy if anything is left),
sshd and its sessions, Ray's SSH control masters and sockets, the launcher's state, config-cache and
bootstrap files, the dashboard's /tmp/pymp-* (Ray's own session logs under /tmp/ray stay, as after any
`ray stop`), the temporary homes. ``MODELPOOL_KEEP_RAY_UP_LOG=FILE`` keeps the output of every ``ray`` command.
"""
from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests
import yaml

from modelpool.cluster.front_directories import FRONT_DIRECTORY_PREFIX
from modelpool.cluster.runtime import haproxy_processes, kill_haproxy, ray_executable, ray_processes
from modelpool.cluster.net import is_loopback_host
from tests.listening import cluster_processes, listening_sockets, listing
from tests.readme_ports import table, undocumented
from tests.sshd import LoopbackSshd, make_key, missing_tools, running_sshd

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCAL_YAML = ROOT / "cluster" / "local.yaml"
HTTP = "http://127.0.0.1:8000"        # modelpool's default ingress on the head, as local.yaml starts it
DASHBOARD = "http://127.0.0.1:8265"   # Ray's default dashboard on the head
PORTS = {6379: "Ray GCS", 8000: "modelpool HTTP", 8082: "Ray metrics", 8265: "Ray dashboard"}
OBJECT_STORE_PLACEHOLDER = "s3://my-modelpool-bucket/modelpool"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 4.2, 1.5]]  # setosa, virginica, versicolor


@dataclass
class LocalCluster:
    config_path: Path
    cluster_name: str
    local_home: Path      # "your machine": HOME of the `ray` commands (token, SSH key)
    remote_home: Path     # HOME of the node's SSH sessions
    object_store: Path
    sshd: LoopbackSshd
    env: dict
    log: Path
    is_down: bool = False
    dashboard_dirs: tuple[Path, ...] = ()
    front_dirs: tuple[Path, ...] = ()

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A `ray` CLI command as the user runs it (from the checkout, HOME=local_home).

        Its output (stdout and stderr together) goes to the log as it comes, so a command that hangs
        still says where; ``stdout`` of the result holds this command's part.
        """
        with self.log.open("a") as log:
            log.write(f"\n$ ray {' '.join(args)}\n")
            log.flush()
            start = log.tell()
            try:
                code = subprocess.run([ray_executable(), *args], cwd=ROOT, env=self.env, stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = None
        with self.log.open() as log:
            log.seek(start)
            output = log.read()
        if code is None:
            pytest.fail(f"`ray {' '.join(args)}` did not finish in {timeout:.0f}s:\n{output[-6000:]}"
                        f"\n--- sshd log\n{self.sshd.log_text(2000)}")
        return subprocess.CompletedProcess(args, code, output, "")

    def down(self) -> subprocess.CompletedProcess:
        """`ray down`, noting first the temp dirs of the head's dashboard and of its front, which `ray stop` leaves
        behind (a killed front cannot remove its own; the next front or `modelpool stop` would)."""
        self.dashboard_dirs = tuple(dashboard_temp_dirs())
        self.front_dirs = tuple(cluster_front_dirs())
        self.is_down = True
        return self.ray("down", "-y", str(self.config_path), timeout=120)

    def explain(self, result: subprocess.CompletedProcess) -> str:
        return f"exit {result.returncode}\n{result.stdout[-6000:]}\n--- sshd log\n{self.sshd.log_text(2000)}"


def shipped_config_for_this_machine(*, cluster_name: str, ssh_user: str, proxy_command: str, venv: str,
                                    object_store: Path, local_home: Path) -> dict:
    """cluster/local.yaml with the few values a user of this machine sets (module docstring)."""
    config = yaml.safe_load(LOCAL_YAML.read_text())
    assert config["provider"]["head_ip"] == "127.0.0.1", "local.yaml's head is this machine"
    config["cluster_name"] = cluster_name
    config["auth"]["ssh_user"] = ssh_user
    key = config["auth"]["ssh_private_key"]
    assert key.startswith("~/"), key
    config["auth"]["ssh_private_key"] = str(local_home / key[2:])
    config["auth"]["ssh_proxy_command"] = proxy_command
    setup = config["setup_commands"]
    install = [i for i, c in enumerate(setup) if "pip install" in c]
    assert len(install) == 1, f"local.yaml must install in exactly one setup command: {setup}"
    setup[install[0]] = f"ln -sfn {venv} ~/modelpool-venv"
    store = [i for i, c in enumerate(setup) if OBJECT_STORE_PLACEHOLDER in c]
    assert len(store) == 1, f"local.yaml must set the object store in exactly one setup command: {setup}"
    setup[store[0]] = setup[store[0]].replace(OBJECT_STORE_PLACEHOLDER, str(object_store))
    return config


def busy_ports() -> list[str]:
    busy = []
    for port, what in PORTS.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(f"{port} ({what})")
    return busy


def ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSHCommandRunner keeps this cluster's ControlMaster sockets (same formula)."""
    from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:HASH_MAX_LENGTH]
    cluster = hashlib.sha256(cluster_name.encode()).hexdigest()[:HASH_MAX_LENGTH]
    return Path(f"/tmp/ray_ssh_{user}") / cluster


def close_ssh_masters(control_dir: Path) -> None:
    """End the ControlPersist masters Ray's ssh left behind (they would linger 10 s) and their sockets."""
    masters = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] == "ssh" and str(control_dir) in " ".join(process.info["cmdline"] or []):
                masters.append(process)
    for process in masters:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(masters, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    shutil.rmtree(control_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        control_dir.parent.rmdir()  # only if no other cluster of this user has sockets there


def launcher_temp_files(cluster_name: str) -> list[str]:
    """The cluster launcher's files of this cluster in /tmp: its config cache (ray-config-<sha256>), and the
    head's bootstrap config (ray-bootstrap-*), which it deletes itself unless `ray up` was killed."""
    found = []
    for pattern in ("ray-config-*", "ray-bootstrap-*"):
        for path in Path(tempfile.gettempdir()).glob(pattern):
            with contextlib.suppress(OSError):
                if f'"{cluster_name}"' in path.read_text(errors="replace"):
                    found.append(str(path))
    return found


def cluster_front_dirs() -> list[Path]:
    """The temp dirs of the fronts this Ray runs: those of haproxys started under a raylet (the unit tests running
    beside this one start fronts of their own, which are not the cluster's)."""
    dirs = set()
    for process in haproxy_processes():
        with contextlib.suppress(psutil.Error):
            if any(parent.name() == "raylet" for parent in process.parents()):
                dirs |= {Path(part).parent for part in process.cmdline() if FRONT_DIRECTORY_PREFIX in part}
    return sorted(dirs)


def dashboard_temp_dirs() -> list[Path]:
    """/tmp/pymp-* of the running Ray dashboard: its multiprocessing forkserver's listener socket, which `ray stop`
    (SIGTERM, then SIGKILL) leaves behind. Only this test's Ray runs here (the fixture checked)."""
    dirs = set()
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if not any(part.endswith("ray/dashboard/dashboard.py") for part in process.info["cmdline"] or []):
                continue
            for proc in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    for conn in proc.net_connections(kind="unix"):
                        if isinstance(conn.laddr, str) and Path(conn.laddr).parent.name.startswith("pymp-"):
                            dirs.add(Path(conn.laddr).parent)
    return sorted(dirs)


def wait_until_gone(timeout_s: float = 30) -> tuple[list, list]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rays, proxies = ray_processes(), haproxy_processes()
        if not rays and not proxies:
            return [], []
        time.sleep(0.5)
    return ray_processes(), haproxy_processes()


@pytest.fixture()
def local_cluster() -> Iterator[LocalCluster]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run tests/ensure_system_packages.sh (`make test` does) to install "
                    "openssh-server, rsync and netcat-openbsd")
    if ray_processes():
        pytest.fail("a Ray cluster is running on this machine; local.yaml's head runs `ray stop`, which would end it. "
                    "Stop it first (and run Ray tests under `flock /tmp/modelpool-ray.lock`).")
    busy = busy_ports()
    if busy:
        pytest.fail(f"local.yaml's head needs these ports, in use now: {', '.join(busy)}")

    from ray.autoscaler._private.local.config import get_lock_path, get_state_path

    work = Path(tempfile.mkdtemp(prefix="modelpool-ray-up-"))
    cluster_name = f"modelpool-local-test-{uuid.uuid4().hex[:8]}"
    local_home, remote_home, object_store = work / "local-home", work / "node-home", work / "objects"
    remote_home.mkdir(parents=True)
    if Path("/etc/skel").is_dir():  # a node user's home as useradd makes it (Debian's .bashrc returns early when not interactive)
        shutil.copytree("/etc/skel", remote_home, dirs_exist_ok=True)
    key = make_key(local_home / ".ssh" / "id_ed25519")  # the shipped auth.ssh_private_key path, under "your" HOME
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODELPOOL_"))}
    env.update(HOME=str(local_home), RAY_USAGE_STATS_ENABLED="0")
    control_dir = ssh_control_dir(cluster_name)
    cluster = None
    try:
        with running_sshd(work / "sshd", key.with_suffix(".pub"), remote_home) as sshd:
            config = shipped_config_for_this_machine(cluster_name=cluster_name, ssh_user=sshd.user,
                                                     proxy_command=sshd.proxy_command, venv=sys.prefix,
                                                     object_store=object_store, local_home=local_home)
            config_path = work / "local.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            cluster = LocalCluster(config_path=config_path, cluster_name=cluster_name, local_home=local_home,
                                   remote_home=remote_home, object_store=object_store, sshd=sshd, env=env,
                                   log=work / "ray.log")
            try:
                yield cluster
            finally:
                if not cluster.is_down:
                    cluster.down()
                close_ssh_masters(control_dir)
    finally:
        if ray_processes() or haproxy_processes():  # only ours: none ran before the test
            subprocess.run([ray_executable(), "stop", "--force"], capture_output=True, env=env, timeout=120)
            kill_haproxy()
        close_ssh_masters(control_dir)
        for path in (get_state_path(cluster_name), get_lock_path(cluster_name), *launcher_temp_files(cluster_name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for path in ((*cluster.dashboard_dirs, *cluster.front_dirs) if cluster is not None else ()):
            shutil.rmtree(path, ignore_errors=True)
        if cluster is not None and os.environ.get("MODELPOOL_KEEP_RAY_UP_LOG"):
            shutil.copy(cluster.log, os.environ["MODELPOOL_KEEP_RAY_UP_LOG"])
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(480)
def test_ray_up_serves_inferences_and_ray_down_leaves_nothing(local_cluster: LocalCluster):
    cluster = local_cluster
    token_file = cluster.local_home / ".ray" / "auth_token"

    # README "Many machines": the token, once, on your machine.
    generated = cluster.ray("get-auth-token", "--generate")
    assert generated.returncode == 0 and token_file.exists(), cluster.explain(generated)
    token_file.chmod(0o600)
    token = token_file.read_text().strip()

    started = time.monotonic()
    up = cluster.ray("up", "-y", "--no-config-cache", str(cluster.config_path), timeout=300)
    assert up.returncode == 0, f"ray up failed: {cluster.explain(up)}"
    up_s = time.monotonic() - started

    # The node got the token through file_mounts, owner-only, and its Ray runs with token auth.
    node_token = cluster.remote_home / ".ray" / "auth_token"
    assert node_token.read_text().strip() == token
    assert node_token.stat().st_mode & 0o777 == 0o600
    bootstrap = yaml.safe_load((cluster.remote_home / "ray_bootstrap_config.yaml").read_text())
    assert bootstrap["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "the head hands it on to its workers"
    gcs = [p for p in ray_processes() if p.name() == "gcs_server"]
    assert len(gcs) == 1, ray_processes()
    gcs_env = gcs[0].environ()
    assert gcs_env.get("HOME") == str(cluster.remote_home), "the head was started through SSH, in the node's home"
    assert gcs_env.get("RAY_AUTH_MODE") == "token"
    assert requests.get(f"{DASHBOARD}/api/version", timeout=10).status_code == 401
    assert requests.get(f"{DASHBOARD}/api/version", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert requests.get(f"{DASHBOARD}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=10).ok

    # modelpool on the head joined that cluster (`modelpool start --address auto`) and answers.
    assert requests.get(f"{HTTP}/v2/health/ready", timeout=10).status_code == 200
    state = cluster.remote_home / ".modelpool"
    assert (state / "management_token").exists()

    # A user's model: into the head's model store, registered with the head's own CLI.
    from modelpool.deployments.examples import build_examples

    archive = next(p for p in build_examples(cluster.local_home / "archives") if p.name == "iris-1.zip")
    synced = cluster.ray("rsync-up", str(cluster.config_path), str(archive), "~/.modelpool/model_store/iris-1.zip")
    assert synced.returncode == 0, cluster.explain(synced)
    registered = cluster.ray("exec", str(cluster.config_path),
                             "modelpool models register iris-1.zip --model-name iris --initial-workers 1 --synchronous")
    assert registered.returncode == 0, cluster.explain(registered)

    body = {"id": "up-1", "inputs": [{"name": "input-0", "shape": [len(ROWS), 4], "datatype": "FP64",
                                      "data": [x for row in ROWS for x in row]}]}
    answer = requests.post(f"{HTTP}/v2/models/iris/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model_name"] == "iris" and result["id"] == "up-1"
    assert result["outputs"][0]["data"] == [0, 2, 1], result
    assert answer.headers.get("x-modelpool-replica")
    for _ in range(5):  # a few more, one row each
        one = requests.post(f"{HTTP}/v2/models/iris/infer", timeout=30, json={
            "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROWS[1]}]})
        assert one.status_code == 200 and one.json()["outputs"][0]["data"] == [2], one.text

    management = {"Authorization": f"Bearer {(state / 'management_token').read_text().strip()}"}
    models = requests.get(f"{HTTP}/models", headers=management, timeout=10).json()["models"]
    assert [m["modelName"] for m in models] == ["iris"], models
    # The shipped object-store line reached modelpool on the node: the registry is there.
    assert any("iris" in str(p) for p in cluster.object_store.rglob("*") if p.is_file()), \
        sorted(str(p) for p in cluster.object_store.rglob("*"))

    # A head that ray up started listens on the network for its worker nodes: every such socket is in the README's
    # port table for a cluster.
    reachable = {address: owner for address, owner in listening_sockets(cluster_processes()).items()
                 if not is_loopback_host(address[0])}
    assert any(port == 6379 for _, port in reachable), f"the GCS is not reachable for worker nodes:\n{listing(reachable)}"
    missing = undocumented(reachable, table("A cluster"))
    assert not missing, f"reachable from other machines, but not in the README's port table:\n{listing(missing)}"

    down = cluster.down()
    assert down.returncode == 0, cluster.explain(down)
    rays, proxies = wait_until_gone()
    assert not rays, f"ray down left Ray processes: {rays}"
    assert not proxies, f"ray down left haproxy: {proxies}"
    print(f"ray up took {up_s:.0f}s")
