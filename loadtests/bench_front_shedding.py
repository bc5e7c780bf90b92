"""The front's load shedding in isolation (issue 18): accepted latency at 1x, 4x and 8x a replica's capacity.

A real front (``deployments.front.Front``: HAProxy with modelpool's configuration) before one real replica port
(``ReplicaPort`` with modelpool's REST entry) whose answer takes ``--service-ms`` (an asyncio sleep: a model whose
time is not CPU), with a limit of ``--limit`` calls in flight. No Ray, no model, no batching: what is measured is the
front's counting and refusing, not the machine's CPU, which ``bench_overload`` shares with Ray, the replicas and
the load generator on 2 cores.

wrk's connections honour ``Retry-After`` as modelpool's SDK does (``bench_overload``'s script). Reported per
concurrency: answered req/s, refusals, wrk's p50/p99 (refusals are under 1% of answers, so this is the accepted
calls' latency), the most calls the replica held at once, and p99 against p99 at the limit's own concurrency.

``python -m loadtests.bench_front_shedding [--limit 16] [--service-ms 10] [--seconds 5]``
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from contextlib import contextmanager
from typing import Iterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loadtests.bench_overload import WrkRun, run_wrk
from loadtests.port_on_its_loop import PortOnItsLoop
from loadtests.wrk import require_wrk
from modelpool.cluster.net import free_port
from modelpool.deployments.front import Front

APP = "model:iris:1"
MULTIPLES = (1, 4, 8)


class TimedReplica(PortOnItsLoop):
    """A replica port whose every answer takes ``service_s``; it counts the calls it holds."""

    def __init__(self, service_s: float) -> None:
        self.holding = 0
        self.most = 0

        async def answer(request: Request) -> Response:
            await request.body()
            self.holding += 1
            self.most = max(self.most, self.holding)
            try:
                await asyncio.sleep(service_s)
            finally:
                self.holding -= 1
            return JSONResponse({"model_name": "iris"})

        super().__init__(answer, "/v2/models/iris", APP)


@contextmanager
def front_before(replica: TimedReplica, limit: int) -> Iterator[str]:
    """A front routing ``iris`` to ``replica`` with ``limit`` calls in flight; yields its URL."""
    port = free_port()
    # nothing is served by Serve here: every call goes to the replica's port (a closed port stands for Serve)
    front = Front({"host": "127.0.0.1", "http_port": port, "http_upstream": f"127.0.0.1:{free_port()}",
                   "timeout_s": 30}, 1, "management", "generic-pool")
    try:
        front.register(APP, "replica", replica.address)
        front.reconfigure({"routes": {"iris/": APP}, "limits": {APP: limit}})
        yield f"http://127.0.0.1:{port}/v2/models/iris/infer"
    finally:
        front.__del__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--service-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    require_wrk()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the port's access log: a line per request
    replica = TimedReplica(args.service_ms / 1000)
    try:
        with front_before(replica, args.limit) as url:
            run_wrk(url, args.limit, 2)  # warm
            runs: list[tuple[WrkRun, int]] = []
            for multiple in MULTIPLES:
                replica.most = 0
                runs.append((run_wrk(url, multiple * args.limit, args.seconds), replica.most))
            base = runs[0][0].p99_ms
            print(f"| concurrency | answered req/s | refused | p50 ms | p99 ms | p99 / p99 at {args.limit} | most held |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for run, most in runs:
                print(f"| {run.connections} | {run.ok_per_s:,.0f} | {run.shed:,} | {run.p50_ms:.1f} | {run.p99_ms:.1f} | "
                      f"{run.p99_ms / base:.2f}x | {most} |")
    finally:
        replica.close()


if __name__ == "__main__":
    main()
