"""The autoscaling policy of model apps: Serve's own rule over the requests of both paths.

Serve scales a deployment on the requests ongoing at its replicas, as it counts them. gRPC calls
that the front sends straight to a replica's own port (``replica_port``) never pass Serve's request
path, so each replica reports them itself (``record_autoscaling_stats``, averaged by Serve over the
look-back period) and this policy adds them to Serve's count. The rest is Serve's default rule:
desired replicas = running x ongoing / (target_ongoing_requests x running); Serve then applies
min/max replicas, the scaling factors and the up/down-scale delays as for any custom policy.
"""
from __future__ import annotations

from typing import Any

from modelpool.deployments.announced_port import IN_FLIGHT_METRIC

POLICY = f"{__name__}:ongoing_on_both_paths"


def ongoing_on_both_paths(ctx: Any) -> tuple[float, dict]:
    """``ctx``: Serve's AutoscalingContext (only the fields read here are needed)."""
    running = ctx.current_num_replicas
    if running == 0:
        return ctx.target_num_replicas, {}
    port_calls = sum((ctx.aggregated_metrics or {}).get(IN_FLIGHT_METRIC, {}).values())
    ongoing = ctx.total_num_requests + port_calls
    return running * ongoing / (ctx.config.get_target_ongoing_requests() * running), {}
