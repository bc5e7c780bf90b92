"""Request parameters of the management API, validated once, with errors that name the field.

Names follow the APIs they come from: the MXNet Model Server / TorchServe management API for models
(``model_name``, ``initial_workers``, ``max_batch_delay`` in ms, ``response_timeout`` in s) and
Machine Learning Server for pools (``initial_pool_size``, ``max_pool_size``). Their conventions hold
too: an empty query value (``?limit=&next_page_token=``) is the parameter's default, ``runtime`` is
case-insensitive (``PYTHON`` is the documented default), and a scale's ``timeout`` is ``-1`` (no limit),
``0`` (at once) or seconds. Values that are not of the parameter's type are 400s naming it, where
TorchServe silently takes the default.
"""
from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelpool.cluster.settings import DEFAULT_RESPONSE_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S
from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import ServiceType
from modelpool.deployments.parameters import parse_parameters

SERVICE_TYPES = get_args(ServiceType)

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]+$"


def check_idempotency_key(key: Optional[str]) -> Optional[str]:
    """An ``Idempotency-Key`` header as given, or a 400 naming it (1-128 of ``A-Z a-z 0-9 . _ : -``)."""
    if key is not None and not (1 <= len(key) <= 128 and re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key)):
        raise RequestError("Idempotency-Key must be 1 to 128 of A-Z a-z 0-9 . _ : - (a UUID will do)",
                           field="Idempotency-Key")
    return key


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Fields whose empty value is an error rather than the default (headers, which no client sends empty by accident).
    _keep_empty: ClassVar[tuple[str, ...]] = ("idempotency_key",)

    @classmethod
    def parse(cls, values: dict[str, Any]) -> "_Params":
        """Validate query values (strings) or JSON values; the first error becomes a 400 naming its field.

        ``None`` and empty strings are left out, so they take the default: TorchServe's clients send
        ``?limit=&next_page_token=`` for "no limit given" and its regression suite expects a listing.
        """
        try:
            return cls(**{k: v for k, v in values.items() if v is not None and (v != "" or k in cls._keep_empty)})
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error.get("loc", ())) or None
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            if field is None and message.split(" ", 1)[0] in cls.model_fields:
                field = message.split(" ", 1)[0]  # a cross-field check names its field first
            elif error.get("type") == "extra_forbidden":
                allowed = ", ".join(cls.model_fields)
                message = f"unknown parameter; accepted parameters are: {allowed}"
            elif field:
                message = f"{field}: {message}"
            raise RequestError(message, status=400, field=field) from None


#: Runtimes TorchServe's manifests name that mean "a Python handler" here (case-insensitive).
PYTHON_RUNTIMES = ("python", "python3")
#: A scale's ``timeout``: no limit of its own (MMS and TorchServe's default).
NO_TIMEOUT = -1
MAX_QUEUED_DESCRIPTION = ("requests that may wait at a replica beyond those it runs; past them a call gets 429 with "
                          "Retry-After at once (TorchServe's job_queue_size). -1: no limit, 0: none wait; default: "
                          "the server's --max-queued-requests; a scale changes it live, without a restart")


class RegisterParams(_Params):
    url: str = Field(min_length=1, max_length=4096)
    model_name: Optional[str] = None
    handler: Optional[str] = Field(None, min_length=1, max_length=256, description=(
        "overrides the manifest's handler (MMS): 'module:function', 'module', 'module.py' or 'sklearn', "
        "checked against the archive like the manifest's own"))
    runtime: str = Field("python", description="PYTHON (the default; any case) or python3: handlers are Python")
    batch_size: Optional[int] = Field(None, ge=1, le=100_000)
    max_batch_delay: Optional[float] = Field(None, ge=0, le=60_000, description="milliseconds")
    initial_workers: int = Field(0, ge=0, le=1024)
    synchronous: bool = False
    response_timeout: float = Field(DEFAULT_RESPONSE_TIMEOUT_S, gt=0, le=3600, description="seconds a call may take: past it the "
                                    "caller gets 504 and a replica whose handler still runs is replaced")
    startup_timeout: float = Field(DEFAULT_STARTUP_TIMEOUT_S, gt=0, le=3600, description="seconds a synchronous registration waits for "
                                   "its workers to start (TorchServe's startup_timeout)")
    max_queued_requests: Optional[int] = Field(None, ge=-1, le=1_000_000, description=MAX_QUEUED_DESCRIPTION)
    idempotency_key: Optional[str] = Field(None, min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN,
                                           description="the Idempotency-Key header: a retry with the same key "
                                                       "gets the first answer again instead of a 409")
    service_type: Optional[str] = Field(None, max_length=32, description=(
        "Seldon's --service-type, over the manifest's: MODEL, TRANSFORMER, ROUTER, COMBINER or OUTLIER_DETECTOR "
        "(the handler's role in inference graphs)"))
    parameters: Optional[Union[str, list]] = Field(None, description=(
        "Seldon's --parameters, over the manifest's: a JSON list of {name, type, value} handed, typed, to the "
        "handler class's constructor"))

    @field_validator("service_type")
    @classmethod
    def _service_type(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        if value.upper() not in SERVICE_TYPES:
            raise ValueError(f"service_type {value!r} is not one of {', '.join(SERVICE_TYPES)}")
        return value.upper()

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: Optional[Union[str, list]]) -> Optional[list]:
        if value is None:
            return None
        try:
            parse_parameters(value)
        except RequestError as exc:
            raise ValueError(exc.message) from None
        return json.loads(value) if isinstance(value, str) else value

    def manifest_overrides(self) -> dict:
        """What register writes over the archive's manifest (``archive_formats.REGISTERED_NAME``)."""
        overrides: dict = {}
        if self.service_type is not None:
            overrides["service_type"] = self.service_type
        if self.parameters is not None:
            overrides["parameters"] = self.parameters
        return overrides

    @model_validator(mode="after")
    def _runtime(self) -> "RegisterParams":
        if self.runtime.lower() not in PYTHON_RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} cannot run here: use PYTHON (the default, any case) or "
                             "python3 (handlers are Python: 'sklearn' or 'module:attr')")
        self.runtime = "python"  # one spelling in the registry and in describe, as TorchServe reports it
        return self


class ScaleParams(_Params):
    min_worker: Optional[int] = Field(None, ge=0, le=1024)
    max_worker: Optional[int] = Field(None, ge=0, le=1024)
    number_gpu: Optional[int] = Field(None, ge=0, le=1024)
    batch_size: Optional[int] = Field(None, ge=1, le=100_000)
    max_batch_delay: Optional[float] = Field(None, ge=0, le=60_000)
    max_queued_requests: Optional[int] = Field(None, ge=-1, le=1_000_000, description=MAX_QUEUED_DESCRIPTION)
    synchronous: bool = False
    timeout: float = Field(NO_TIMEOUT, ge=NO_TIMEOUT, le=3600, description=(
        "seconds the change may take (MMS): workers being stopped finish their pending requests within it and a "
        "synchronous call waits for it; 0 stops workers at once and answers at once, -1 (default) sets no limit "
        "of its own (requests end within response_timeout, workers start within the model's startup_timeout)"))
    model_version: Optional[str] = Field(None, max_length=64, description="the version to scale when the path names "
                                         "none (TorchServe's query form); default: the default version")

    @model_validator(mode="after")
    def _bounds(self) -> "ScaleParams":
        if self.min_worker is not None and self.max_worker is not None and self.min_worker > self.max_worker:
            raise ValueError(f"min_worker ({self.min_worker}) must not exceed max_worker ({self.max_worker})")
        if -1 < self.timeout < 0:
            raise ValueError(f"timeout {self.timeout:g} is not one MMS defines: use -1 (no limit), 0 (at once) or "
                             "seconds")
        return self


class PoolParams(_Params):
    initial_pool_size: int = Field(ge=1, le=1024)
    max_pool_size: int = Field(ge=1, le=1024)

    @model_validator(mode="after")
    def _bounds(self) -> "PoolParams":
        if self.initial_pool_size > self.max_pool_size:
            raise ValueError(f"initial_pool_size ({self.initial_pool_size}) must not exceed max_pool_size ({self.max_pool_size})")
        return self


class ListParams(_Params):
    limit: int = Field(100, ge=1, le=1000)
    next_page_token: int = Field(0, ge=0, le=10_000_000, description="the nextPageToken of the previous page: as in "
                                 "TorchServe, the position of the page's first model in name order")
