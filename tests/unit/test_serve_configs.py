"""The pure mapping from model settings to Serve application configs."""
import pytest

from modelpool.cluster.settings import load_settings
from modelpool.deployments.app_names import app_name, parse_app_name
from modelpool.management.placement import pool_config
from modelpool.management.serve_configs import (ModelConfig, PoolConfig, generic_pool_app_config, model_app_config,
                                                route_prefix)


def config(**overrides):
    base = dict(name="iris", version="1", source="/store/iris-1.zip", source_digest="abc")
    base.update(overrides)
    return ModelConfig(**base)


def test_default_version_owns_the_short_route_and_others_the_versioned_one():
    assert route_prefix("iris", "1", True) == "/v2/models/iris"
    assert route_prefix("iris", "2", False) == "/v2/models/iris/versions/2"


def test_workers_map_to_autoscaling_and_batching_to_user_config():
    app = model_app_config(config(initial_replicas=2, min_replicas=1, max_replicas=4, max_batch_size=32,
                                  max_batch_delay_ms=3, max_ongoing_requests=100, num_cpus=0.5), "/cache", "0.1")
    options = app.deployment_options
    assert options["autoscaling_config"]["min_replicas"] == 1
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert options["autoscaling_config"]["initial_replicas"] == 2
    assert options["user_config"]["max_batch_size"] == 32
    assert options["user_config"]["max_batch_delay_ms"] == 3
    assert options["max_ongoing_requests"] == 100
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert app.app_name == "model:iris:1"
    assert app.route_prefix == "/v2/models/iris"


def test_live_settings_keep_the_deployment_version_so_replicas_are_not_restarted():
    base = model_app_config(config(), "/cache", "0.1").deployment_options["version"]
    live = model_app_config(config(max_batch_size=1, max_batch_delay_ms=0, min_replicas=2, max_replicas=5,
                                   initial_replicas=3, target_ongoing_requests=2), "/cache", "0.1")
    assert live.deployment_options["version"] == base


def test_a_new_archive_or_resources_change_the_version():
    base = model_app_config(config(), "/cache", "0.1").deployment_options["version"]
    assert model_app_config(config(source_digest="other"), "/cache", "0.1").deployment_options["version"] != base
    assert model_app_config(config(num_cpus=1.0), "/cache", "0.1").deployment_options["version"] != base
    assert model_app_config(config(), "/cache", "0.2").deployment_options["version"] != base


def test_initial_replicas_are_clamped_into_min_max_and_min_above_max_is_refused():
    app = model_app_config(config(initial_replicas=9, min_replicas=1, max_replicas=3), "/c", "0")
    assert app.deployment_options["autoscaling_config"]["initial_replicas"] == 3
    with pytest.raises(ValueError):
        model_app_config(config(min_replicas=3, max_replicas=2), "/c", "0")


def test_app_names_round_trip_and_other_apps_are_not_models():
    assert parse_app_name(app_name("iris_report", "1.2")) == ("iris_report", "1.2")
    assert parse_app_name("management") is None


def test_the_app_giving_up_the_default_route_moves_first():
    from modelpool.management.deployer import _route_safe_batches

    old_default = model_app_config(config(version="2", is_default=False), "/c", "0")   # moving to /versions/2
    new_default = model_app_config(config(version="1", is_default=True), "/c", "0")    # taking /v2/models/iris
    routes = {"model:iris:2": "/v2/models/iris", "model:iris:1": "/v2/models/iris/versions/1"}
    batches = _route_safe_batches([new_default, old_default], routes)
    assert [[a.app_name for a in b] for b in batches] == [["model:iris:2"], ["model:iris:1"]]
    steady = _route_safe_batches([new_default, old_default], {"model:iris:1": "/v2/models/iris"})
    assert len(steady) == 1


def test_building_a_deployment_again_when_ray_s_pickle_registration_races(monkeypatch):
    """Ray's RequestRouterConfig un-registers a module process-wide; a build racing another thread's is retried."""
    from ray import serve

    from modelpool.management import deployer

    real = serve.deployment
    calls = []

    def racing(target):
        calls.append(target)
        if len(calls) == 1:
            raise ValueError("<module 'ray.serve._private.request_router'> is not registered for pickle by value")
        return real(target)

    monkeypatch.setattr(deployer.serve, "deployment", racing)
    bound = deployer._bind(model_app_config(config(), "/cache", "0.1"))
    assert len(calls) == 2 and bound is not None
    monkeypatch.setattr(deployer.serve, "deployment", lambda target: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError, match="other"):
        deployer._bind(model_app_config(config(), "/cache", "0.1"))


def test_a_model_config_given_nothing_deploys_what_a_cluster_started_without_flags_does():
    """ModelConfig's defaults are Settings' own: a version configured by no flag and no register parameter."""
    settings = load_settings({}, {})
    options = model_app_config(config(), "/cache", "0.1").deployment_options
    assert options["autoscaling_config"] | {"policy": None} == {
        "initial_replicas": settings.workers, "min_replicas": 1, "max_replicas": settings.max_workers,
        "target_ongoing_requests": settings.target_ongoing_requests, "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.downscale_delay_s, "look_back_period_s": 30.0, "policy": None}
    assert options["max_ongoing_requests"] == settings.threads
    assert options["ray_actor_options"] == {"num_cpus": settings.replica_num_cpus}
    assert (options["user_config"]["max_batch_size"], options["user_config"]["max_batch_delay_ms"]) == \
        (settings.max_batch_size, settings.max_batch_delay_ms)


def test_a_pool_config_given_nothing_deploys_the_pool_of_a_cluster_started_without_flags():
    defaults = generic_pool_app_config(PoolConfig(), {}, [], "/cache", "0.1").deployment_options
    started = generic_pool_app_config(pool_config(load_settings({}, {})), {}, [], "/cache", "0.1").deployment_options
    for key in ("autoscaling_config", "ray_actor_options", "max_ongoing_requests"):  # replicas, CPUs, LRU bound, threads
        assert defaults[key] == started[key], key
