"""The client's typed errors: a non-2xx answer as the exception a caller can catch by kind.

Pure and light (no numpy, no HTTP library), so ``import modelpool`` can name them cheaply, and the
sync and the asyncio client map answers to errors alike.
"""
from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Optional, Union


class ModelpoolError(Exception):
    """A non-2xx answer: ``status``, the server's ``message`` and the ``field`` it names (or None)."""

    def __init__(self, status: int, message: str, field: Optional[str] = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        where = f", field {field}" if field else ""
        super().__init__(f"{message} (HTTP {status}{where})")


class BadRequest(ModelpoolError):
    """400, 413 or 422: the request itself must change (the field says which part)."""


class Unauthorized(ModelpoolError):
    """401: missing or wrong management token."""


class NotFound(ModelpoolError):
    """404: no such model, version, batch execution or row."""


class Conflict(ModelpoolError):
    """409: the model version is already registered."""


class Overloaded(ModelpoolError):
    """429: the model's replicas are at their queue limit (``max_queued_requests``); retry after a while.

    The client has already retried calls that are safe to repeat for as long as its ``retry_for`` allows,
    each after the ``Retry-After`` the server asked for; this is raised only when that ran out.
    """


_ERRORS: dict[int, type[ModelpoolError]] = {400: BadRequest, 413: BadRequest, 422: BadRequest,
                                             401: Unauthorized, 404: NotFound, 409: Conflict, 429: Overloaded}


def retry_after(status: int, value: Optional[str]) -> Optional[float]:
    """Seconds a 429 or 503 asks the client to wait (``Retry-After``: delay-seconds or an HTTP date), else None.

    Both Serve's router and a replica's port answer a full queue with 429 and ``Retry-After``; Serve answers
    503 with it too when configured so, and HAProxy when no replica could take the call.
    """
    if status not in (429, 503) or not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _project_error(text: str) -> Optional[dict]:
    """The server's ``{"error"|"detail", "field"}`` object, or None for any other body (HAProxy's, HTML, ...)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and ("error" in parsed or "detail" in parsed) else None


def error_from(status: int, body: Union[bytes, str], reason: Optional[str] = None) -> ModelpoolError:
    """The typed error of a failed answer; bodies that are not the project's JSON keep their text.

    Pure (status, body, reason phrase), so the requests and the httpx client map errors alike.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    parsed = _project_error(text)
    if parsed is not None:
        message, field = str(parsed.get("error") or parsed.get("detail")), parsed.get("field")
    else:
        message, field = text.strip() or reason or "request failed", None
    return _ERRORS.get(status, ModelpoolError)(status, message, field)


def is_transient(status: int, body: Union[bytes, str]) -> bool:
    """An answer from the ingress, not from modelpool: nobody took the call (the replica died or restarts).

    modelpool's own errors are JSON with an ``error`` key; HAProxy's are plain text (Serve normalises
    its 502/503/504 to a text 500), so a retry never repeats a call modelpool answered.
    """
    if status not in (500, 502, 503, 504):
        return False
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return _project_error(text) is None
