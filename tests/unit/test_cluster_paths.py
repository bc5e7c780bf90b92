"""The home folder and its files are found the same way by the server, the CLI and the client."""
import json

import pytest

from modelpool.cluster import local_cluster, paths
from modelpool.cluster.settings import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_HTTP_URL, DEFAULT_MAX_BODY_BYTES, Settings, SettingsError,
                              env_name, load_settings)


def test_home_is_the_environment_variable_else_dot_modelpool(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.home_dir({}) == tmp_path / ".modelpool"
    assert paths.home_dir({"MODELPOOL_HOME": ""}) == tmp_path / ".modelpool", "empty counts as unset"
    assert paths.home_dir({"MODELPOOL_HOME": "~/elsewhere"}) == tmp_path / "elsewhere"
    assert paths.HOME_ENV == env_name("home"), "the --home setting and the client read one variable"


def test_settings_put_every_file_where_paths_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPOOL_HOME", str(tmp_path / "home"))
    settings = load_settings({}, {})
    assert settings.home_path == paths.home_dir() == tmp_path / "home"
    assert settings.token_path == paths.token_path() == tmp_path / "home" / "management_token"
    assert settings.model_store_path == tmp_path / "home" / "model_store"
    assert settings.cache_path == tmp_path / "home" / "cache"
    assert settings.object_store_uri == str(tmp_path / "home" / "objects")
    assert paths.state_path(settings.home_path) == tmp_path / "home" / "cluster.json"


def test_named_defaults_are_the_settings_defaults():
    settings = Settings()
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024
    assert settings.body_timeout_s == DEFAULT_BODY_TIMEOUT_S == 60.0
    assert settings.http_url == DEFAULT_HTTP_URL == "http://127.0.0.1:8000"


def test_the_state_file_round_trips_and_a_missing_or_torn_one_means_not_running(tmp_path):
    home = tmp_path / "home"
    assert local_cluster.read_state(home) is None
    local_cluster.write_state(home, {"address": "127.0.0.1:6379", "started_here": True, "url": DEFAULT_HTTP_URL})
    assert json.loads((home / "cluster.json").read_text())["address"] == "127.0.0.1:6379"
    assert local_cluster.read_state(home) == {"address": "127.0.0.1:6379", "started_here": True, "url": DEFAULT_HTTP_URL}
    (home / "cluster.json").write_text('{"address": ')
    assert local_cluster.read_state(home) is None


def test_prepare_home_refuses_a_network_host_before_making_anything(tmp_path, monkeypatch):
    # the port checks are test_start_ports.py's; a cluster the suite runs beside holds Serve's fixed ports
    monkeypatch.setattr(local_cluster, "check_can_start", lambda settings: None)
    home = tmp_path / "home"
    settings = load_settings({"home": str(home), "http_host": "0.0.0.0"}, {})
    with pytest.raises(SettingsError, match="--management-token"):
        local_cluster.prepare_home(settings)
    assert not home.exists()
    local_cluster.prepare_home(load_settings({"home": str(home)}, {}))
    assert (home / "model_store").is_dir()
