"""cluster.yaml and cluster/local.yaml pass Ray's own cluster-config validation and start what they promise.

A real ``ray up`` needs a cloud account (cluster.yaml) or SSH to machines (local.yaml); these tests check
what can be checked here: Ray's schema, and that every node installs this checkout and starts the ingress
and modelpool the way ``modelpool start`` does locally.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "cluster.yaml", ROOT / "cluster" / "local.yaml"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_validates_the_config(path):
    validate_config(prepare_config(copy.deepcopy(load(path))))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_misspelt_key_is_caught_by_the_same_validation(path):
    config = load(path)
    config["head_start_ray_comands"] = config.pop("head_start_ray_commands")
    with pytest.raises(Exception, match="head_start_ray_comands"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_installs_this_checkout_and_serves_through_haproxy(path):
    config = load(path)
    assert config["file_mounts"]["~/modelpool"] == ".", "the checked-out version is what nodes install"
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "-e ~/modelpool" in setup
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in setup and "RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in setup
    head = config["head_start_ray_commands"]
    assert any("ray start --head" in c for c in head)
    assert head[-1].startswith("modelpool start --address auto"), "modelpool joins the cluster the head started"
    assert all("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"] if "ray start" in c)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_object_storage_is_set_in_exactly_one_place(path):
    text = path.read_text()
    assert text.count("MODELPOOL_OBJECT_STORE=") == 1
    assert "MODELPOOL_OBJECT_STORE=s3://" in text


def test_the_cloud_config_has_an_autoscaling_cpu_worker_type():
    config = load(CONFIGS[0])
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert workers and all(t["max_workers"] > t["min_workers"] for t in workers.values())
    assert "--http-host 0.0.0.0" in config["head_start_ray_commands"][-1], "reachable from a load balancer"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_gets_the_same_ray_token_and_token_auth(path):
    """Ray's launcher does nothing about tokens: `ray start` with RAY_AUTH_MODE=token refuses to run without one,
    and every node must hold the same one. file_mounts carries the user's ~/.ray/auth_token to the head, and the head
    carries it on to every worker it launches; the mode is exported where Ray's commands run (bash -i reads ~/.bashrc)."""
    config = load(path)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = config["setup_commands"]
    auth = [c for c in setup if "RAY_AUTH_MODE" in c]
    assert len(auth) == 1 and "export RAY_AUTH_MODE=token' >> ~/.bashrc" in auth[0]
    assert "chmod 600 ~/.ray/auth_token" in auth[0], "the token is the key to the cluster: owner-only on every node"
    start = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("RAY_AUTH_MODE=disabled" in c or "RAY_AUTH_TOKEN=" in c for c in setup + start), "no token in the config"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_installing_is_one_setup_command(path):
    """tests/multinode/test_ray_up_local.py swaps exactly this command (a venv already installed) and keeps the rest."""
    setup = load(path)["setup_commands"]
    assert len([c for c in setup if "pip install" in c]) == 1


@pytest.mark.parametrize("path", [ROOT / "cluster.yaml", ROOT / "cluster" / "local.yaml"])
def test_every_node_gets_the_environment_modelpool_start_uses(path):
    """The HAProxy ingress, token auth and node health checks, as `modelpool start` sets them locally."""
    from modelpool.cluster.runtime import SERVE_ENV

    setup = " ".join(yaml.safe_load(path.read_text())["setup_commands"])
    for key, value in SERVE_ENV.items():
        if key != "RAY_USAGE_STATS_ENABLED":  # the start commands pass --disable-usage-stats
            assert f"{key}={value}" in setup, key


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_head_bound_beyond_loopback_gets_a_management_token_from_a_mounted_file(path):
    """`modelpool start` refuses a non-loopback --http-host without a configured token (issue 7). The cloud head
    binds 0.0.0.0, so the operator's token file is mounted and exported on the head; the token itself is in
    neither the config nor a command line (where `ps` would show it)."""
    import re

    from modelpool.cluster.net import is_loopback_host
    from modelpool.cluster.settings import check_exposure, load_settings

    config = load(path)
    start = config["head_start_ray_commands"][-1]
    host = re.search(r"--http-host (\S+)", start)
    if host is None or is_loopback_host(host.group(1)):
        check_exposure(load_settings({"http_host": host.group(1) if host else "127.0.0.1"}, {}))
        return  # cluster/local.yaml: loopback, where the generated token is fine
    token_file = "~/.modelpool/cluster_management_token"
    assert config["file_mounts"][token_file] == token_file
    exports = [c for c in config["head_setup_commands"] if "MODELPOOL_MANAGEMENT_TOKEN" in c]
    assert len(exports) == 1
    assert f"chmod 600 {token_file}" in exports[0]
    assert f"""echo 'export MODELPOOL_MANAGEMENT_TOKEN="$(cat {token_file})"' >> ~/.bashrc""" in exports[0]
    assert "--management-token" not in " ".join(config["head_start_ray_commands"])
    check_exposure(load_settings({"http_host": host.group(1)}, {"MODELPOOL_MANAGEMENT_TOKEN": "x" * 43}))
