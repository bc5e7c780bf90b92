"""Which versions get replicas of their own, and what the generic pool serves (pure mapping)."""
from modelpool.cluster.settings import load_settings
from modelpool.management.placement import plan, replica_bounds
from modelpool.management.registry import ModelRecord, PoolRecord

SETTINGS = load_settings({}, {})


def record(name="iris", version="1", workers=0, max_workers=None, batch=64):
    return ModelRecord(name=name, version=version, url=f"{name}-{version}.zip", source=f"objects://{name}/{version}",
                       digest=f"d{name}{version}", handler="sklearn", runtime="python", batch_size=batch,
                       max_batch_delay_ms=5, initial_workers=workers, min_workers=workers,
                       max_workers=workers if max_workers is None else max_workers, response_timeout_s=120)


def test_versions_without_workers_or_pool_go_to_the_generic_pool():
    placed = plan([record(version="1"), record(version="2")], {}, {}, SETTINGS)
    assert placed.dedicated == []
    assert placed.catalog["iris"]["default"] == "2"
    assert set(placed.catalog["iris"]["versions"]) == {"1", "2"}
    assert placed.catalog["iris"]["versions"]["1"]["source"] == "objects://iris/1"


def test_workers_or_a_pool_make_a_version_dedicated_and_keep_it_out_of_the_pool():
    pools = {("iris", "2"): PoolRecord(name="iris", version="2", initial_pool_size=2, max_pool_size=4)}
    placed = plan([record(version="1", workers=1, max_workers=3), record(version="2"), record(name="other")],
                  {"iris": "1"}, pools, SETTINGS)
    dedicated = {(c.name, c.version): c for c in placed.dedicated}
    assert set(dedicated) == {("iris", "1"), ("iris", "2")}
    assert (dedicated[("iris", "2")].initial_replicas, dedicated[("iris", "2")].min_replicas,
            dedicated[("iris", "2")].max_replicas) == (2, 2, 4)
    assert (dedicated[("iris", "1")].min_replicas, dedicated[("iris", "1")].max_replicas) == (1, 3)
    assert dedicated[("iris", "1")].is_default and not dedicated[("iris", "2")].is_default
    assert "iris" not in placed.catalog and "other" in placed.catalog
    assert placed.known_models == ["iris", "other"]


def test_a_dedicated_default_knows_which_versions_the_pool_serves():
    placed = plan([record(version="1"), record(version="2", workers=1)], {}, {}, SETTINGS)
    (default,) = placed.dedicated
    assert default.version == "2" and default.is_default
    assert default.pool_versions == ("1",)
    assert placed.catalog["iris"]["default"] == "2"


def test_a_stale_default_falls_back_to_the_newest_version():
    placed = plan([record(version="9"), record(version="10")], {"iris": "3"}, {}, SETTINGS)
    assert placed.catalog["iris"]["default"] == "10"


def test_replica_bounds_clamp_initial_into_min_max():
    assert replica_bounds(record(workers=0, max_workers=2), None) == (1, 1, 2)
    assert replica_bounds(record(workers=3, max_workers=3), None) == (3, 3, 3)
