"""`modelpool start` against a machine where it cannot start: one line naming the cause and the fix, at once, and
the running cluster untouched. And what a successful start prints about addresses is what the cluster listens on."""
from __future__ import annotations

import re
import time

import pytest

from tests.listening import cluster_processes, listening_sockets, listing

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_starting_again_says_the_cluster_runs_and_the_first_keeps_serving(cluster, http):
    clock = time.monotonic()
    again = cluster.cli("start", check=False)
    took = time.monotonic() - clock
    assert again.returncode == 1, again.stdout + again.stderr
    assert took < 5, f"refused after {took:.1f}s"  # a Python start-up and a connect; the checks take milliseconds
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1, again.stderr
    assert f"modelpool is already running at {cluster.url} (Ray at {cluster.address}" in lines[0]
    assert "`modelpool status`" in lines[0] and "`modelpool stop`" in lines[0]
    assert again.stdout == "", "nothing started, so no progress either"
    assert http.get(f"{cluster.url}/v2/health/ready").status_code == 200
    inference = http.post(f"{cluster.url}/v2/models/iris/infer", json=ROW)
    assert inference.status_code == 200, inference.text


def test_every_address_start_printed_is_one_the_cluster_listens_on(cluster):
    printed = {(host, int(port)) for host, port in re.findall(r"(?<![\d.])(\d+\.\d+\.\d+\.\d+):(\d+)",
                                                              cluster.start_output)}
    expected = {("127.0.0.1", int(cluster.env[f"MODELPOOL_{name}_PORT"])) for name in ("HTTP", "GRPC", "RAY")}
    assert expected <= printed, f"the front, gRPC and Ray's addresses are printed:\n{cluster.start_output}"
    sockets = listening_sockets(cluster_processes())
    bound = {(host.removeprefix("::ffff:"), port) for host, port in sockets}
    wildcard = {port for host, port in bound if host in ("0.0.0.0", "::")}
    missing = {(host, port) for host, port in printed if (host, port) not in bound and port not in wildcard}
    assert not missing, f"printed {sorted(missing)}, which nothing listens on:\n{listing(sockets)}"
