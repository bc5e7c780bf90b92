"""The manifest at the root of every model archive: what the model is called and how to run it.

``name`` and ``version`` become URL path segments and cache directory names, so they are checked
strictly here once and every other layer can trust them. Pydantic validation errors are turned
into :class:`~modelpool.deployments.errors.RequestError` naming the field (``manifest.name`` ...), so callers
only ever handle one error type.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from modelpool.deployments.datatypes import V2_DATATYPES
from modelpool.deployments.errors import RequestError
from modelpool.deployments.parameters import parse_parameters

MANIFEST_NAME = "MANIFEST.json"
ServiceType = Literal["MODEL", "TRANSFORMER", "ROUTER", "COMBINER", "OUTLIER_DETECTOR"]
SKLEARN_HANDLER = "sklearn"

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it is safe as one URL path segment and one directory name."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit and without '..'"
        )
    return value


def check_relative_file(value: str, what: str) -> str:
    """Return ``value`` if it is a plain relative path inside an archive (no escape, no '\\')."""
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or ":" in parts[0] or ".." in parts \
            or "" in parts:
        raise ValueError(
            f"{what} {value!r} must be a relative path inside the archive using '/', "
            "without '..', '\\' or a leading '/'"
        )
    return value


def is_identifier(text: str) -> bool:
    """An ASCII Python identifier: what a handler's module (a file name) and attribute may be."""
    return bool(_IDENTIFIER.fullmatch(text))


def split_handler(handler: str) -> tuple[str, str]:
    """Split ``"module:attr"`` into its parts (caller has validated it)."""
    module, _, attr = handler.partition(":")
    return module, attr


class TensorSpec(BaseModel):
    """One named input or output tensor, in V2 protocol terms."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    datatype: str
    shape: list[int] = Field(default_factory=lambda: [-1])

    @field_validator("datatype")
    @classmethod
    def _datatype(cls, value: str) -> str:
        upper = value.upper()
        if upper not in V2_DATATYPES:
            raise ValueError(
                f"datatype {value!r} is not a V2 datatype; use one of {', '.join(sorted(V2_DATATYPES))}"
            )
        return upper

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: list[int]) -> list[int]:
        if any(dim < -1 for dim in value):
            raise ValueError(f"shape {value} may only hold sizes >= 0 or -1 for a variable size")
        return value


class Manifest(BaseModel):
    """Describes one model version inside an archive (``MANIFEST.json``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = "1"
    handler: str
    runtime: str = "python"
    model_file: Optional[str] = Field(None, validate_default=True)
    files: list[str] = Field(default_factory=list)
    description: str = ""
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)
    #: Seldon's --service-type: the handler's role in an inference graph (``register`` may override it)
    service_type: ServiceType = "MODEL"
    #: Seldon's --parameters: handed, typed, to the handler's constructor (``deployments.parameters``)
    parameters: list[dict[str, Any]] = Field(default_factory=list)

    def __init__(self, **data: Any) -> None:
        """Build and validate; invalid data raises RequestError instead of ValidationError."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise manifest_error(exc) from None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_segment(value, "name")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # "version": 2 in hand-written JSON is harmless
        return check_segment(value, "version")

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        if value == SKLEARN_HANDLER:
            return value
        module, sep, attr = value.partition(":")
        if not sep or not is_identifier(module) or not is_identifier(attr):
            raise ValueError(
                f"handler {value!r} must be 'sklearn' or 'module:attr', where module.py is a file "
                "in the archive and attr a function or class in it"
            )
        return value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str) -> str:
        return check_segment(value, "runtime")

    @field_validator("model_file")
    @classmethod
    def _model_file(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is None:
            if info.data.get("handler") == SKLEARN_HANDLER:
                raise ValueError("the 'sklearn' handler needs model_file: the joblib file of the model")
            return None
        return check_relative_file(value, "model_file")

    @field_validator("files")
    @classmethod
    def _files(cls, value: list[str]) -> list[str]:
        for item in value:
            check_relative_file(item, "file")
            if item == MANIFEST_NAME:
                raise ValueError(f"files must not list {MANIFEST_NAME}; it is written separately")
        if len(set(value)) != len(value):
            raise ValueError("files lists the same file more than once")
        return value

    @field_validator("service_type", mode="before")
    @classmethod
    def _service_type(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value  # Seldon writes "model" too

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            parse_parameters(value)
        except RequestError as exc:
            raise ValueError(exc.message) from None
        return value

    @property
    def typed_parameters(self) -> dict[str, Any]:
        return parse_parameters(self.parameters)

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_tensors(cls, value: list[TensorSpec]) -> list[TensorSpec]:
        names = [spec.name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names must be unique, got {names}")
        return value

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    @classmethod
    def parse(cls, data: Union[str, bytes, dict[str, Any]]) -> "Manifest":
        """Parse MANIFEST.json text or a dict; every problem is a RequestError."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(
                    f"{MANIFEST_NAME} is not valid JSON ({exc}); fix the file or rebuild the archive",
                    field="manifest",
                ) from None
        if not isinstance(data, dict):
            raise RequestError(f"{MANIFEST_NAME} must hold a JSON object", field="manifest")
        return cls(**data)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def manifest_error(exc: ValidationError) -> RequestError:
    """Turn a pydantic error into a RequestError naming the first offending field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    field = ".".join(["manifest", *(str(part) for part in first["loc"])])
    messages = [f"{'.'.join(['manifest', *map(str, e['loc'])])}: {_clean(e)}" for e in errors]
    return RequestError("invalid manifest: " + "; ".join(messages), field=field)


def _clean(error: Any) -> str:
    message = str(error.get("msg", ""))
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if error.get("type") == "extra_forbidden":
        message = "unknown field; put custom settings under 'extra'"
    return message
