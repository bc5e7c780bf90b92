"""Seldon's ``--parameters``: a list of ``{"name", "type", "value"}`` handed, typed, to a handler's constructor.

Seldon's Python server takes them as a JSON list whose values are strings (``"value": "3"`` with
``"type": "INT"``) and converts each by its type before the model class sees it. The same list is
accepted here (in the archive manifest and at register), with native JSON values too, and checked once:
a value that does not convert is a 400 naming ``parameters[i]`` and the type it must have, so a typo
never reaches a replica that would fail to start.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelpool.deployments.errors import RequestError

ParameterType = Literal["INT", "FLOAT", "DOUBLE", "STRING", "BOOL", "JSON"]
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("not a boolean (true/false, 1/0)")


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("not an integer")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("not a number")
    return float(value)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _string(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("not a string")
    return str(value)


CONVERT: dict[str, Callable[[Any], Any]] = {
    "INT": _int, "FLOAT": _float, "DOUBLE": _float, "STRING": _string, "BOOL": _bool, "JSON": _json}


class Parameter(BaseModel):
    """One parameter as Seldon writes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    type: ParameterType = "STRING"
    value: Union[str, int, float, bool, list, dict, None]


def parse_parameters(raw: Any, where: str = "parameters") -> dict[str, Any]:
    """The list (or its JSON text, as Seldon's flag takes it) -> ``{name: typed value}``, in order."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RequestError(f"{where} is not JSON ({exc.msg}); send a list such as "
                               '[{"name": "threshold", "type": "FLOAT", "value": "0.5"}]', field=where) from None
    if not isinstance(raw, list):
        raise RequestError(f'{where} must be a list of {{"name", "type", "value"}} objects', field=where)
    typed: dict[str, Any] = {}
    for index, item in enumerate(raw):
        field = f"{where}[{index}]"
        try:
            parameter = Parameter.model_validate(item)
        except ValidationError as exc:
            error = exc.errors()[0]
            part = ".".join(str(p) for p in error["loc"]) or "item"
            raise RequestError(f"{field}.{part}: {error['msg']}; each parameter is "
                               '{"name": <identifier>, "type": INT|FLOAT|DOUBLE|STRING|BOOL|JSON, "value": ...}',
                               field=f"{field}.{part}") from None
        if parameter.name in typed:
            raise RequestError(f"{field}: parameter '{parameter.name}' is given twice; keep one", field=field)
        try:
            typed[parameter.name] = CONVERT[parameter.type](parameter.value)
        except (ValueError, TypeError) as exc:
            raise RequestError(f"{field}: value {str(parameter.value)[:60]!r} of '{parameter.name}' is {exc} "
                               f"for type {parameter.type}; send a value of that type or change the type",
                               field=f"{field}.value") from None
    return typed

