"""Management parameters: MMS / ML Server names, and 400s that name the field."""
import pytest

from deployments.errors import RequestError
from management.params import ListParams, PoolParams, RegisterParams, ScaleParams


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
    with pytest.raises(RequestError, match="runtime must be 'python'"):
        RegisterParams.parse({"url": "x", "runtime": "java"})


def test_an_idempotency_key_is_short_and_plain():
    assert RegisterParams.parse({"url": "a.zip", "idempotency_key": "3f2a-01:x.y_z"}).idempotency_key == "3f2a-01:x.y_z"
    for bad in ("a b", "../x", "k" * 129, ""):
        with pytest.raises(RequestError) as raised:
            RegisterParams.parse({"url": "a.zip", "idempotency_key": bad})
        assert raised.value.field == "idempotency_key"
