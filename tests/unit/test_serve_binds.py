"""A replica on a loopback node binds the gRPC servers Serve asks for on every interface to loopback instead.

The pinning runs in a fresh interpreter (it changes gRPC's server classes for the whole process), which then binds
both kinds of gRPC server as Serve does (``[::]:0``) and reports where the kernel says they listen."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelpool.cluster.net import is_loopback_host
from modelpool.deployments.serve_binds import pin_grpc_binds, pinned_address

BIND_AS_SERVE_DOES = """
import asyncio, json, sys
from concurrent import futures
import grpc, psutil
from modelpool.deployments.serve_binds import pin_grpc_binds
pinned = pin_grpc_binds(sys.argv[1])
pin_grpc_binds(sys.argv[1])  # twice: the same single wrapper
async def main():
    aio = grpc.aio.server()
    aio_port = aio.add_insecure_port("[::]:0")
    sync = grpc.server(futures.ThreadPoolExecutor(1))
    sync_port = sync.add_insecure_port("[::]:0")
    listening = {c.laddr.port: c.laddr.ip for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN"}
    print(json.dumps({"pinned": pinned, "aio": listening[aio_port], "sync": listening[sync_port]}))
asyncio.run(main())
"""


def bind_in_fresh_process(node_ip: str) -> dict:
    out = subprocess.run([sys.executable, "-c", BIND_AS_SERVE_DOES, node_ip], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("address, pinned", [("[::]:0", "127.0.0.1:0"), ("0.0.0.0:40001", "127.0.0.1:40001"),
                                             ("[::]:9500", "127.0.0.1:9500"), ("10.0.0.5:40001", "10.0.0.5:40001"),
                                             ("127.0.0.1:8000", "127.0.0.1:8000"), ("unix:/tmp/x.sock", "unix:/tmp/x.sock")])
def test_only_a_wildcard_host_is_replaced(address, pinned):
    assert pinned_address(address, "127.0.0.1") == pinned


def test_an_ipv6_node_address_is_bracketed():
    assert pinned_address("[::]:0", "::1") == "[::1]:0"


def test_on_a_loopback_node_every_interface_becomes_loopback_for_both_grpc_servers():
    answer = bind_in_fresh_process("127.0.0.1")  # gRPC's socket is dual-stack: it shows as ::ffff:127.0.0.1
    assert answer["pinned"] is True and is_loopback_host(answer["aio"]) and is_loopback_host(answer["sync"]), answer


def test_on_a_node_with_a_network_address_nothing_changes():
    answer = bind_in_fresh_process("192.0.2.10")
    assert answer["pinned"] is False and answer["aio"] == answer["sync"] == "::"


def test_outside_a_ray_worker_nothing_is_pinned():
    assert pin_grpc_binds() is False


def test_serve_calls_the_proxy_callback_that_start_sets_and_takes_its_answer():
    from ray.serve._private.http_util import validate_http_proxy_callback_return
    from ray._common.utils import import_attr
    from ray.serve._private.utils import call_function_from_import_path

    from modelpool.cluster.ray_loopback import PROXY_CALLBACK, PROXY_CALLBACK_SETTING, head_environment
    from modelpool.deployments import serve_binds

    assert import_attr(PROXY_CALLBACK) is serve_binds.proxy_started, "the head's environment names this callback"
    assert head_environment()[PROXY_CALLBACK_SETTING] == PROXY_CALLBACK
    assert head_environment({PROXY_CALLBACK_SETTING: "mine.callback"})[PROXY_CALLBACK_SETTING] == "mine.callback"
    assert validate_http_proxy_callback_return(call_function_from_import_path(PROXY_CALLBACK)) == [], "no middleware added"
