"""One error type for everything a caller did wrong.

Every layer raises :class:`RequestError` with the HTTP status, a message that says what to do, and
the request field at fault; the HTTP layers turn it into ``{"error": ..., "field": ...}``. Keeping
one type means no layer needs to know how another reports errors.
"""
from __future__ import annotations

import json
from typing import Any, Optional


class RequestError(Exception):
    """A client error (4xx) that names the field at fault and the fix."""

    def __init__(self, message: str, *, status: int = 400, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    def __repr__(self) -> str:
        return f"RequestError(status={self.status}, field={self.field!r}, message={self.message!r})"
