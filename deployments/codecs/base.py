"""What every REST codec returns, kept apart so codec modules can import it without a cycle."""
from __future__ import annotations

from dataclasses import dataclass, field

JSON = "application/json"


@dataclass(frozen=True)
class Encoded:
    """A response body with its media type and any headers the wire format needs."""

    payload: bytes
    media_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
