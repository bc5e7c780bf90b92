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


# --- the front: which ports it takes and where it passes the rest (pure) -------------------------------------------
def _front(**changes):
    from modelpool.cluster.settings import load_settings
    from modelpool.management.placement import front_config

    return front_config(load_settings(changes, {}))


def test_the_front_takes_the_public_ports_and_passes_the_rest_to_serve_on_loopback():
    listeners = _front(http_port=8100, grpc_port=8101, serve_http_port=9100, grpc_ingress_port=9101).listeners
    assert listeners["http_port"] == 8100 and listeners["grpc_port"] == 8101
    assert listeners["http_upstream"] == "127.0.0.1:9100" and listeners["grpc_upstream"] == "127.0.0.1:9101"
    assert listeners["host"] == "127.0.0.1" and listeners["keep_alive_s"] == 90 and listeners["timeout_s"] == 300


def test_the_front_follows_the_settings_that_shape_it():
    wide = _front(http_host="0.0.0.0", management_token="t" * 20, keep_alive_s=5, request_timeout_s=2.5)
    assert wide.listeners["host"] == "0.0.0.0" and wide.listeners["grpc_upstream"].startswith("127.0.0.1:")
    assert wide.listeners["keep_alive_s"] == 5 and wide.listeners["timeout_s"] == 2
    no_grpc = _front(grpc_workers=0)
    assert no_grpc.listeners["grpc_port"] == 0 and no_grpc.listeners["http_port"] == 8000 and no_grpc.workers == 1
    kuberay = _front(http_front=False)
    assert kuberay.listeners["http_port"] == 0 and kuberay.listeners["grpc_port"] == 8001


def test_the_front_runs_once_on_the_head_node_and_takes_no_cpu():
    from modelpool.management.serve_configs import front_app_config

    app = front_app_config(_front(), {"iris/": "model:iris:1"}, "code-1")
    options = app.deployment_options
    assert options["num_replicas"] == 1 and options["ray_actor_options"]["num_cpus"] == 0
    assert options["ray_actor_options"]["resources"] == {"node:__internal_head__": 0.001}
    assert options["user_config"] == {"routes": {"iris/": "model:iris:1"}, "limits": {}}
    moved = front_app_config(_front(http_port=8200), {}, "code-1")
    assert moved.deployment_options["version"] != options["version"], "a new port is a new front (Serve restarts it)"
    rerouted = front_app_config(_front(), {"iris/": "model:iris:2"}, "code-1")
    assert rerouted.deployment_options["version"] == options["version"], "a new table is applied live, no restart"
    limited = front_app_config(_front(), {"iris/": "model:iris:1"}, "code-1", {"model:iris:1": 228})
    assert limited.deployment_options["user_config"]["limits"] == {"model:iris:1": 228}
    assert limited.deployment_options["version"] == options["version"], "a new limit is applied live, no restart"
