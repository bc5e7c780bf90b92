"""JSON plumbing the JSON codecs share: parsing a body, flattening nested arrays, naming values in errors.

Nothing here knows a wire format; ``v2_json`` and ``plain_json`` build their messages on these.
"""
from __future__ import annotations

import json
from itertools import chain
from typing import Any, Union

import numpy as np

from modelpool.deployments.errors import RequestError

ARRAY_TYPES = frozenset({list, tuple})

def load_object(body: Any, example: str) -> dict:
    """Parse the body (or take an already-parsed dict) and insist on a JSON object."""
    if isinstance(body, dict):
        return body
    if isinstance(body, memoryview):
        body = body.tobytes()
    if not isinstance(body, (bytes, bytearray, str)):
        raise RequestError(f"request body must be JSON text, got {type(body).__name__}; send a JSON object such as "
                           f"{example}", field="body")
    if not body.strip():
        raise RequestError(f"request body is empty; send a JSON object such as {example}", field="body")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"request body is not valid JSON ({json_error_reason(exc)}); send a JSON object such as "
                           f"{example}", field="body") from None
    if type(parsed) is not dict:
        raise RequestError(f"request body is {describe(parsed)}; send a JSON object such as {example}", field="body")
    return parsed

def json_error_reason(exc: BaseException) -> str:
    """Say why in client terms (Python's own messages for some of these point at Python settings)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return "a number in it has too many digits"  # int() refuses more than 4300 digits

def json_bytes(body: Any) -> bytes:
    """Compact JSON (smaller bodies, faster to write); numpy scalars and arrays are accepted anywhere."""
    return json.dumps(body, separators=(",", ":"), default=_json_default).encode()

def _json_default(value: Any) -> Any:
    """Only called for values json cannot serialise itself, so the common path pays nothing."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

def flatten(data: Union[list, tuple], field: str, hint: str, field_depth: int = 0) -> tuple[list, list[int], set]:
    """Flatten rectangular nested lists level by level, with C-speed passes and no recursion.

    Returns (row-major leaf values, the dimensions walked, the set of leaf types). Raggedness and
    mixed depth are found per level; only then does a Python loop run, to name the element at fault.
    ``field_depth`` index components of that element are kept in the error's field (1 gives
    "instances[3]"), the rest go in the message only.
    """
    nodes: list = data if type(data) is list else list(data)
    dims = [len(nodes)]
    while True:
        types = set(map(type, nodes))
        arrays = types & ARRAY_TYPES
        if not arrays:
            return nodes, dims, types
        if arrays != types:
            first_is_array = type(nodes[0]) in ARRAY_TYPES
            k = next(k for k, node in enumerate(nodes) if (type(node) in ARRAY_TYPES) != first_is_array)
            at, first = locate(k, dims, field), locate(0, dims, field)
            raise RequestError(f"{at} is {describe(nodes[k])} but {first} is {describe(nodes[0])}; {hint}",
                               field=field_at(k, dims, field, field_depth))
        lengths = set(map(len, nodes))
        if len(lengths) > 1:
            width = len(nodes[0])
            k = next(k for k, node in enumerate(nodes) if len(node) != width)
            at, first = locate(k, dims, field), locate(0, dims, field)
            raise RequestError(f"{at} has length {len(nodes[k])} but {first} has length {width}; {hint}",
                               field=field_at(k, dims, field, field_depth))
        dims.append(lengths.pop())
        nodes = list(chain.from_iterable(nodes))

def fits_float(value: Any) -> bool:
    """Python ints can be far larger than any float; only those fail here."""
    try:
        float(value)
    except (OverflowError, TypeError, ValueError):
        return False
    return True

def _index(k: int, dims: list[int]) -> list[int]:
    """Row-major flat position -> nested index, for pointing at one element in a message."""
    index: list[int] = []
    for size in reversed(dims):
        k, rest = divmod(k, size)
        index.append(rest)
    return index[::-1]

def locate(k: int, dims: list[int], field: str) -> str:
    return field + "".join(f"[{i}]" for i in _index(k, dims))

def field_at(k: int, dims: list[int], field: str, depth: int) -> str:
    return field + "".join(f"[{i}]" for i in _index(k, dims)[:depth])

def describe(value: Any) -> str:
    """Name a JSON value as the client wrote it, short and safe (no 100k-digit ints in messages)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return show_int(value)
    if kind is float:
        return repr(value)
    if kind is str:
        return "the string " + json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
    if kind in ARRAY_TYPES:
        return "an array"
    if kind is dict:
        return "an object"
    return f"a {kind.__name__}"

def show_int(value: int) -> str:
    """str() refuses ints past 4300 digits, and a product of JSON dims can be that long."""
    return str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"

def show_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(show_int(d) for d in shape) + "]"
