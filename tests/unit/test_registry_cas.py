"""The compare-and-set decisions and the leases: pure, milliseconds (management/registry_cas.py)."""
from __future__ import annotations

from typing import Optional

import pytest

from modelpool.cluster.object_store import ObjectStore
from modelpool.management import registry_cas as cas
from modelpool.management.registry import Registry
from modelpool.management.registry_writer import RegistryWriter
from modelpool.management.serve_configs import management_replica_count
from modelpool.cluster.settings import load_settings

RECORD = {"name": "iris", "version": "1", "batch_size": 8}


def test_create_writes_revision_one_where_nothing_is_stored():
    outcome = cas.decide_create(None, RECORD)
    assert (outcome.status, outcome.ok, outcome.write, outcome.revision) == (cas.CREATED, True, True, 1)
    assert outcome.record == {**RECORD, "revision": 1}


def test_create_over_a_stored_record_is_exists_with_the_stored_one():
    stored = {**RECORD, "batch_size": 64, "revision": 3}
    outcome = cas.decide_create(stored, RECORD)
    assert (outcome.status, outcome.ok, outcome.write, outcome.record) == (cas.EXISTS, False, False, stored)


def test_replace_over_the_expected_revision_increments_it():
    outcome = cas.decide_replace({**RECORD, "revision": 4}, 4, {**RECORD, "batch_size": 16})
    assert (outcome.status, outcome.revision, outcome.record["batch_size"]) == (cas.OK, 5, 16)


def test_replace_over_another_revision_is_a_conflict_with_the_current_record():
    current = {**RECORD, "revision": 5}
    outcome = cas.decide_replace(current, 4, {**RECORD, "batch_size": 16})
    assert (outcome.status, outcome.write, outcome.record) == (cas.CONFLICT, False, current)


def test_replace_of_a_missing_record_creates_nothing():
    outcome = cas.decide_replace(None, 0, RECORD)
    assert (outcome.status, outcome.write, outcome.record) == (cas.MISSING, False, None)


@pytest.mark.parametrize("stored", [{"name": "iris", "version": "1"}, {**RECORD, "revision": "7"},
                                    {**RECORD, "revision": -2}, {**RECORD, "revision": True}])
def test_a_record_without_a_usable_revision_is_revision_zero(stored: dict):
    assert cas.revision_of(stored) == 0
    assert cas.decide_replace(stored, 0, RECORD).revision == 1
    assert cas.decide_replace(stored, 1, RECORD).status == cas.CONFLICT


@pytest.mark.parametrize("stored, expected, status, revision", [
    (None, None, cas.CREATED, 1), (None, 0, cas.CREATED, 1), (None, 3, cas.MISSING, 0),
    ({"revision": 3}, None, cas.OK, 4), ({"revision": 3}, 3, cas.OK, 4), ({"revision": 3}, 2, cas.CONFLICT, 3),
])
def test_put_creates_or_replaces(stored: Optional[dict], expected: Optional[int], status: str, revision: int):
    outcome = cas.decide_put(stored, expected, RECORD)
    assert (outcome.status, outcome.revision) == (status, revision)


@pytest.mark.parametrize("stored, expected, status", [
    (None, None, cas.MISSING), ({"revision": 2}, None, cas.DELETED), ({"revision": 2}, 2, cas.DELETED),
    ({"revision": 2}, 1, cas.CONFLICT), ({}, 0, cas.DELETED),
])
def test_delete(stored: Optional[dict], expected: Optional[int], status: str):
    outcome = cas.decide_delete(stored, expected)
    assert outcome.status == status and outcome.write == (status == cas.DELETED)


# ------------------------------------------------------------------------------------------ leases
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_is_held_by_one_owner_until_it_expires():
    clock = Clock()
    leases = cas.LeaseTable(clock)
    assert leases.acquire("serve", "a", 10)
    assert not leases.acquire("serve", "b", 10)
    assert leases.acquire("serve", "a", 10), "its holder takes it again (renews)"
    clock.now += 9.9
    assert not leases.acquire("serve", "b", 10) and leases.holder("serve") == "a"
    clock.now += 0.2  # a killed holder: nobody renewed it
    assert leases.holder("serve") is None
    assert leases.acquire("serve", "b", 10) and leases.holder("serve") == "b"


def test_renewal_keeps_a_lease_and_a_lost_one_is_reported():
    clock = Clock()
    leases = cas.LeaseTable(clock)
    leases.acquire("serve", "a", 10)
    for _ in range(5):
        clock.now += 6
        assert leases.renew("serve", "a", 10)
    assert not leases.acquire("serve", "b", 10), "renewed 30 s after it was taken: still a's"
    clock.now += 11
    assert leases.renew("serve", "a", 10), "lapsed but nobody took it: a keeps it"
    clock.now += 11
    assert leases.acquire("serve", "b", 10)
    assert not leases.renew("serve", "a", 10), "b took it: a lost it"
    assert not leases.release("serve", "a"), "a's release leaves b's lease alone"
    assert leases.holder("serve") == "b" and leases.release("serve", "b") and leases.holder("serve") is None


def test_leases_are_per_name():
    leases = cas.LeaseTable(Clock())
    assert leases.acquire("serve", "a", 10) and leases.acquire("register-store", "b", 10)
    assert set(leases.snapshot()) == {"serve", "register-store"}


# ------------------------------------------------------------------------------------------ the writer, one process
def test_an_old_record_without_revision_loads_as_zero_and_takes_a_replace(tmp_path):
    store = ObjectStore(str(tmp_path))
    old = {"name": "iris", "version": "1", "url": "iris-1.zip", "source": "s", "handler": "h", "runtime": "python",
           "batch_size": 8, "max_batch_delay_ms": 5, "initial_workers": 0, "min_workers": 0, "max_workers": 0,
           "response_timeout_s": 120}
    store.write_json("registry/models/iris/1.json", old)
    registry = Registry(store)
    assert registry.get_model("iris", "1").revision == 0
    writer = RegistryWriter(store=store)
    assert writer.replace("models", "iris", "1", 1, {**old, "batch_size": 16}).status == cas.CONFLICT
    assert writer.replace("models", "iris", "1", 0, {**old, "batch_size": 16}).revision == 1
    record = registry.get_model("iris", "1")
    assert (record.revision, record.batch_size) == (1, 16)


def test_writer_compound_calls_check_in_the_same_call(tmp_path):
    writer = RegistryWriter(store=ObjectStore(str(tmp_path)))
    model = {"name": "iris", "version": "1"}
    assert writer.set_default("iris", "1").status == cas.MISSING
    assert writer.put_pool({**model, "initial_pool_size": 1, "max_pool_size": 2}).status == cas.MISSING
    assert writer.register_model(model).status == cas.CREATED
    assert writer.register_model(model).status == cas.EXISTS
    assert writer.put_graph({"name": "iris", "graph": {}}).status == cas.TAKEN
    assert writer.set_default("iris", "1").revision == 1 and writer.set_default("iris", "1").revision == 2
    assert writer.put_pool({**model, "initial_pool_size": 1, "max_pool_size": 2}).status == cas.CREATED
    assert writer.unregister_model("iris", "1").status == cas.DELETED
    registry = writer.registry
    assert registry.get_pool("iris", "1") is None and registry.unregistered() == {("iris", "1")}
    assert registry.read_raw("registry/defaults/iris.json") is None, "the default goes with the last version"
    assert writer.unregister_model("iris", "1").status == cas.MISSING
    assert writer.put_graph({"name": "g", "graph": {}}).status == cas.CREATED
    assert writer.register_model({"name": "g", "version": "1"}).status == cas.TAKEN
    assert writer.register_model(model).status == cas.CREATED
    assert registry.unregistered() == set(), "a register forgets the earlier unregister"


# ------------------------------------------------------------------------------------------ --management-replicas
@pytest.mark.parametrize("setting, joined, nodes, replicas", [
    (None, False, 1, 1), (None, False, 3, 2), (None, True, 1, 2), (3, False, 1, 3), (1, True, 5, 1),
])
def test_management_replicas_default_by_cluster(setting, joined, nodes, replicas):
    assert management_replica_count(setting, joined, nodes) == replicas


def test_management_replicas_is_a_flag_and_a_variable():
    assert load_settings({}, {}).management_replicas is None
    assert load_settings({}, {"MODELPOOL_MANAGEMENT_REPLICAS": "2"}).management_replicas == 2
    assert load_settings({"management_replicas": "3"}, {"MODELPOOL_MANAGEMENT_REPLICAS": "2"}).management_replicas == 3
    with pytest.raises(ValueError, match="--management-replicas / MODELPOOL_MANAGEMENT_REPLICAS"):
        load_settings({"management_replicas": "0"}, {})
