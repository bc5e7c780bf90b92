"""Every setting is a flag and an environment variable; bad values name the flag."""
import argparse

import pytest

from modelpool.cluster.settings import Settings, SettingsError, add_settings_arguments, env_name, flag_name, load_settings, settings_from_args


def test_flag_beats_environment_beats_default():
    assert load_settings({}, {}).http_port == 8000
    assert load_settings({}, {"MODELPOOL_HTTP_PORT": "9000"}).http_port == 9000
    assert load_settings({"http_port": "9100"}, {"MODELPOOL_HTTP_PORT": "9000"}).http_port == 9100


def test_every_setting_has_a_flag_and_an_env_var():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    for field in Settings.model_fields:
        args = parser.parse_args([])
        assert getattr(args, field) is None
        assert env_name(field) == "MODELPOOL_" + field.upper()
        assert flag_name(field) in parser.format_help()


def test_boolean_flags_have_a_negative_form():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    assert settings_from_args(parser.parse_args(["--no-examples"])).examples is False
    assert load_settings({}, {"MODELPOOL_EXAMPLES": "false"}).examples is False


def test_bad_values_name_the_flag_and_the_variable():
    with pytest.raises(SettingsError, match="--http-port / MODELPOOL_HTTP_PORT"):
        load_settings({"http_port": "eighty"}, {})
    with pytest.raises(SettingsError, match="--replica-num-cpus"):
        load_settings({}, {"MODELPOOL_REPLICA_NUM_CPUS": "0"})
    with pytest.raises(SettingsError, match="--threads"):
        load_settings({"threads": "8", "max_batch_size": "64"}, {})
    with pytest.raises(SettingsError, match="--workers"):
        load_settings({"workers": "5", "max_workers": "2"}, {})


def test_ray_address_is_honoured():
    assert load_settings({}, {"RAY_ADDRESS": "10.0.0.1:6379"}).address == "10.0.0.1:6379"


def test_proxy_location_is_checked_at_start():
    assert load_settings({}, {"MODELPOOL_PROXY_LOCATION": "HeadOnly"}).proxy_location == "HeadOnly"
    with pytest.raises(SettingsError, match="proxy-location"):
        load_settings({"proxy_location": "Everywhere"}, {})
