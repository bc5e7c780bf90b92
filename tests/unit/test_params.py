"""Management parameters: MMS / ML Server names, and 400s that name the field."""
import pytest

from modelpool.deployments.errors import RequestError
from modelpool.management.params import ListParams, PoolParams, RegisterParams, ScaleParams


def test_query_strings_are_parsed_with_mms_defaults():
    params = RegisterParams.parse({"url": "iris-1.zip", "initial_workers": "2", "synchronous": "true", "max_batch_delay": "2.5"})
    assert (params.initial_workers, params.synchronous, params.max_batch_delay, params.runtime) == (2, True, 2.5, "python")
    assert RegisterParams.parse({"url": "x.zip"}).initial_workers == 0


@pytest.mark.parametrize("cls, values, field", [
    (RegisterParams, {}, "url"),
    (RegisterParams, {"url": "x", "batch_size": "0"}, "batch_size"),
    (RegisterParams, {"url": "x", "initial_workers": "lots"}, "initial_workers"),
    (RegisterParams, {"url": "x", "response_timeout": "-1"}, "response_timeout"),
    (RegisterParams, {"url": "x", "startup_timeout": "0"}, "startup_timeout"),
    (RegisterParams, {"url": "x", "colour": "red"}, "colour"),
    (ScaleParams, {"min_worker": "-1"}, "min_worker"),
    (PoolParams, {"initial_pool_size": "1"}, "max_pool_size"),
    (ListParams, {"limit": "0"}, "limit"),
])
def test_bad_values_name_their_field(cls, values, field):
    with pytest.raises(RequestError) as caught:
        cls.parse(values)
    assert caught.value.status == 400
    assert caught.value.field == field


def test_cross_field_rules_say_what_to_fix():
    with pytest.raises(RequestError, match="min_worker .3. must not exceed max_worker .2.") as scale:
        ScaleParams.parse({"min_worker": "3", "max_worker": "2"})
    assert scale.value.field == "min_worker"
    with pytest.raises(RequestError, match="initial_pool_size") as pool:
        PoolParams.parse({"initial_pool_size": 4, "max_pool_size": 2})
    assert pool.value.field == "initial_pool_size"
    with pytest.raises(RequestError, match="runtime 'java' cannot run here: use PYTHON") as runtime:
        RegisterParams.parse({"url": "x", "runtime": "java"})
    assert runtime.value.field == "runtime"


def test_empty_query_values_take_the_defaults_as_torchserve_does():
    """TorchServe's regression suite lists with ``GET /models?limit=&next_page_token=`` and expects a page."""
    listing = ListParams.parse({"limit": "", "next_page_token": ""})
    assert (listing.limit, listing.next_page_token) == (100, 0)
    register = RegisterParams.parse({"url": "iris-1.zip", "model_name": "", "batch_size": "", "initial_workers": ""})
    assert (register.model_name, register.batch_size, register.initial_workers) == (None, None, 0)
    assert ScaleParams.parse({"min_worker": "", "timeout": ""}).timeout == -1
    with pytest.raises(RequestError) as missing:  # an empty url is no url
        RegisterParams.parse({"url": ""})
    assert missing.value.field == "url"


@pytest.mark.parametrize("runtime", ["PYTHON", "python", "Python", "python3", "PYTHON3"])
def test_runtime_is_case_insensitive_and_recorded_as_torchserve_reports_it(runtime):
    assert RegisterParams.parse({"url": "x.zip", "runtime": runtime}).runtime == "python"


def test_scale_timeout_follows_mms():
    """-1: no limit of its own (the default), 0: at once, N: seconds; anything else names the field."""
    assert ScaleParams.parse({}).timeout == -1
    assert [ScaleParams.parse({"timeout": value}).timeout for value in ("-1", "0", "30", "2.5")] == [-1, 0, 30, 2.5]
    for bad in ("-2", "-0.5", "3601", "soon"):
        with pytest.raises(RequestError) as raised:
            ScaleParams.parse({"timeout": bad})
        assert raised.value.field == "timeout", bad
    assert ScaleParams.parse({"model_version": "2"}).model_version == "2"


def test_list_tokens_are_positions_as_in_torchserve():
    assert ListParams.parse({"limit": "2", "next_page_token": "2"}).next_page_token == 2
    for bad in ("-1", "abc"):
        with pytest.raises(RequestError) as raised:
            ListParams.parse({"next_page_token": bad})
        assert raised.value.field == "next_page_token"


def test_an_idempotency_key_is_short_and_plain():
    assert RegisterParams.parse({"url": "a.zip", "idempotency_key": "3f2a-01:x.y_z"}).idempotency_key == "3f2a-01:x.y_z"
    for bad in ("a b", "../x", "k" * 129, ""):
        with pytest.raises(RequestError) as raised:
            RegisterParams.parse({"url": "a.zip", "idempotency_key": bad})
        assert raised.value.field == "idempotency_key"
