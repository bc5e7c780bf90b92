"""The durable registry on both backends: CRUD, defaults, version order, concurrency, bad files."""
from __future__ import annotations

import logging
import threading

import pytest

from modelpool.cluster.object_store import ObjectStore
from modelpool.deployments.errors import RequestError
from modelpool.management.registry import ModelRecord, PoolRecord, Registry, version_sort_key


def model(name: str = "iris", version: str = "1", **overrides) -> ModelRecord:
    fields = dict(
        name=name, version=version, url=f"{name}-{version}.zip",
        source=f"s3://b/archives/{name}-{version}.zip",
        handler="sklearn", runtime="python", batch_size=8, max_batch_delay_ms=5.0, initial_workers=1,
        min_workers=1, max_workers=2, response_timeout_s=30.0, manifest={"name": name, "version": version},
    )
    fields.update(overrides)
    return ModelRecord(**fields)


def pool(name: str = "iris", version: str = "1", **overrides) -> PoolRecord:
    fields = dict(name=name, version=version, initial_pool_size=1, max_pool_size=4)
    fields.update(overrides)
    return PoolRecord(**fields)


@pytest.fixture
def registry(object_store: ObjectStore) -> Registry:
    return Registry(object_store)


# --------------------------------------------------------------------------------------- CRUD


def test_model_crud_and_layout(registry: Registry) -> None:
    record = model(batch_size=16)
    registry.put_model(record)
    assert registry.get_model("iris", "1") == record
    assert registry.store.list() == ["registry/models/iris/1.json"]
    assert registry.store.read_json("registry/models/iris/1.json")["batch_size"] == 16
    registry.put_model(model(batch_size=32))  # replace
    assert registry.get_model("iris", "1").batch_size == 32
    assert registry.get_model("iris", "2") is None and registry.get_model("nope", "1") is None
    assert registry.delete_model("iris", "1") is True
    assert registry.delete_model("iris", "1") is False
    assert registry.get_model("iris", "1") is None and registry.list_models() == []


def test_record_defaults_and_extra_fields() -> None:
    record = model()
    assert record.number_gpu == 0 and record.registered_at > 0 and record.updated_at > 0
    assert ModelRecord.model_validate({**record.model_dump(), "version": 3, "future": 1}).version == "3"


def test_list_models_sorted_by_name_then_natural_version(registry: Registry) -> None:
    for name, version in [("zeta", "1"), ("iris", "10"), ("iris", "9"), ("iris", "1.10"), ("iris", "1.9"),
                          ("alpha", "2")]:
        registry.put_model(model(name, version))
    assert [(r.name, r.version) for r in registry.list_models()] == [
        ("alpha", "2"), ("iris", "1.9"), ("iris", "1.10"), ("iris", "9"), ("iris", "10"), ("zeta", "1")]
    assert registry.versions("iris") == ["1.9", "1.10", "9", "10"]
    assert registry.versions("missing") == []


def test_version_sort_key_is_natural() -> None:
    versions = ["10", "9", "1", "1.10", "1.9", "v10", "v2", "1.0"]
    assert sorted(versions, key=version_sort_key) == ["1", "1.0", "1.9", "1.10", "9", "10", "v2", "v10"]


def test_pool_crud(registry: Registry) -> None:
    registry.put_pool(pool("iris", "2", max_pool_size=8))
    registry.put_pool(pool("iris", "10"))
    registry.put_pool(pool("a", "1"))
    assert registry.get_pool("iris", "2").max_pool_size == 8
    assert [(p.name, p.version) for p in registry.list_pools()] == [("a", "1"), ("iris", "2"), ("iris", "10")]
    assert registry.delete_pool("iris", "2") is True and registry.get_pool("iris", "2") is None
    assert registry.list_models() == []  # pools and models are separate
    assert "registry/pools/iris/10.json" in registry.store.list()


def test_custom_prefix(object_store: ObjectStore) -> None:
    registry = Registry(object_store, prefix="tenants/a/registry")
    registry.put_model(model())
    assert object_store.list() == ["tenants/a/registry/models/iris/1.json"]
    assert Registry(object_store).list_models() == []


# ----------------------------------------------------------------------------------- defaults


def test_default_falls_back_to_the_newest_version(registry: Registry) -> None:
    assert registry.get_default("iris") is None
    for version in ["2", "10", "9"]:
        registry.put_model(model(version=version))
    assert registry.get_default("iris") == "10"  # nothing stored: newest in natural order
    registry.set_default("iris", "9")
    assert registry.get_default("iris") == "9"
    assert registry.store.read_json("registry/defaults/iris.json") == {"version": "9"}
    registry.delete_model("iris", "9")  # the stored default is gone: fall back
    assert registry.get_default("iris") == "10"
    registry.delete_model("iris", "10")
    registry.delete_model("iris", "2")
    assert registry.get_default("iris") is None
    assert registry.store.list() == []  # the defaults file went with the last version


def test_set_default_needs_a_registered_version(registry: Registry) -> None:
    registry.put_model(model(version="1"))
    with pytest.raises(RequestError) as info:
        registry.set_default("iris", "2")
    assert info.value.status == 404 and info.value.field == "model_version"


def test_corrupt_default_file_falls_back(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    registry.put_model(model(version="1"))
    registry.put_model(model(version="2"))
    registry.store.write_bytes("registry/defaults/iris.json", b"{not json")
    with caplog.at_level(logging.WARNING, logger="modelpool.management.registry"):
        assert registry.get_default("iris") == "2"
    assert "unreadable default" in caplog.text


# --------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "a..b", "x" * 65, "sp ace"])
def test_bad_names_are_refused(registry: Registry, name: str) -> None:
    for call in [lambda: registry.put_model(model(name=name)), lambda: registry.get_model(name, "1"),
                 lambda: registry.delete_model(name, "1"), lambda: registry.versions(name),
                 lambda: registry.get_default(name), lambda: registry.set_default(name, "1"),
                 lambda: registry.put_pool(pool(name=name)), lambda: registry.get_pool(name, "1")]:
        with pytest.raises(RequestError) as info:
            call()
        assert info.value.field == "model_name" and info.value.status == 400
    assert registry.store.list() == []


@pytest.mark.parametrize("version", ["", "..", "1/2", "-1", "v 1"])
def test_bad_versions_are_refused(registry: Registry, version: str) -> None:
    for call in [lambda: registry.put_model(model(version=version)),
                 lambda: registry.get_model("iris", version),
                 lambda: registry.delete_pool("iris", version),
                 lambda: registry.set_default("iris", version)]:
        with pytest.raises(RequestError) as info:
            call()
        assert info.value.field == "model_version"


# -------------------------------------------------------------------------------- bad records


def test_corrupt_records_are_skipped_with_a_warning(registry: Registry,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    registry.put_model(model(version="1"))
    store = registry.store
    store.write_bytes("registry/models/iris/2.json", b"{torn")  # not JSON
    store.write_bytes("registry/models/iris/3.json", b"\xff\xfe")  # not UTF-8
    store.write_json("registry/models/iris/4.json", {"name": "iris", "version": "4"})  # fields missing
    store.write_json("registry/models/iris/5.json", model(version="6").model_dump())  # wrong path
    store.write_json("registry/models/iris/6.json", [1, 2])  # not an object
    store.write_bytes("registry/models/iris/README", b"stray")
    store.write_bytes("registry/models/iris/deep/7.json", b"{}")
    store.write_bytes("registry/pools/iris/1.json", b"")
    with caplog.at_level(logging.WARNING, logger="modelpool.management.registry"):
        assert [r.version for r in registry.list_models()] == ["1"]
        assert registry.versions("iris") == ["1"]
        assert registry.list_pools() == []
        for version in ["2", "3", "4", "5", "6"]:
            assert registry.get_model("iris", version) is None
        assert registry.get_pool("iris", "1") is None
    assert "iris/2.json" in caplog.text and "stray file" in caplog.text
    assert registry.get_default("iris") == "1"  # corrupt versions are not candidates
    registry.put_model(model(version="2"))  # a good write repairs the record
    assert registry.versions("iris") == ["1", "2"]


# -------------------------------------------------------------------------------- concurrency


def test_concurrent_writers_of_one_record_never_corrupt_it(registry: Registry) -> None:
    """Two writers replace the same record with different contents; readers always see one whole."""
    rounds = 40
    variants = {t: model(batch_size=100 + t, manifest={"pad": str(t) * (5000 + 3000 * t)}) for t in (0, 1)}
    registry.put_model(variants[0])
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for _ in range(rounds):
                registry.put_model(variants[t])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in (0, 1)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        assert registry.get_model("iris", "1") in variants.values()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert registry.get_model("iris", "1") in variants.values()
    assert registry.store.list() == ["registry/models/iris/1.json"]


def test_concurrent_writers_of_different_records(registry: Registry) -> None:
    def register(t: int) -> None:
        for version in range(t * 10, t * 10 + 10):
            registry.put_model(model(version=str(version)))
            registry.put_pool(pool(version=str(version)))

    threads = [threading.Thread(target=register, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.versions("iris") == [str(v) for v in range(40)]
    assert len(registry.list_pools()) == 40


def test_an_unregister_is_remembered_until_the_version_is_registered_again(registry: Registry) -> None:
    registry.mark_unregistered("iris", "2")
    registry.mark_unregistered("diabetes", "1")
    assert registry.unregistered() == {("iris", "2"), ("diabetes", "1")}
    registry.clear_unregistered("iris", "2")
    assert registry.unregistered() == {("diabetes", "1")}
    registry.clear_unregistered("never", "1")  # clearing what is not there is harmless


def test_model_names_come_from_the_listing_alone(registry: Registry) -> None:
    for name, version in (("iris", "1"), ("iris", "2"), ("diabetes", "1")):
        registry.put_model(model(name, version))
    registry.store.write_bytes(f"{registry.prefix}/models/stray.txt", b"not a record")
    assert registry.model_names() == ["diabetes", "iris"]


def test_default_records_of_a_page_fall_back_to_the_newest_without_deadlocking(registry: Registry) -> None:
    """More names than reader threads, none with a stored default: every fallback lists in the pool."""
    names = [f"m{i:02d}" for i in range(40)]
    for name in names:
        registry.put_model(model(name, "1"))
        registry.put_model(model(name, "2"))
    registry.set_default("m00", "1")
    records = registry.default_records(names)
    assert [(r.name, r.version) for r in records] == [("m00", "1")] + [(n, "2") for n in names[1:]]
