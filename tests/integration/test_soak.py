"""The soak run for a minute against the package's cluster: the same targets as ``make soak``'s ten minutes.

``loadtests.soak.run`` with the 60 s plan (``loadtests.soak_schedule.plan_for(60)``): 8 clients at 10 requests per
second each (V2 JSON, V2 binary, plain JSON, gRPC), iris v1 scaled up at 15 s and back down at 30 s, a batch job
of iris_report at 20 s and at 40 s, one iris v1 replica killed with SIGKILL at 27.5 s; RSS and descriptors of every
process of the cluster sampled every 5 s. Asserted: failures under 0.05% outside the grace window, every batch job
Complete, no long-lived process growing (RSS under 10%, descriptors not at all) after the first 12 s, and nothing
of the finished jobs left in the object store that should be gone.

Without the management kill: in a run this short its 30 s grace window would cover every management call after it,
so it would show little, and its new replica would be too young to be judged. It would also reach past this test:
the replacement reconciles the registry with Serve in the background and answers /v2/health/ready 503 until it
has, so the package's later tests would race its start. ``make soak`` (a cluster of its own) kills it, and
tests/multinode/test_faults.py covers it under load.
"""
from __future__ import annotations

import pytest

from loadtests.soak import Target, run, write
from loadtests.soak_markdown import verdict_lines
from loadtests.soak_schedule import plan_for

pytestmark = pytest.mark.integration


def test_a_minute_of_load_and_chaos_fails_nothing_and_leaks_nothing(cluster, tmp_path):
    target = Target(url=cluster.url, token=cluster.token, ray_port=int(cluster.address.rsplit(":", 1)[1]),
                    grpc_target=cluster.grpc_target, cache_dir=cluster.home / "cache",
                    objects_dir=cluster.env.get("MODELPOOL_OBJECT_STORE") or str(cluster.home / "objects"))
    report = run(target, plan_for(60, management_kill=False), clients=8, rate=10)
    path = write(report, tmp_path)
    verdicts = "\n".join(verdict_lines(report))
    print(f"\n{verdicts}\nreport: {path}")
    assert report.kills and report.kills[0].pid, "no iris v1 replica was found to kill"
    assert report.kills[0].back_after_s is not None, "the killed replica was not replaced"
    assert report.passed, f"{verdicts}\n\n{path.read_text()}"
