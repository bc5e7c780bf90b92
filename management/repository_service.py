"""The model repository extension (Triton's, which MLServer copies) on the model manager.

A mixin of :class:`modelpool.management.model_manager.ModelManager`, kept apart so that module holds the MMS and
pool calls and this one the repository's: the mapping itself is pure (``modelpool.management.repository``);
these methods only read the registry and Serve and register or unregister through the manager's
own paths (``_register_from_store``, ``_unregister_all``, ``apply``) and wait as they do
(:func:`modelpool.management.rollout_wait.wait_for_rollout`).
"""
from __future__ import annotations

from modelpool.deployments.archive import list_store
from modelpool.management import repository, workers
from modelpool.management.params import RegisterParams
from modelpool.management.registry import check_model_name
from modelpool.management.rollout_wait import wait_for_rollout


class RepositoryCalls:
    """Index, load and unload over the manager's registry, store and Serve applications."""

    def repository_index(self, ready_only: bool) -> list[dict]:
        """Triton's repository index: every registered version with its state, and the store's other archives."""
        details = self._details.get()
        registered = [(record.name, record.version, workers.serving(details, app)) for record, app in self._serving_apps()]
        return repository.index(registered, self._store_archives(), self.registry.unregistered(), ready_only)

    def load(self, name: str) -> None:
        """Register every store version of ``name`` the registry lacks, then answer once the model serves.

        A model with nothing new in the store is left as it is (no reload: its replicas keep running),
        and the answer still waits until it serves, as Triton's load does.
        """
        check_model_name(name)
        archives = repository.archives_to_load(name, self._store_archives(), set(self.registry.versions(name)))
        # 409: a concurrent load registered that version first, which is as good
        refused = [exc for _, exc in self._register_from_store(archives) if exc.status != 409]
        if archives:
            with self._lock:
                apps = self.apply(only_model=name)  # what did register deploys even if another version was refused
        else:
            apps = sorted({app for record, app in self._serving_apps() if record.name == name})
        if refused:
            raise refused[0]
        wait_for_rollout(apps, RegisterParams.model_fields["startup_timeout"].default, f"model '{name}'",
                         field="model_name", ingress=self.ingress)

    def unload(self, name: str) -> None:
        """Unregister every version of ``name`` (Triton unloads a model with all its versions)."""
        check_model_name(name)
        with self._lock:
            records = self.registry.model_versions(name)
            repository.unload_versions(name, [record.version for record in records])
            self._unregister_all(name, records)

    def _store_archives(self) -> list[repository.StoreArchive]:
        return [(manifest.name, manifest.version, path) for manifest, path in list_store(self.settings.model_store_path)]
