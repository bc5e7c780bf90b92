"""Two management replicas on the package's real cluster: both answer, and racing calls through both stay consistent.

The package's cluster runs one management replica (one machine: ``--management-replicas`` defaults to 1). This
module redeploys the management application with ``management_replicas=2`` from the test process (joined to the
cluster, as ``modelpool start`` deploys it: same settings, same token), and puts it back to one at the end.
Which replica answered is in every management answer's ``x-modelpool-replica`` header.

Written with the single-writer change (issue 18, part 2); not run yet when it was written (the machine's Ray
was held by a benchmark): run it with ``pytest -m integration tests/integration/test_management_replicas.py``.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import requests

from modelpool.deployments.app_names import MANAGEMENT_APP, REPLICA_HEADER

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], bool], timeout_s: float, period_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period_s)
    return condition()


def management_replicas() -> list[dict]:
    from modelpool.management.serve_state import app_deployment, serve_details

    deployment = app_deployment(serve_details(), MANAGEMENT_APP)
    return [r for r in (deployment["replicas"] if deployment else []) if r["state"] == "RUNNING"]


def deploy_with(cluster, replicas: int) -> None:
    from modelpool.cluster.local_cluster import fit_to_machine
    from modelpool.cluster.settings import load_settings
    from modelpool.management.serve_entrypoint import deploy_management

    # the cluster's own MODELPOOL_* settings, fitted as `modelpool start` fits them: only the replica count differs
    settings = fit_to_machine(load_settings({"management_replicas": replicas}, cluster.env))
    deploy_management(settings, cluster.token)
    assert wait_until(lambda: len(management_replicas()) == replicas, timeout_s=120), management_replicas()
    assert wait_until(lambda: ready(cluster), timeout_s=120), "management is not ready again"


def ready(cluster) -> bool:
    try:
        return requests.get(f"{cluster.url}/v2/health/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def two(ray_client):
    cluster = ray_client
    deploy_with(cluster, 2)
    try:
        yield cluster
    finally:
        deploy_with(cluster, 1)


@pytest.fixture()
def admin(two) -> requests.Session:
    with requests.Session() as session:
        session.headers.update(two.auth)
        yield session


def answering_replicas(cluster, calls: int = 60) -> set[str]:
    def one(_: int) -> str:
        with requests.Session() as session:
            session.headers.update(cluster.auth)
            answer = session.get(f"{cluster.url}/models", timeout=30)
            assert answer.status_code == 200, answer.text
            return answer.headers.get(REPLICA_HEADER, "")
    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(one, range(calls)))


def test_both_replicas_serve(two):
    seen = answering_replicas(two)
    assert "" not in seen, "a management answer without x-modelpool-replica"
    assert len(seen) == 2, f"answers came from {seen}"
    assert seen == {r["replica_id"] for r in management_replicas()}


def test_racing_registrations_through_both_replicas_one_wins(two):
    def register(i: int) -> requests.Response:
        with requests.Session() as session:
            session.headers.update(two.auth)
            return session.post(f"{two.url}/models", params={"url": "iris-1.zip", "model_name": "mr-race"}, timeout=120)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(register, range(8)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 7, [(a.status_code, a.text) for a in answers]
    assert len({a.headers.get(REPLICA_HEADER) for a in answers}) == 2, "the race did not go through both replicas"


def test_racing_registrations_with_one_key_all_get_the_first_answer(two):
    def register(i: int) -> requests.Response:
        with requests.Session() as session:
            session.headers.update({**two.auth, "Idempotency-Key": "mr-key-1"})
            return session.post(f"{two.url}/models", params={"url": "iris-1.zip", "model_name": "mr-same"}, timeout=120)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(register, range(8)))
    assert {(a.status_code, a.text) for a in answers} == {(answers[0].status_code, answers[0].text)}
    assert answers[0].status_code == 200


def test_racing_scales_through_both_replicas_lose_nothing(two, admin):
    assert admin.post(f"{two.url}/models", params={"url": "iris-1.zip", "model_name": "mr-scale"}).status_code == 200
    batch_sizes = [8 + i for i in range(8)]
    delays = [20 + i for i in range(8)]

    def scale(i: int) -> int:
        params = {"batch_size": batch_sizes[i // 2]} if i % 2 == 0 else {"max_batch_delay": delays[i // 2]}
        with requests.Session() as session:
            session.headers.update(two.auth)
            return session.put(f"{two.url}/models/mr-scale/1", params=params, timeout=120).status_code
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(scale, range(16)))
    assert codes == [202] * 16
    described = admin.get(f"{two.url}/models/mr-scale/1").json()[0]
    assert described["batchSize"] in batch_sizes and described["maxBatchDelay"] in delays, described


def test_one_replica_killed_mid_burst_every_accepted_change_holds(two, admin):
    """Registrations (with keys) and scales through both replicas while one is killed: every 2xx is durable, and
    each failed call sent again with its key succeeds; the killed replica comes back and both serve again."""
    import ray

    names = [f"mr-kill{i}" for i in range(8)]

    def register(name: str) -> int:
        try:
            with requests.Session() as session:
                session.headers.update({**two.auth, "Idempotency-Key": f"key-{name}"})
                return session.post(f"{two.url}/models", params={"url": "iris-1.zip", "model_name": name},
                                    timeout=120).status_code
        except requests.RequestException:
            return 0
    victim = management_replicas()[0]
    with ThreadPoolExecutor(8) as pool:
        first = {name: pool.submit(register, name) for name in names[:4]}
        time.sleep(0.05)
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)
        later = {name: pool.submit(register, name) for name in names[4:]}
        outcomes = {name: call.result() for name, call in {**first, **later}.items()}
    print(f"\noutcomes (0 = connection lost): {outcomes}")
    for name, status in outcomes.items():
        if 200 <= status < 300:
            assert admin.get(f"{two.url}/models/{name}").status_code == 200, f"{name} answered {status} but is gone"
        else:
            assert register(name) in (200, 202), f"{name}: the retry with its key failed"
    assert wait_until(lambda: len(management_replicas()) == 2, timeout_s=120), "Serve did not replace the replica"
    assert len(answering_replicas(two)) == 2
    listed = admin.get(f"{two.url}/models", params={"limit": 1000}).json()["models"]
    assert sorted(m["modelName"] for m in listed if m["modelName"].startswith("mr-kill")) == sorted(names)


def test_the_writer_actor_restarted_loses_nothing(two, admin):
    """The registry writer is killed (Ray restarts it): calls during the restart wait for it, none fails."""
    import ray

    from modelpool.cluster.runtime import NAMESPACE
    from modelpool.management.registry_writer import WRITER_NAME

    writers = [a for a in ray.util.list_named_actors(all_namespaces=True)
               if a["namespace"] == NAMESPACE and a["name"].startswith(WRITER_NAME)]
    assert len(writers) == 1, writers
    ray.kill(ray.get_actor(writers[0]["name"], namespace=NAMESPACE), no_restart=False)
    assert admin.post(f"{two.url}/models", params={"url": "iris-1.zip", "model_name": "mr-after-writer"},
                      timeout=120).status_code == 200
