"""What every REST codec returns, kept apart so codec modules can import it without a cycle."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

JSON = "application/json"


BODY_ACTIONS = ("infer", "explain")  # the actions whose request body is read


@dataclass(frozen=True)
class Encoded:
    """A response body with its media type and any headers the wire format needs."""

    payload: bytes
    media_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProtocolCall:
    """What a request in another server's URL scheme asks (TorchServe's ``/predictions``, KServe V1's ``/v1``).

    ``action`` is ``infer`` (run the model), ``ready``, ``explain`` or ``models`` (a server-wide list, with no
    ``name``); ``version`` None means the model's default version.
    """

    name: Optional[str]
    version: Optional[str]
    action: str
