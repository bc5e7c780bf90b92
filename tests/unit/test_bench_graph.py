"""loadtests.bench_graph's pure parts: the graph it PUTs passes the graph checks, its transformers change nothing,
and its two figures come out of the runs as medians and as paired per-round values (no Ray)."""
import argparse

import numpy as np
import pytest

from loadtests.bench_graph import ROLES, chain, figures, report
from loadtests.wrk import LoadResult
from modelpool.management.graph_spec import check_graph, parse_graph


def test_the_chain_is_a_valid_seldon_graph_over_iris_version_1():
    spec = parse_graph("iris_graph", {"graph": chain()})
    roles = {("identity_in", None): "TRANSFORMER", ("identity_out", None): "TRANSFORMER", ("iris", "1"): "MODEL"}
    check_graph(spec, lambda model, version: roles.get((model, version)), {})
    assert [node.name for node in spec.nodes()] == ["in", "model", "out"]
    assert spec.models() == {("identity_in", None), ("iris", "1"), ("identity_out", None)}


def test_the_transformers_change_nothing():
    namespace: dict = {}
    exec(ROLES, namespace)  # noqa: S102 - the benchmark's own archive source
    rows = np.asarray([[5, 3, 5, 2]])
    moved = namespace["AsFloat"]().transform_input(rows, [])
    assert moved.dtype == float and moved.tolist() == rows.tolist()
    out = np.asarray([2])
    assert namespace["Same"]().transform_output(out, []) is out


def run(rps: float, p50: float, errors: int = 0) -> LoadResult:
    return LoadResult(rps, p50, p50 * 3, errors)


def test_figures_are_medians_and_paired_rounds():
    runs = {"model": {1: [run(1000, 1.0), run(900, 1.5), run(1100, 0.9)],
                      64: [run(3000, 20), run(2000, 30), run(3300, 19)]},
            "graph": {1: [run(500, 1.8), run(450, 2.7), run(550, 1.6)],
                      64: [run(2400, 26), run(1000, 60), run(2640, 24)]}}
    found = figures(runs)
    assert found.c1_p50_delta_ms == pytest.approx(1.8 - 1.0)
    assert found.c1_p50_deltas_ms == pytest.approx([0.8, 1.2, 0.7])
    assert found.c1_paired_delta_ms == pytest.approx(0.8)
    assert found.c64_rps_ratio == pytest.approx(2400 / 3000)
    assert found.c64_rps_ratios == pytest.approx([0.8, 0.5, 0.8])
    assert found.c64_paired_ratio == pytest.approx(0.8)
    assert found.c64_met and found.c1_met

    table = report(runs, "/v2/models/iris/infer", argparse.Namespace(rounds=3, seconds=8))
    assert "| graph p50 - model p50 at c=1 | +0.80 ms | +0.80 ms | +0.80, +1.20, +0.70 | <= +1 ms | yes |" in table
    assert "| graph / model req/s at c=64 | 0.80x | 0.80x | 0.80, 0.50, 0.80 | >= 0.7x | yes |" in table
