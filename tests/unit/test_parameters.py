"""Seldon's parameters: typed as Seldon types them, each bad one a 400 naming its place and the fix."""
from __future__ import annotations

import json

import pytest

from modelpool.deployments.errors import RequestError
from modelpool.deployments.parameters import parse_parameters


def test_seldons_string_values_are_converted_by_type() -> None:
    seldon = json.dumps([{"name": "n_rounds", "type": "INT", "value": "3"},
                         {"name": "threshold", "type": "FLOAT", "value": "0.25"},
                         {"name": "scale", "type": "DOUBLE", "value": "1e3"},
                         {"name": "label", "type": "STRING", "value": "iris"},
                         {"name": "verbose", "type": "BOOL", "value": "True"},
                         {"name": "classes", "type": "JSON", "value": "[\"a\", \"b\"]"}])
    assert parse_parameters(seldon) == {"n_rounds": 3, "threshold": 0.25, "scale": 1000.0, "label": "iris",
                                        "verbose": True, "classes": ["a", "b"]}


def test_native_json_values_and_an_empty_list_work_too() -> None:
    assert parse_parameters([{"name": "k", "type": "INT", "value": 4}, {"name": "on", "type": "BOOL", "value": False},
                             {"name": "cfg", "type": "JSON", "value": {"a": 1}}]) == {"k": 4, "on": False, "cfg": {"a": 1}}
    assert parse_parameters(None) == {} == parse_parameters("") == parse_parameters([])
    typed = parse_parameters([{"name": "x", "value": "plain"}])
    assert typed == {"x": "plain"}, "STRING is the default type"
    typed = parse_parameters([{"name": "k", "type": "DOUBLE", "value": 4}, {"name": "s", "type": "STRING", "value": 5}])
    assert typed == {"k": 4.0, "s": "5"} and [type(v) for v in typed.values()] == [float, str]


@pytest.mark.parametrize("raw, field, words", [
    ("[{", "parameters", "not JSON"),
    ({"name": "x"}, "parameters", "must be a list"),
    ([{"name": "n", "type": "INT", "value": "three"}], "parameters[0].value", "type INT"),
    ([{"name": "n", "type": "INT", "value": 2.5}], "parameters[0].value", "not an integer"),
    ([{"name": "f", "type": "FLOAT", "value": True}], "parameters[0].value", "not a number"),
    ([{"name": "b", "type": "BOOL", "value": "maybe"}], "parameters[0].value", "not a boolean"),
    ([{"name": "j", "type": "JSON", "value": "{oops"}], "parameters[0].value", "type JSON"),
    ([{"name": "ok", "value": "1"}, {"name": "bad name", "value": "1"}], "parameters[1].name", "pattern"),
    ([{"name": "t", "type": "TENSOR", "value": "1"}], "parameters[0].type", "INT|FLOAT"),
    ([{"name": "t", "value": "1", "colour": "red"}], "parameters[0].colour", "Extra inputs"),
    ([{"name": "t", "value": "1"}, {"name": "t", "value": "2"}], "parameters[1]", "given twice"),
])
def test_each_bad_parameter_names_its_place(raw, field: str, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_parameters(raw)
    assert caught.value.status == 400 and caught.value.field == field and words in caught.value.message
