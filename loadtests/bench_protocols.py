"""Protocol benchmark: V2 over REST JSON, REST binary and gRPC on one modelpool cluster, in one run.

Every point is measured with the same C load generator (h2load: HTTP/1.1 for REST, HTTP/2 for gRPC),
each server configuration alternating round by round so machine noise hits all alike:

- iris, 1 row per request: c=1 p50 and c=64 req/s over REST JSON, REST binary and gRPC;
- 1,000 rows x 4 FP64 per request: REST binary against REST JSON (and gRPC), req/s at c=8;
- gRPC three ways: through the front (which reads the model from the message and sends the call to
  the replica's own gRPC port), straight to that port (no front: the front's routing hop is the
  difference), and through Serve's gRPC ingress with Serve's ``application`` header (the path every
  call took before replica ports, and the one the generic pool's models still take).

Usage: ``python -m loadtests.bench_protocols [--seconds 8] [--rounds 3] [--out results/bench_protocols.md]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from dataclasses import dataclass

import numpy as np

from loadtests.h2load import GRPC_HEADERS, grpc_frame, require_h2load, run_h2load
from loadtests.local_cluster import bench_cluster
from loadtests.report import publish
from loadtests.wrk import LoadResult

MODEL, VERSION, APP = "iris", "1", "model:iris:1"
ROW = [5.9, 3.0, 5.1, 1.8]
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC, GRPC_PORT, GRPC_SERVE = "gRPC (front)", "gRPC (replica port, no front)", "gRPC (Serve's ingress)"
_PORTS: dict[str, str] = {}


@dataclass(frozen=True)
class Target:
    """One way of sending the same request: URL, body and headers, over HTTP/1.1 or HTTP/2."""

    url: str
    body: bytes
    headers: tuple[str, ...] = ()
    http1: bool = True
    #: calls one connection may carry (0: no limit); a run that would pass it sends this many per connection
    #: instead of running for the duration. A replica port straight from h2load: zttp drops a connection
    #: after 4,096 streams (the front retires its connections before that; grpc_port.py)
    calls_per_connection: int = 0


def rest_json(rows: np.ndarray) -> tuple[bytes, tuple[str, ...]]:
    body = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    return json.dumps(body, separators=(",", ":")).encode(), ("content-type: application/json",)


def rest_binary(rows: np.ndarray) -> tuple[bytes, tuple[str, ...]]:
    """What tritonclient.http sends by default: binary input, binary outputs asked for."""
    data = np.ascontiguousarray(rows, "<f8").tobytes()
    header = json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
    return header + data, ("content-type: application/octet-stream", f"inference-header-content-length: {len(header)}")


def grpc_body(rows: np.ndarray) -> bytes:
    """What tritonclient.grpc sends: raw_input_contents."""
    from modelpool.deployments.protos import open_inference_pb2 as pb

    message = pb.ModelInferRequest(model_name=MODEL, model_version=VERSION,
                                   raw_input_contents=[np.ascontiguousarray(rows, "<f8").tobytes()])
    message.inputs.add(name="input-0", datatype="FP64", shape=rows.shape)
    return grpc_frame(message.SerializeToString())


def targets(cluster, rows: np.ndarray) -> dict[str, Target]:
    rest = f"{cluster.url}/v2/models/{MODEL}/versions/{VERSION}/infer"
    json_body, json_headers = rest_json(rows)
    binary_body, binary_headers = rest_binary(rows)
    return {
        "REST JSON": Target(rest, json_body, json_headers),
        "REST binary": Target(rest, binary_body, binary_headers),
        GRPC: Target(f"http://{cluster.grpc_target}{INFER_PATH}", grpc_body(rows), GRPC_HEADERS, False),
        GRPC_PORT: Target(f"http://{replica_port(cluster)}{INFER_PATH}", grpc_body(rows), GRPC_HEADERS, False,
                          calls_per_connection=4000),
        GRPC_SERVE: Target(f"http://{cluster.grpc_ingress_target}{INFER_PATH}", grpc_body(rows),
                           (*GRPC_HEADERS, f"application: {APP}"), False),
    }


def replica_port(cluster) -> str:
    """host:port of iris v1's replica gRPC port, as the front knows it (asked once, before any load)."""
    if APP not in _PORTS:
        from modelpool.cluster.runtime import connect  # first: it exports Ray's auth settings, read when ray is imported
        from modelpool.deployments.app_names import FRONT_APP, FRONT_DEPLOYMENT

        import ray
        from ray import serve

        async def registered() -> dict:
            front = serve.get_deployment_handle(FRONT_DEPLOYMENT, app_name=FRONT_APP)
            for _ in range(60):  # a handle outside a replica needs a running loop (Serve's throughput mode)
                table = await front.ports_table.remote()
                if table.get(APP):
                    return table
                await asyncio.sleep(0.5)
            raise RuntimeError(f"{APP}'s replica registered no gRPC port with the front")

        connect(cluster.ray_address)
        try:
            table = asyncio.run(registered())
        finally:
            ray.shutdown()
        _PORTS[APP] = sorted(table[APP].values())[0]
    return _PORTS[APP]


def check(cluster, rows: np.ndarray) -> None:
    """Every target answers right before any load (h2load counts a gRPC error as a 200)."""
    import grpc
    import requests

    from modelpool.deployments.protos import open_inference_pb2 as pb
    from modelpool.deployments.protos.service import InferenceStub

    for name, target in targets(cluster, rows).items():
        if target.http1:
            headers = dict(h.split(": ", 1) for h in target.headers)
            answer = requests.post(target.url, data=target.body, headers=headers, timeout=30)
            assert answer.status_code == 200, (name, answer.text[:300])
            continue
        address = target.url.removeprefix("http://").split("/", 1)[0]
        metadata = [tuple(h.split(": ", 1)) for h in target.headers if h.startswith("application")]
        with grpc.insecure_channel(address) as channel:
            reply = InferenceStub(channel).ModelInfer(pb.ModelInferRequest.FromString(target.body[5:]),
                                                      metadata=metadata, timeout=30)
        assert reply.model_version == VERSION and len(reply.raw_output_contents[0]) == 8 * len(rows), name


def measure(points: dict[str, Target], connections: int, seconds: float, rounds: int) -> dict[str, LoadResult]:
    """Median of ``rounds`` runs per target, targets alternating run by run."""
    runs: dict[str, list[LoadResult]] = {name: [] for name in points}
    for _ in range(rounds):
        for name, target in points.items():
            capped = target.calls_per_connection and connections == 1  # c=1 runs ~1,500 calls/s on one connection
            result = run_h2load(target.url, target.body, connections, seconds, headers=target.headers,
                                http1=target.http1, requests=target.calls_per_connection if capped else 0)
            runs[name].append(result)
            print(f"  {name:<16} c={connections:<3} {result.requests_per_s:>8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                  f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}", flush=True)
    return {name: LoadResult(statistics.median(r.requests_per_s for r in results),
                             statistics.median(r.p50_ms for r in results),
                             statistics.median(r.p99_ms for r in results), sum(r.errors for r in results))
            for name, results in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/bench_protocols.md")
    args = parser.parse_args()
    require_h2load()
    one, many = np.asarray([ROW]), np.tile(ROW, (1000, 1))
    with bench_cluster() as cluster:
        check(cluster, one)
        check(cluster, many)
        small = targets(cluster, one)
        print("iris, 1 row:", flush=True)
        c1 = measure(small, 1, args.seconds, args.rounds)
        c64 = measure(small, 64, args.seconds, args.rounds)
        print("1,000 rows x 4 FP64:", flush=True)
        big = measure({k: v for k, v in targets(cluster, many).items() if k != GRPC_PORT}, 8, args.seconds,
                      args.rounds)
    publish(report(c1, c64, big, args), args.out)


def report(c1: dict, c64: dict, big: dict, args: argparse.Namespace) -> str:
    lines = [f"h2load, {os.cpu_count()} cores, iris v1 (LogisticRegression) on its own replica; median of {args.rounds} "
             f"alternating runs of {args.seconds:g}s per point", "",
             "| request | protocol | c | req/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for c, results in ((1, c1), (64, c64)):
        for name, r in results.items():
            lines.append(f"| 1 row | {name} | {c} | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    for name, r in big.items():
        lines.append(f"| 1,000 x 4 FP64 | {name} | 8 | {r.requests_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    ratio = lambda a, b: a / max(b, 1e-9)  # noqa: E731
    lines += ["", "| ratio | value | goal |", "| --- | --- | --- |",
              f"| gRPC / REST JSON req/s, 1 row, c=64 | {ratio(c64[GRPC].requests_per_s, c64['REST JSON'].requests_per_s):.2f}x | >= 1x |",
              f"| gRPC / REST binary req/s, 1 row, c=64 | {ratio(c64[GRPC].requests_per_s, c64['REST binary'].requests_per_s):.2f}x | |",
              f"| gRPC (front) / gRPC (Serve's ingress) req/s, 1 row, c=64 | {ratio(c64[GRPC].requests_per_s, c64[GRPC_SERVE].requests_per_s):.2f}x | |",
              f"| REST binary / REST JSON req/s, 1,000 rows, c=8 | {ratio(big['REST binary'].requests_per_s, big['REST JSON'].requests_per_s):.2f}x | >= 2x |",
              f"| gRPC / REST JSON req/s, 1,000 rows, c=8 | {ratio(big[GRPC].requests_per_s, big['REST JSON'].requests_per_s):.2f}x | |",
              f"| routing hop at c=1: p50 through the front - straight to the port | {c1[GRPC].p50_ms - c1[GRPC_PORT].p50_ms:+.2f} ms | |",
              f"| routing hop at c=64: req/s through the front / straight to the port | {ratio(c64[GRPC].requests_per_s, c64[GRPC_PORT].requests_per_s):.2f}x | |",
              f"| p50 at c=1: gRPC / REST JSON | {ratio(c1[GRPC].p50_ms, c1['REST JSON'].p50_ms):.2f}x | |",
              f"| p50 at c=1: REST binary / REST JSON | {ratio(c1['REST binary'].p50_ms, c1['REST JSON'].p50_ms):.2f}x | |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
