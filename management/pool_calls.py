"""Machine Learning Server's session pools and service list on the model manager.

A mixin of :class:`modelpool.management.model_manager.ModelManager`, like ``RepositoryCalls`` and ``GraphCalls``:
a pool is a version's dedicated replicas (``PoolRecord``), so these calls record it and re-apply through the
manager's own paths (``record``, ``_update_model``, ``apply``) under its lock; deleting one returns the version to
the generic pool.
"""
from __future__ import annotations

import time

from modelpool.deployments import app_names
from modelpool.management import placement, serve_configs, workers
from modelpool.management.params import PoolParams
from modelpool.management.registry import PoolRecord
from modelpool.management.registry_cas import MISSING


class PoolCalls:
    """Dedicated session pools (put, status, delete) and the services each version is served by."""

    def put_pool(self, name: str, version: str, params: PoolParams) -> dict:
        with self._lock:
            record = self.record(name, version)
            pool = PoolRecord(name=record.name, version=record.version, initial_pool_size=params.initial_pool_size,
                              max_pool_size=params.max_pool_size)
            if self.writer.put_pool(pool.model_dump(mode="json")).status == MISSING:  # unregistered meanwhile
                self.record(record.name, record.version)
            self.apply(only_model=record.name)
        return {"status": f'Pool for "{record.name}" version "{record.version}" set to '
                          f"{params.initial_pool_size}..{params.max_pool_size} replicas"}

    def pool_status(self, name: str, version: str) -> list[dict]:
        record = self.record(name, version)
        dedicated = placement.is_dedicated(record, self.registry.get_pool(record.name, record.version))
        details = self._details.get() if dedicated else {}
        return workers.pool_status(details, app_names.app_name(record.name, record.version))

    def delete_pool(self, name: str, version: str) -> dict:
        """The dedicated replicas go; the service returns to the generic pool. Repeating it is harmless."""
        with self._lock:
            record = self.record(name, version)
            self.writer.delete("pools", record.name, record.version)
            if record.max_workers:
                self._update_model(record, lambda current: current.model_copy(update={
                    "min_workers": 0, "max_workers": 0, "initial_workers": 0, "updated_at": time.time()}))
            self.apply(only_model=record.name)
        return {"status": f'Pool for "{record.name}" version "{record.version}" deleted; served by the generic pool'}

    def services(self) -> list[dict]:
        details = self._details.get()
        result = []
        for record, app in self._serving_apps():
            result.append({"name": record.name, "version": record.version,
                           "pool": "generic" if app == serve_configs.GENERIC_POOL_APP else "dedicated",
                           "state": workers.serving(details, app).status,
                           "isDefault": self.registry.get_default(record.name) == record.version})
        return result
