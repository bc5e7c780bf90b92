"""Several management replicas over one registry: each a real ModelManager of its own (its own process lock), all
writing through one registry writer actor (the real class, run by the in-process actor fakes: one call at a time,
as Ray runs it), racing from many threads. What must hold: one success per registration (the rest 409, or the
first answer again with the same Idempotency-Key), no lost update between scales or set-defaults, a consistent
end after an unregister races scales, and a lease that a dead holder cannot keep.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
from ray.exceptions import RayActorError

from modelpool.deployments.archive_fetch import STORE_SCHEME
from modelpool.deployments.errors import RequestError
from modelpool.management import registry_cas as cas
from modelpool.management import registry_writer
from modelpool.management.model_manager import ModelManager
from modelpool.management.params import RegisterParams, ScaleParams
from modelpool.management.registry_writer import LeaseHolder, WriterClient
from tests.unit.in_process_actors import ActorClass
from tests.unit.management_app import RunningManagement, management_fixture, model_store  # noqa: F401

REPLICAS = 4


class CountingClient(WriterClient):
    """The replicas' writer client, counting conflicts and widening the read-to-write window a little, so races
    that could lose an update do happen in every run."""

    conflicts = 0
    _count = threading.Lock()

    def replace(self, *args: Any, **kwargs: Any) -> cas.Outcome:
        time.sleep(0.002)
        outcome = super().replace(*args, **kwargs)
        if outcome.status == cas.CONFLICT:
            with CountingClient._count:
                CountingClient.conflicts += 1
        return outcome


@pytest.fixture(name="replicas")
def replicas_fixture(management: RunningManagement, monkeypatch: pytest.MonkeyPatch) -> list[ModelManager]:
    """``REPLICAS`` managers (the fixture's first), one writer actor, as on a cluster."""
    monkeypatch.setattr(registry_writer, "RegistryWriterActor",
                        ActorClass(management.actors, registry_writer.RegistryWriterActor))
    monkeypatch.setattr(registry_writer, "ray", management.actors)
    first = management.manager
    handle = registry_writer.create_writer(first.settings.object_store_config)
    assert registry_writer.create_writer(first.settings.object_store_config) is handle, "one per store, by name"
    CountingClient.conflicts = 0
    managers = [first] + [ModelManager(first.settings, store=first.store) for _ in range(REPLICAS - 1)]
    for manager in managers:
        manager.writer = CountingClient(WriterClient.actor(handle)._call)
        manager._details, manager.ingress = first._details, first.ingress
    return managers


def race(count: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` from ``count`` threads released together; each result, or the RequestError it raised."""
    start = threading.Barrier(count)

    def run(index: int) -> Any:
        start.wait()
        try:
            return call(index)
        except RequestError as exc:
            return exc
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def statuses(results: list[Any]) -> list[int]:
    return sorted(r.status if isinstance(r, RequestError) else r[0] for r in results)


def test_racing_registrations_of_one_version_give_one_success_and_409s(replicas: list[ModelManager]):
    results = race(12, lambda i: replicas[i % REPLICAS].register(
        RegisterParams(url="iris-1.zip" if i % 2 else "diabetes-1.zip", model_name="race")))
    assert statuses(results) == [200] + [409] * 11, results
    winner = replicas[0].registry.get_model("race", "1")
    assert winner is not None and winner.revision == 1
    # the losing archive's copy is gone, the winner's stays (copies are content-addressed)
    copies = [key for key in replicas[0].store.list("models/race/1") if key.endswith(".zip")]
    assert copies == [winner.source.removeprefix(STORE_SCHEME)], copies


def test_racing_registrations_with_one_idempotency_key_all_get_the_first_answer(replicas: list[ModelManager]):
    params = RegisterParams(url="iris-1.zip", model_name="same", idempotency_key="key-1")
    results = race(12, lambda i: replicas[i % REPLICAS].register(params))
    assert all(result == results[0] for result in results), results
    assert results[0][0] == 200
    other = race(4, lambda i: replicas[i].register(RegisterParams(url="iris-1.zip", model_name="same",
                                                                  idempotency_key="key-2")))
    assert statuses(other) == [409] * 4, "another key is another request: the version is taken"


def test_a_request_whose_key_won_meanwhile_gets_the_first_answer_not_409(replicas: list[ModelManager],
                                                                         monkeypatch: pytest.MonkeyPatch):
    """The window the cluster benchmark hit (loadtests.bench_management_race, 1 of 6 racers with one key got 409):
    a request that read the registry before the winner wrote, and looked again after it."""
    params = RegisterParams(url="iris-1.zip", model_name="late", idempotency_key="key-late")
    first = replicas[0].register(params)
    late = replicas[1]
    reads = {"n": 0}
    real = late.registry.get_model

    def before_the_winner_wrote_then_real(name: str, version: str):
        reads["n"] += 1
        return None if reads["n"] == 1 else real(name, version)
    monkeypatch.setattr(late.registry, "get_model", before_the_winner_wrote_then_real)
    assert late.register(params) == first


def test_sixteen_racing_scales_of_different_fields_lose_no_update(replicas: list[ModelManager]):
    replicas[0].register(RegisterParams(url="iris-1.zip", model_name="scaled"))
    before = replicas[0].registry.get_model("scaled", "1")
    batch_sizes = {i: 10 + i for i in range(0, 16, 2)}
    delays = {i: 100.0 + i for i in range(1, 16, 2)}

    def scale(i: int) -> Any:
        params = ScaleParams(batch_size=batch_sizes[i]) if i in batch_sizes else ScaleParams(max_batch_delay=delays[i])
        return replicas[i % REPLICAS].scale("scaled", "1", params)
    results = race(16, scale)
    assert statuses(results) == [202] * 16, results
    after = replicas[0].registry.get_model("scaled", "1")
    assert after.revision == before.revision + 16, "every scale landed on its own revision"
    assert after.batch_size in batch_sizes.values() and after.max_batch_delay_ms in delays.values(), after
    assert CountingClient.conflicts > 0, "the race did not happen: nothing was tested"


def test_a_min_worker_scale_and_a_batch_size_scale_racing_both_persist(replicas: list[ModelManager],
                                                                       management: RunningManagement):
    """Forced interleaving: both read revision n, the batch_size scale writes first, the min_worker one conflicts,
    re-reads and writes n+2 with both changes."""
    replicas[0].register(RegisterParams(url="iris-1.zip", model_name="both"))
    first_read = threading.Barrier(2)
    batch_written = threading.Event()
    slow, fast = replicas[0], replicas[1]
    real_slow, real_fast = slow.writer.replace, fast.writer.replace

    def slow_replace(*args: Any, **kwargs: Any) -> cas.Outcome:
        if not batch_written.is_set():
            first_read.wait(5)
            batch_written.wait(5)
        return real_slow(*args, **kwargs)

    def fast_replace(*args: Any, **kwargs: Any) -> cas.Outcome:
        first_read.wait(5)
        outcome = real_fast(*args, **kwargs)
        batch_written.set()
        return outcome
    slow.writer.replace, fast.writer.replace = slow_replace, fast_replace
    results = race(2, lambda i: (slow.scale("both", "1", ScaleParams(min_worker=1, max_worker=2)) if i == 0
                                 else fast.scale("both", "1", ScaleParams(batch_size=7))))
    assert statuses(results) == [202, 202], results
    record = slow.registry.get_model("both", "1")
    assert (record.min_workers, record.max_workers, record.batch_size, record.revision) == (1, 2, 7, 3)
    assert CountingClient.conflicts == 1
    options = management.serve.apps["model:both:1"].deployment_options  # the last apply deployed both changes
    assert (options["autoscaling_config"]["min_replicas"], options["user_config"]["max_batch_size"]) == (1, 7)


def test_racing_set_defaults_each_persist_and_the_last_one_wins(replicas: list[ModelManager]):
    replicas[0].register(RegisterParams(url="iris-1.zip", model_name="dflt"))
    replicas[1].register(RegisterParams(url="iris-2.zip", model_name="dflt"))
    results = race(16, lambda i: replicas[i % REPLICAS].set_default("dflt", "1" if i % 2 else "2"))
    assert all(isinstance(result, dict) for result in results), results
    stored = replicas[0].registry.read_raw("registry/defaults/dflt.json")
    assert stored["revision"] == 16, "every set-default was one revision: none was lost"
    assert stored["version"] in ("1", "2") and replicas[0].registry.get_default("dflt") == stored["version"]


def test_unregister_racing_scales_ends_consistent(replicas: list[ModelManager], management: RunningManagement):
    replicas[0].register(RegisterParams(url="iris-1.zip", model_name="gone"))

    def call(i: int) -> Any:
        if i == 5:
            return replicas[i % REPLICAS].unregister("gone", "1")
        return replicas[i % REPLICAS].scale("gone", "1", ScaleParams(batch_size=5 + i))
    results = race(12, call)
    for i, result in enumerate(results):
        if i == 5:
            assert result == {"status": 'Model "gone" unregistered'}, result
        else:
            assert result[0] == 202 if not isinstance(result, RequestError) else result.status == 404, result
    registry = replicas[0].registry
    assert registry.get_model("gone", "1") is None and registry.get_pool("gone", "1") is None
    assert ("gone", "1") in registry.unregistered()
    assert registry.read_raw("registry/defaults/gone.json") is None
    replicas[0].apply()  # whatever apply ran last, Serve now matches the registry
    assert not [name for name in management.serve.apps if "gone" in name]
    pool = next(r for name, r in management.serve.replicas.items() if name == "generic-pool" or "pool" in name)
    assert "gone" not in pool.catalog


def test_racing_unregisters_one_answers_and_the_rest_404(replicas: list[ModelManager]):
    replicas[0].register(RegisterParams(url="iris-1.zip", model_name="twice"))
    results = race(4, lambda i: replicas[i].unregister("twice", "1"))
    assert statuses([r if isinstance(r, RequestError) else (200,) for r in results]) == [200, 404, 404, 404]


def test_applies_take_turns_across_replicas(replicas: list[ModelManager], monkeypatch: pytest.MonkeyPatch):
    """The Serve lease: two replicas' applies never overlap, and each reads the registry once it holds it."""
    inside, overlaps = [0], []
    lock = threading.Lock()
    real = replicas[0]._plan

    def plan(self: ModelManager) -> Any:
        with lock:
            inside[0] += 1
            overlaps.append(inside[0])
        time.sleep(0.01)
        with lock:
            inside[0] -= 1
        return real.__func__(self)
    monkeypatch.setattr(ModelManager, "_plan", plan)
    race(8, lambda i: replicas[i % REPLICAS].apply())
    assert overlaps and max(overlaps) == 1, overlaps


def test_a_dead_holders_lease_expires_and_a_live_holder_keeps_its_own(replicas: list[ModelManager]):
    client = replicas[0].writer
    assert client.acquire("serve", "killed-replica", 0.3)  # then never renewed nor released: its process died
    started = time.monotonic()
    with LeaseHolder(client, "serve", "replica-b", ttl_s=0.3, wait_s=5):
        assert time.monotonic() - started >= 0.25, "taken only once the dead holder's lease expired"
        time.sleep(0.6)  # twice its time to live: renewed meanwhile
        assert not client.acquire("serve", "replica-c", 0.3)
    assert client.acquire("serve", "replica-c", 0.3), "released on exit"
    client.release("serve", "replica-c")
    with pytest.raises(RequestError, match="held the 'serve' lease") as refused:
        client.acquire("serve", "stuck", 10)
        with LeaseHolder(client, "serve", "replica-d", wait_s=0.2):
            pass
    assert refused.value.status == 503


def test_a_write_whose_answer_was_lost_with_the_actor_is_recognised_as_done(tmp_path):
    """The actor died after writing and before answering: the call made again finds its own write, and
    answers the success it was (not a 409 or a conflict)."""
    from modelpool.cluster.object_store import ObjectStore

    writer = registry_writer.RegistryWriter(store=ObjectStore(str(tmp_path)))
    died = [False]

    def call(method: str, args: tuple, kwargs: dict) -> Any:
        answer = getattr(writer, method)(*args, **kwargs)
        if not died[0]:
            died[0] = True
            raise RayActorError()
        return answer
    client = WriterClient(call)
    record = {"name": "iris", "version": "1", "batch_size": 8}
    assert client.register_model(record).status == cas.CREATED
    died[0] = False
    assert client.replace("models", "iris", "1", 1, {**record, "batch_size": 9}).status == cas.OK
    died[0] = False
    assert client.replace("models", "iris", "1", 1, {**record, "batch_size": 10}).status == cas.CONFLICT, \
        "someone else's write is still a conflict"


def test_management_answers_name_their_replica(management: RunningManagement, monkeypatch: pytest.MonkeyPatch):
    import requests

    from modelpool.deployments.app_names import REPLICA_HEADER
    from modelpool.management import api as management_api

    assert REPLICA_HEADER not in requests.get(f"{management.url}/ping", timeout=10).headers, "none outside Serve"
    monkeypatch.setattr(management_api.state, "replica_id", "mgmt-a", raising=False)
    assert requests.get(f"{management.url}/ping", timeout=10).headers[REPLICA_HEADER] == "mgmt-a"
    refused = requests.get(f"{management.url}/models", timeout=10)  # no token: errors are named too
    assert (refused.status_code, refused.headers[REPLICA_HEADER]) == (401, "mgmt-a")
