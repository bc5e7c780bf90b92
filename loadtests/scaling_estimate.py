"""What a cluster of N machines would serve, estimated from per-node figures measured on one machine (issue 21).

A pure model, no Ray: ``loadtests/bench_control_plane.py`` measures the inputs and prints the estimate;
BENCHMARKS.md "Many machines: a scaling estimate" holds a run and what it means.

How it counts, and where it stops being linear:
- **Serving** grows with the worker nodes: each runs replicas on its vCPUs, less what Ray's own processes on a
  node take, at the req/s one replica serves per vCPU it spends (measured at c=64). Every request also crosses
  the front on the head (cluster.yaml: clients reach the head's 8000 only), whose HAProxy spends a measured CPU
  time on each, on as many threads as ``--grpc-workers`` gives it (default 1), within the head's vCPUs less the
  control plane's; and the head's network carries each request and answer twice (client and replica legs).
- **The control plane** lives on the head: Serve's controller (one Python process, one core at most) and the
  GCS each cost a measured share of a core per replica and per node. Past ``CONTROLLER_BUSY`` of its core the
  controller's 0.5 s loop runs late: health checks, autoscaling decisions and deploys slow down.
- **Batch scoring** grows with the worker nodes at the measured rows/s of one worker per vCPU, until a node's
  network cannot carry the Parquet it reads and writes from object storage (``NodeShape.network_mbit_s``, the
  instance's baseline bandwidth, not its burst).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

#: The share of its one core at which Serve's controller is called saturated: its loop (every 0.5 s) starts to
#: overrun, so health checks and autoscaling run late. Half a core leaves room for deploys, which come in bursts.
CONTROLLER_BUSY = 0.5


@dataclass(frozen=True)
class Measured:
    """Per-node figures measured on this machine (``bench_control_plane``); CPU in shares of one vCPU."""

    replica_rps_per_vcpu: float         # req/s a replica serves per vCPU of its own CPU time, at c=64
    ingress_cpu_us_per_request: float   # the front's HAProxy CPU per request
    controller_per_replica: float       # Serve controller's CPU share per running replica
    controller_per_node: float          # ... per node (its proxy, health checks)
    controller_base: float              # ... with one node and the management app alone
    gcs_per_replica: float              # the GCS's CPU share per replica (an actor each)
    gcs_per_node: float                 # ... per node (health checks, resource reports)
    node_overhead: float                # Ray's processes on a worker node at rest (raylet, agents), vCPUs
    batch_rows_per_s_per_worker: float  # one batch worker scoring iris Parquet, local object store
    batch_bytes_per_row: float          # Parquet read and written per row (input + results)
    wire_bytes_per_request: float       # bytes on the wire per request, both legs (client-front, front-replica)


@dataclass(frozen=True)
class NodeShape:
    """cluster.yaml's instance types (AWS's published figures)."""

    head_vcpus: int = 4                 # m5.xlarge
    head_network_mbit_s: float = 1_250.0  # m5.xlarge's baseline bandwidth ("up to 10 Gbit/s" is a burst)
    worker_vcpus: int = 8               # c5.2xlarge
    network_mbit_s: float = 2_500.0     # c5.2xlarge's baseline bandwidth
    front_threads: int = 1              # the front HAProxy's threads: --grpc-workers (default 1)


@dataclass(frozen=True)
class Estimate:
    nodes: int
    replicas: int
    serving_rps: float
    serving_limit: str                  # what bounds it: "replicas", "head ingress" or "head network"
    controller_share: float             # of its core
    gcs_share: float
    batch_rows_per_s: float
    batch_limit: str                    # "workers" or "network"


def estimate(measured: Measured, shape: NodeShape, nodes: int) -> Estimate:
    """The cluster of ``nodes`` worker nodes (plus the head), every worker vCPU given to one model's replicas for
    serving, or to batch workers for scoring."""
    usable = max(shape.worker_vcpus - measured.node_overhead, 0.0)
    replicas = int(usable) * nodes
    by_replicas = replicas * measured.replica_rps_per_vcpu
    controller = (measured.controller_base + measured.controller_per_replica * replicas
                  + measured.controller_per_node * (nodes + 1))
    gcs = measured.gcs_per_replica * replicas + measured.gcs_per_node * (nodes + 1)
    head_free = max(shape.head_vcpus - min(controller, 1.0) - gcs - measured.node_overhead, 0.0)
    by_ingress = min(head_free, shape.front_threads) * 1e6 / measured.ingress_cpu_us_per_request
    # each direction of the head's link carries about half the bytes of a request's two legs
    by_network = shape.head_network_mbit_s * 1e6 / 8 / (measured.wire_bytes_per_request / 2)
    serving, serving_limit = min((by_replicas, "replicas"), (by_ingress, "head ingress"),
                                 (by_network, "head network"))
    per_node_rows = int(usable) * measured.batch_rows_per_s_per_worker
    network_rows = shape.network_mbit_s * 1e6 / 8 / measured.batch_bytes_per_row
    batch_limit = "workers" if per_node_rows <= network_rows else "network"
    return Estimate(nodes, replicas, serving, serving_limit, controller, gcs,
                    min(per_node_rows, network_rows) * nodes, batch_limit)


def controller_replica_limit(measured: Measured, nodes: int) -> Optional[int]:
    """Replicas at which the controller reaches ``CONTROLLER_BUSY`` of its core on ``nodes`` worker nodes."""
    if measured.controller_per_replica <= 0:
        return None
    spare = CONTROLLER_BUSY - measured.controller_base - measured.controller_per_node * (nodes + 1)
    return max(int(spare / measured.controller_per_replica), 0)


def inputs_markdown(measured: Measured) -> str:
    lines = ["| input (measured here) | value |", "| --- | --- |"]
    return "\n".join(lines + [f"| {name} | {value:,.4g} |" for name, value in asdict(measured).items()])


def markdown(measured: Measured, shape: NodeShape, node_counts: tuple[int, ...] = (1, 4, 16, 64)) -> str:
    """The estimate for each node count, as a BENCHMARKS.md table."""
    lines = ["| worker nodes | replicas | serving req/s | bound by | controller (of a core) | GCS (of a core) "
              "| batch rows/s | bound by |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for nodes in node_counts:
        row = estimate(measured, shape, nodes)
        lines.append(f"| {nodes} | {row.replicas} | {row.serving_rps:,.0f} | {row.serving_limit} | "
                     f"{row.controller_share:.0%} | {row.gcs_share:.0%} | {row.batch_rows_per_s:,.0f} | "
                     f"{row.batch_limit} |")
    return "\n".join(lines)
