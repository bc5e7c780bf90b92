"""The model apps' autoscaling policy, fed Serve's own AutoscalingContext: both paths' requests count."""
from __future__ import annotations

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from modelpool.deployments.autoscaling import ongoing_on_both_paths
from modelpool.deployments.announced_port import IN_FLIGHT_METRIC


def context(running: int, serve_ongoing: float, port_in_flight: list[float]) -> AutoscalingContext:
    deployment = DeploymentID(name="iris_v1", app_name="model:iris:1")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=deployment) for i in range(running)]
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="iris_v1", app_name="model:iris:1", current_num_replicas=running,
        target_num_replicas=running, running_replicas=replicas, total_num_requests=serve_ongoing,
        total_queued_requests=0, aggregated_metrics={IN_FLIGHT_METRIC: dict(zip(replicas, port_in_flight))},
        raw_metrics={}, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=2))


def test_grpc_calls_on_replica_ports_count_like_serves_own_requests():
    assert ongoing_on_both_paths(context(2, 4, [0, 0]))[0] == 2, "Serve's requests alone: at target"
    assert ongoing_on_both_paths(context(2, 0, [4, 4]))[0] == 4, "gRPC-only load scales up too"
    assert ongoing_on_both_paths(context(2, 4, [2, 2]))[0] == 4, "the two paths add up"
    assert ongoing_on_both_paths(context(2, 1, []))[0] == 0.5, "replicas not yet reporting count as idle"


def test_no_running_replica_keeps_the_target():
    assert ongoing_on_both_paths(context(0, 0, []))[0] == 0
