"""The register's load check: a broken archive is a 400, and an archive that loaded is not checked again.

The check's own function runs in this process (as tests/unit/management_app.py runs it), on archives the
examples build; only Ray's remote call is replaced, and counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelpool.cluster.object_store import ObjectStore
from modelpool.cluster.settings import load_settings
from modelpool.deployments.errors import RequestError
from modelpool.deployments.examples import build_examples
from modelpool.management import archive_intake
from tests.unit.management_app import InProcessTask


class CountedTask(InProcessTask):
    def __init__(self, remote_function: Any) -> None:
        super().__init__(remote_function)
        self.calls = 0

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().remote(*args, **kwargs)


class InProcessGet:
    @staticmethod
    def get(value: Any) -> Any:
        return value


@pytest.fixture
def intake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    build_examples(tmp_path / "model_store")
    settings = load_settings({"home": str(tmp_path), "object_store": str(tmp_path / "objects")}, {})
    store = ObjectStore(str(tmp_path / "objects"))
    task = CountedTask(archive_intake._load_check)
    monkeypatch.setattr(archive_intake, "_load_check", task)
    monkeypatch.setattr(archive_intake, "ray", InProcessGet)
    monkeypatch.setattr(archive_intake, "_LOADED", type(archive_intake._LOADED)())
    return settings, store, task


def test_an_archive_that_loaded_is_not_checked_again_with_the_same_handler(intake) -> None:
    settings, store, task = intake
    for version in ("1", "2", "3"):  # the same bytes registered as three versions
        key, digest = archive_intake.copy_to_store(store, settings.model_store_path / "iris-1.zip", "iris", version)
        archive_intake.check_loads(store, key, settings, None, digest)
    assert task.calls == 1
    archive_intake.check_loads(store, key, settings, "sklearn", digest)  # another handler: checked
    assert task.calls == 2


def test_a_broken_handler_is_a_400_every_time_and_its_copy_is_deleted(intake) -> None:
    settings, store, task = intake
    for attempt in range(2):
        key, digest = archive_intake.copy_to_store(store, settings.model_store_path / "iris-1.zip", "iris", "1")
        with pytest.raises(RequestError) as refused:
            archive_intake.check_loads(store, key, settings, "no_such_module:Handler", digest)
        assert refused.value.status == 400 and refused.value.field == "handler"
        assert not store.exists(key)
    assert task.calls == 2  # a failure is never remembered as a pass
