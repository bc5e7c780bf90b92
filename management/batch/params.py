"""The body of ``POST /batches``, validated once, with errors that name the field (as ``modelpool.management.params`` does
for the model routes).

Names and defaults follow Machine Learning Server's batch API (``parallel_count``); the body names one
registered model version (``service``, ``version``: the default one when left out) and exactly one input:
``records`` (rows sent inline) or ``input_uri`` (a Parquet, CSV or TSV object). Unknown keys are ignored,
as before these were typed.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelpool.deployments.errors import RequestError

DEFAULT_PARALLEL_COUNT = 10
MAX_PARALLEL_COUNT = 1000
BODY_SHAPE = '{"service", "version", "records" | "input_uri", "parallel_count"}'
INPUT_URI_SCHEMES = ("s3://", "objects://")


class BatchParams(BaseModel):
    """What a batch job scores: a model version, and records or an input_uri, in parallel_count partitions."""

    # service is required, but checked (with its own message) by the validator below, not by pydantic
    model_config = ConfigDict(json_schema_extra={"required": ["service"]})

    service: Optional[str] = Field(None, validate_default=True, description="the registered model's name")
    version: Optional[str] = Field(None, description="the model's version; default: its default version")
    parallel_count: Any = Field(DEFAULT_PARALLEL_COUNT, validate_default=True, json_schema_extra={
        "type": "integer", "minimum": 1, "maximum": MAX_PARALLEL_COUNT}, description="Ray tasks scoring at once")
    records: Any = Field(None, json_schema_extra={"type": "array", "items": {"type": ["array", "object"]}},
                         description="rows to score: objects (column -> value) or lists")
    input_uri: Any = Field(None, json_schema_extra={"type": "string"}, description=(
        "s3://bucket/key or objects://key: Parquet (.parquet, .pq), CSV (.csv) or TSV (.tsv, .tab), CSV and TSV "
        "with a header line and optionally compressed (.gz, .bz2, .zst, .lz4); another name is read as Parquet, "
        "else as TSV when its first line has a tab and no comma, else as CSV"))

    @field_validator("service", mode="before")
    @classmethod
    def _service(cls, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError("service is required: the registered model's name")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Optional[str]:
        if value is not None and not isinstance(value, str):
            raise ValueError("version must be a string")
        return value

    @field_validator("parallel_count", mode="before")
    @classmethod
    def _parallel_count(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL_COUNT:
            raise ValueError(f"parallel_count must be an integer from 1 to {MAX_PARALLEL_COUNT} (Ray tasks scoring "
                             "at once)")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> "BatchParams":
        """records or input_uri, judged together; the message starts with the field it names (see ``parse``)."""
        has_records, has_uri = "records" in self.model_fields_set, "input_uri" in self.model_fields_set
        if has_records == has_uri:
            raise ValueError("records: send exactly one of records (a list of rows) or input_uri (Parquet, CSV or "
                             "TSV in object storage)")
        if has_records and not isinstance(self.records, list):
            raise ValueError("records: records must be a list of rows (objects or lists)")
        if has_uri and (not isinstance(self.input_uri, str) or not self.input_uri.startswith(INPUT_URI_SCHEMES)):
            raise ValueError("input_uri: input_uri must be s3://bucket/key or objects://key (a key of the configured "
                             "object store)")
        return self

    @classmethod
    def parse(cls, body: Any) -> "BatchParams":
        """The parsed JSON body, or a 400 naming the first field that is wrong."""
        if not isinstance(body, dict):
            raise RequestError(f"send a JSON object: {BODY_SHAPE}", field="body")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            error = exc.errors()[0]
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            field = ".".join(str(part) for part in error.get("loc", ()))
            if not field:  # a check across fields names its field first
                field, _, message = message.partition(": ")
            raise RequestError(message, field=field) from None
