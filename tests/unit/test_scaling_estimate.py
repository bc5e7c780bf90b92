"""The scaling estimate's arithmetic (loadtests/scaling_estimate.py): linear in the worker nodes until the head's
ingress, the controller or a node's network says otherwise, and each bound named where it bites."""
from __future__ import annotations

import dataclasses

import pytest

from loadtests.scaling_estimate import (Measured, NodeShape, controller_replica_limit, estimate, inputs_markdown,
                                       markdown)

MEASURED = Measured(replica_rps_per_vcpu=2_000, ingress_cpu_us_per_request=50, controller_per_replica=0.001,
                    controller_per_node=0.01, controller_base=0.05, gcs_per_replica=0.0005, gcs_per_node=0.005,
                    node_overhead=1.0, batch_rows_per_s_per_worker=2_000_000, batch_bytes_per_row=40,
                    wire_bytes_per_request=1_000)
SHAPE = NodeShape(head_vcpus=4, head_network_mbit_s=10_000, worker_vcpus=8, network_mbit_s=2_500, front_threads=4)


def test_serving_grows_with_the_nodes_until_the_heads_ingress_caps_it():
    one, four = estimate(MEASURED, SHAPE, 1), estimate(MEASURED, SHAPE, 4)
    assert (one.replicas, one.serving_rps, one.serving_limit) == (7, 14_000, "replicas")
    assert four.serving_rps == 4 * one.serving_rps
    many = estimate(MEASURED, SHAPE, 16)  # 112 replicas: 224k req/s wanted, the head's 4 vCPUs give ~56k
    assert many.serving_limit == "head ingress"
    head_free = 4 - many.controller_share - many.gcs_share - 1.0
    assert many.serving_rps == pytest.approx(head_free * 1e6 / 50)
    one_thread = estimate(MEASURED, dataclasses.replace(SHAPE, front_threads=1), 16)
    assert (one_thread.serving_rps, one_thread.serving_limit) == (pytest.approx(20_000), "head ingress")


def test_the_heads_network_caps_serving_when_it_fills_first():
    thin = dataclasses.replace(SHAPE, head_network_mbit_s=100)  # 12.5 MB/s a direction, 500 B a request each way
    row = estimate(MEASURED, thin, 4)
    assert (row.serving_rps, row.serving_limit) == (pytest.approx(25_000), "head network")


def test_the_control_plane_grows_per_replica_and_per_node():
    row = estimate(MEASURED, SHAPE, 4)
    assert row.controller_share == pytest.approx(0.05 + 0.001 * 28 + 0.01 * 5)
    assert row.gcs_share == pytest.approx(0.0005 * 28 + 0.005 * 5)
    assert controller_replica_limit(MEASURED, 4) == int((0.5 - 0.05 - 0.05) / 0.001)
    assert controller_replica_limit(dataclasses.replace(MEASURED, controller_per_replica=0), 4) is None


def test_batch_grows_with_the_nodes_until_a_nodes_network_is_full():
    row = estimate(MEASURED, SHAPE, 1)  # 7 workers x 2M rows/s x 40 B = 560 MB/s, over 2.5 Gbit/s = 312 MB/s
    assert row.batch_limit == "network"
    assert row.batch_rows_per_s == pytest.approx(2_500e6 / 8 / 40)
    slow = dataclasses.replace(MEASURED, batch_rows_per_s_per_worker=500_000)
    assert estimate(slow, SHAPE, 16).batch_limit == "workers"
    assert estimate(slow, SHAPE, 16).batch_rows_per_s == 16 * 7 * 500_000


def test_the_tables_carry_every_input_and_one_row_per_node_count():
    text = markdown(MEASURED, SHAPE, (1, 4))
    assert all(f"| {field.name} |" in inputs_markdown(MEASURED) for field in dataclasses.fields(Measured))
    assert "\n| 1 | 7 | 14,000 | replicas |" in text and "\n| 4 | 28 | 56,000 | replicas |" in text
