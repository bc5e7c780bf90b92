"""A Kubernetes CRD's ``openAPIV3Schema`` as a JSON-schema validator that is stricter than the API server where the
server is silent.

Kubernetes checks a custom resource against a *structural* OpenAPI v3 schema, with extensions JSON schema does not
know. They are mapped as the API server reads them:

- ``x-kubernetes-int-or-string: true``: an integer or a string (resource quantities, ports by name);
- ``nullable: true``: null is accepted too;
- ``x-kubernetes-preserve-unknown-fields: true``: fields the schema does not list are kept, so they are allowed;
- ``x-kubernetes-embedded-resource: true``: ``apiVersion``, ``kind`` and ``metadata`` are implied.

Every other object that lists its ``properties`` gets ``additionalProperties: false``. The API server *prunes* such
unknown fields without a word, so a misspelt key in a manifest is silently lost; here it is an error. CEL rules
(``x-kubernetes-validations``) and list-map keys are not evaluated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

_EMBEDDED = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}


def to_json_schema(node: Any) -> Any:
    """The JSON-schema reading of one structural-schema node (recursively)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: to_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource"):
        schema["properties"] = {**_EMBEDDED, **schema.get("properties", {})}
    if schema.pop("nullable", False):
        kind = schema.get("type")
        if isinstance(kind, str):
            schema["type"] = [kind, "null"]
    if "properties" in schema and "additionalProperties" not in schema \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


def crd_schema(crd: dict, version: str) -> dict:
    """The JSON schema of ``version`` of a CustomResourceDefinition."""
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return to_json_schema(served["schema"]["openAPIV3Schema"])
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def load_yaml(path: Path) -> Any:
    """One YAML document; libyaml's loader when there is one (the RayService CRD is 1 MB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as handle:
        return yaml.load(handle, Loader=loader)


def validator(crd_path: Path, version: str) -> jsonschema.Draft7Validator:
    schema = crd_schema(load_yaml(crd_path), version)
    return jsonschema.Draft7Validator(schema)


def problems(check: jsonschema.Draft7Validator, resource: dict) -> list[str]:
    """Each error as ``path: message``, in document order."""
    return [f"{'.'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
            for error in sorted(check.iter_errors(resource), key=lambda e: [str(p) for p in e.absolute_path])]
