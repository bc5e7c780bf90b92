"""Client benchmark: quick management calls on one persistent session vs a new connection per call.

200 calls alternating ``describe_model("iris", "1")`` and ``list_models()`` against a local
cluster, made by the sync client and the async client, each way, rounds interleaved so machine
noise hits both alike. The persistent way is ``with Client(...) as c:`` (one keep-alive
connection, headers and TLS set once); the other is the same client outside a ``with`` (a new
session and connection per call), which is what a script calling ``requests.get`` in a loop gets.

Two transports: plain HTTP on loopback (a connection costs almost nothing there) and HTTPS through
a TLS-terminating HAProxy in front of the cluster, as clients of a real cluster reach it.

Usage: ``python -m loadtests.bench_client [--calls 200] [--rounds 5] [--out results/bench_client.md]``
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Callable, Union

from loadtests.local_cluster import bench_cluster
from loadtests.report import publish
from loadtests.tls_front import tls_front
from modelpool.async_client import AsyncClient
from modelpool.client import Client


TRANSPORTS = ("http", "https")


def sync_calls(client: Client, calls: int) -> None:
    for i in range(calls):
        if i % 2:
            client.list_models()
        else:
            client.describe_model("iris", "1")


async def async_calls(client: AsyncClient, calls: int) -> None:
    for i in range(calls):
        if i % 2:
            await client.list_models()
        else:
            await client.describe_model("iris", "1")


def ways(transport: str, url: str, token: str, calls: int, verify: Union[bool, str] = True) -> dict[str, Callable[[], None]]:
    def sync_persistent() -> None:
        with Client(url, token=token, verify=verify) as client:
            sync_calls(client, calls)

    def sync_per_call() -> None:
        sync_calls(Client(url, token=token, verify=verify), calls)

    def async_persistent() -> None:
        async def run() -> None:
            async with AsyncClient(url, token=token, verify=verify) as client:
                await async_calls(client, calls)
        asyncio.run(run())

    def async_per_call() -> None:
        asyncio.run(async_calls(AsyncClient(url, token=token, verify=verify), calls))

    return {f"{transport}, sync, one session": sync_persistent,
            f"{transport}, sync, connection per call": sync_per_call,
            f"{transport}, async, one session": async_persistent,
            f"{transport}, async, connection per call": async_per_call}


def measure(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    for run in runs.values():  # warm up: imports, caches, the server's first requests
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def report(seconds: dict[str, list[float]], calls: int, rounds: int) -> str:
    median = {name: statistics.median(values) for name, values in seconds.items()}
    lines = [f"{calls} management calls (describe iris 1 / list models, alternating), median of {rounds} interleaved rounds",
             "", "| client | seconds | ms per call |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s:.2f} | {s / calls * 1000:.2f} |" for name, s in median.items()]
    lines += ["", "| ratio (connection per call / one session) | value | target |", "| --- | --- | --- |"]
    for transport in TRANSPORTS:
        for kind in ("sync", "async"):
            ratio = median[f"{transport}, {kind}, connection per call"] / median[f"{transport}, {kind}, one session"]
            target = ">= 2x" if transport == "https" else "(loopback: a connection is nearly free)"
            lines.append(f"| {transport}, {kind} client | {ratio:.2f}x | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="results/bench_client.md")
    args = parser.parse_args()
    with bench_cluster() as cluster, tls_front(cluster.url) as (https_url, ca):
        runs = {**ways("http", cluster.url, cluster.token, args.calls),
                **ways("https", https_url, cluster.token, args.calls, verify=str(ca))}
        seconds = measure(runs, args.rounds)
    publish(report(seconds, args.calls, args.rounds), args.out)


if __name__ == "__main__":
    main()
