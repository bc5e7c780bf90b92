"""Load shedding in the front, with a real HAProxy: past what a model's replicas may hold between them, a call is
refused at once (429 with Retry-After, or RESOURCE_EXHAUSTED over gRPC) before any replica reads it, the
limit follows the replicas registered and the limits management sends, and every refusal is counted.

The replicas are real ports (``ReplicaPort`` with a REST app whose ``/slow`` path holds a call for a while, and a
grpcio server whose ModelInfer does the same), so a burst really holds calls in flight while the next arrive.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from typing import Iterator

import grpc
import httpx
import pytest

from modelpool.cluster.net import free_port
from modelpool.deployments.front import Front
from modelpool.deployments.front_config import LIMIT_FIELD, app_limits, read_shed_counts
from modelpool.deployments.protos import open_inference_pb2 as pb
from tests.unit.test_front_http import APP, SLOW_S, Replica, ServeIngress

SLOW_PATH = "/v2/models/iris/slow"
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def serve_ingress() -> Iterator[ServeIngress]:
    ingress = ServeIngress()
    yield ingress
    ingress.close()


class SlowGrpcReplica:
    """A replica's gRPC port: ModelInfer holds each call ``SLOW_S`` seconds, then answers empty."""

    def __init__(self) -> None:
        class Slow(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails):
                def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
                    time.sleep(SLOW_S)
                    return b""

                return grpc.unary_unary_rpc_method_handler(answer)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((Slow(),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{port}"

    def close(self) -> None:
        self.server.stop(0)


@pytest.fixture()
def front(serve_ingress: ServeIngress) -> Iterator[tuple[Front, str, str]]:
    """A front with HTTP and gRPC listeners; its routes send ``iris`` to ``APP``. Yields (front, http url, grpc)."""
    http_port, grpc_port = free_port(), free_port()
    front = Front({"host": "127.0.0.1", "http_port": http_port, "http_upstream": f"127.0.0.1:{serve_ingress.port}",
                   "grpc_port": grpc_port, "grpc_upstream": "127.0.0.1:9", "timeout_s": 10},
                  1, "management", "generic-pool")
    try:
        yield front, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        front.__del__()


def limit(front: Front, per_replica: int) -> None:
    front.reconfigure({"routes": {"iris/": APP, "iris/1": APP}, "limits": {APP: per_replica}})


@contextmanager
def serving(front: Front, per_replica: int, names: tuple[str, ...] = ("a",)) -> Iterator[list[Replica]]:
    """REST replicas registered for ``APP`` under ``names``, ``per_replica`` calls in flight each; closed after."""
    replicas = [Replica(f"replica-{name}") for name in names]
    try:
        for name, replica in zip(names, replicas):
            front.register(APP, name, replica.address)
        limit(front, per_replica)
        yield replicas
    finally:
        for replica in replicas:
            replica.close()


async def _burst(url: str, count: int, path: str = SLOW_PATH, method: str = "POST"):
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=count), timeout=30) as client:
        async def one():
            started = time.monotonic()
            answer = await client.request(method, path, content=b"{}")
            return answer, time.monotonic() - started

        return await asyncio.gather(*(one() for _ in range(count)))


def burst(url: str, count: int, **kwargs):
    return asyncio.run(_burst(url, count, **kwargs))


def test_app_limits_multiply_the_per_replica_limit_by_the_registered_ports():
    ports = {APP: {"a": "127.0.0.1:1", "b": "127.0.0.1:2"}, "model:other:1": {"c": "127.0.0.1:3"},
             "model:free:1": {"d": "127.0.0.1:4"}}
    assert app_limits(ports, {APP: 5, "model:other:1": 3, "model:none:1": 9}) == {APP: "10", "model:other:1": "3"}
    assert app_limits({APP: {}}, {APP: 5}) == {}, "no port, no limit: such calls go to Serve, which has its own"


def test_read_shed_counts_parses_haproxys_table_dump():
    dump = ("# table: shed_rest, type: string, size:10240, used:2\n"
            "0x55d0: key=model:iris:1 use=0 exp=0 shard=0 gpc0=7\n"
            "0x55d1: key=model:wine:2 use=1 exp=0 shard=0 gpc0=0\n\n")
    assert read_shed_counts(dump) == {"model:iris:1": 7, "model:wine:2": 0}


def test_a_burst_past_the_limit_is_refused_at_once_and_the_calls_taken_are_answered(front):
    process, url, _ = front
    with serving(process, 3):
        answers = burst(url, 10)
        taken = [(a, took) for a, took in answers if a.status_code == 200]
        refused = [(a, took) for a, took in answers if a.status_code == 429]
        assert len(taken) == 3 and len(refused) == 7, sorted(a.status_code for a, _ in answers)
        for answer, took in refused:
            assert took < SLOW_S / 2, f"a refusal does not wait for the calls in flight: {took:.2f} s"
            assert answer.headers["retry-after"] == "1"
            assert answer.headers["content-type"] == "application/json"
            body = answer.json()
            assert body["field"] == LIMIT_FIELD
            assert "model 'iris' is at its limit: 3 calls in flight" in body["error"] and "add workers" in body["error"]
        assert all(took >= SLOW_S for _, took in taken), "the calls taken reached the replica and were answered"
        counts = process.front.shed_counts()
        assert counts["rest"] == {APP: 7} and counts["grpc"] == {}
        # the calls in flight ended: the count went back down, and the next call is taken
        assert client_status(url) == 200


def client_status(url: str, path: str = SLOW_PATH, method: str = "POST") -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.request(method, path, content=b"{}").status_code


def test_reads_are_never_refused_and_do_not_count(front):
    process, url, _ = front
    with serving(process, 1):
        holding = threading.Thread(target=client_status, args=(url,))
        holding.start()
        time.sleep(0.3)
        assert client_status(url, "/v2/models/iris/ready", "GET") == 200, "readiness is answered while full"
        assert client_status(url, "/v2/models/iris/infer") == 429, "the one call allowed is in flight"
        holding.join()
        assert client_status(url, "/v2/models/iris/infer") == 200


def test_the_limit_follows_the_replicas_and_the_limits_management_sends(front):
    process, url, _ = front
    with serving(process, 2) as replicas:
        replicas.append(Replica("replica-b"))
        assert sorted(a.status_code for a, _ in burst(url, 6)).count(200) == 2
        process.register(APP, "b", replicas[1].address)
        assert sorted(a.status_code for a, _ in burst(url, 6)).count(200) == 4, "two replicas hold twice as many"
        process.reconfigure({"routes": {"iris/": APP}, "limits": {}})
        assert [a.status_code for a, _ in burst(url, 6)] == [200] * 6, "no limit (max_queued_requests -1): all wait"
        limit(process, 1)
        process.unregister(APP, "b")
        assert sorted(a.status_code for a, _ in burst(url, 4)).count(200) == 1, "seen by the very next burst"


def test_a_grpc_infer_past_the_limit_is_resource_exhausted_at_once(front):
    process, _, grpc_address = front
    replica = SlowGrpcReplica()
    try:
        process.register(APP, "a", replica.address)
        limit(process, 2)
        request = pb.ModelInferRequest(model_name="iris").SerializeToString()
        with grpc.insecure_channel(grpc_address) as channel:
            infer = channel.unary_unary(INFER)

            def one():
                started = time.monotonic()
                try:
                    infer(request, timeout=30)
                    return grpc.StatusCode.OK, "", time.monotonic() - started
                except grpc.RpcError as error:
                    return error.code(), error.details(), time.monotonic() - started

            with futures.ThreadPoolExecutor(6) as pool:
                outcomes = list(pool.map(lambda _: one(), range(6)))
        codes = [code for code, _, _ in outcomes]
        assert codes.count(grpc.StatusCode.OK) == 2 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 4, codes
        for code, details, took in outcomes:
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "model 'iris' is at its limit: 2 calls in flight" in details and took < SLOW_S / 2
        assert process.front.shed_counts()["grpc"] == {APP: 4}
    finally:
        replica.close()
