"""OpenAPI 3.1 (what FastAPI and pydantic write) as OpenAPI 3.0.1 (what MMS and TorchServe answer).

Client generators written for MMS and TorchServe (swagger-codegen among them) read 3.0, whose
schemas are an older dialect of JSON Schema. The differences that occur in modelpool's description
are rewritten here, inside schema objects only (a parameter's ``required`` is not a schema's):

- ``"type": ["string", "null"]`` and ``anyOf`` with a ``{"type": "null"}`` branch -> ``"nullable": true``
- ``const`` -> a one-value ``enum``
- numeric ``exclusiveMinimum``/``exclusiveMaximum`` -> ``minimum``/``maximum`` with the boolean flag
- ``examples`` (a list) -> ``example`` (its first)
- ``contentMediaType``/``contentEncoding`` -> ``format: binary``

Pure: a new document, the input untouched.
"""
from __future__ import annotations

import copy
from typing import Any

VERSION = "3.0.1"
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_VALUES = ("items", "not", "additionalProperties")


def to_openapi_30(spec: dict[str, Any]) -> dict[str, Any]:
    """The same description in OpenAPI 3.0.1."""
    spec = copy.deepcopy(spec)
    spec["openapi"] = VERSION
    components = spec.get("components", {})
    for name, schema in list(components.get("schemas", {}).items()):
        components["schemas"][name] = schema_30(schema)
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                _operation_30(operation)
    return spec


def _operation_30(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if "schema" in parameter:
            parameter["schema"] = schema_30(parameter["schema"])
    body = operation.get("requestBody", {})
    _content_30(body.get("content", {}))
    for response in operation.get("responses", {}).values():
        _content_30(response.get("content", {}))
        for header in response.get("headers", {}).values():
            if "schema" in header:
                header["schema"] = schema_30(header["schema"])


def _content_30(content: dict[str, Any]) -> None:
    for media in content.values():
        if "schema" in media:
            media["schema"] = schema_30(media["schema"])


def schema_30(schema: Any) -> Any:
    """One JSON Schema (2020-12, as OpenAPI 3.1 uses) as an OpenAPI 3.0 schema object."""
    if not isinstance(schema, dict):
        return schema
    schema = dict(schema)
    for key in _SCHEMA_LISTS:
        if key in schema:
            schema[key] = [schema_30(item) for item in schema[key]]
    for key in _SCHEMA_MAPS:
        if key in schema:
            schema[key] = {name: schema_30(item) for name, item in schema[key].items()}
    for key in _SCHEMA_VALUES:
        if isinstance(schema.get(key), dict):
            schema[key] = schema_30(schema[key])
    if "prefixItems" in schema:  # a tuple: 3.0 knows only one schema for every item
        items = schema.pop("prefixItems")
        schema.setdefault("items", items[0] if len(items) == 1 else {"anyOf": items})
    kind = schema.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        if len(types) < len(kind):
            schema["nullable"] = True
        if len(types) == 1:
            schema["type"] = types[0]
        else:
            del schema["type"]
            schema["anyOf"] = [{"type": t} for t in types]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [option for option in schema[key] if option != {"type": "null"}]
            if len(options) < len(schema[key]):
                schema["nullable"] = True
            if len(options) == 1 and set(schema) <= {key, "nullable", "title", "description", "default"}:
                del schema[key]
                schema = {**options[0], **schema}
            else:
                schema[key] = options
    if "$ref" in schema and len(schema) > 1:  # 3.0 ignores a $ref's siblings: wrap it to keep them
        schema = {**{k: v for k, v in schema.items() if k != "$ref"}, "allOf": [{"$ref": schema["$ref"]}]}
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(bound), (int, float)) and not isinstance(schema.get(bound), bool):
            schema[flag] = schema.pop(bound)
            schema[bound] = True
    if "examples" in schema:
        examples = schema.pop("examples")
        if isinstance(examples, list) and examples:
            schema.setdefault("example", examples[0])
    if schema.pop("contentMediaType", None) is not None or schema.pop("contentEncoding", None) is not None:
        schema["format"] = "binary"
    return schema
