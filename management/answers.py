"""The status texts of the model API, word for word as TorchServe answers them.

Clients written against TorchServe print these, and some match them, so they are TorchServe's own,
including the advice in the no-worker registration (here a model without workers is served by the
generic pool, and scaling gives it workers of its own, so the advice still holds). The HTTP codes go
with them: 202 only while workers start asynchronously, 200 otherwise.
"""
from __future__ import annotations

from typing import Optional

#: 202: workers are starting asynchronously (register with workers, or scale, without ``synchronous``).
PROCESSING = "Processing worker updates..."


def registered(name: str, version: str, workers: int) -> str:
    """Register's 200: with no workers asked for, or once the asked-for workers run (``synchronous``)."""
    if not workers:
        return (f'Model "{name}" Version: {version} registered with 0 initial workers. '
                "Use scale workers API to add workers for the model.")
    return f'Model "{name}" Version: {version} registered with {workers} initial workers'


def scaled(name: str, workers: int, version: Optional[str] = None) -> str:
    """A synchronous scale's 200; the version is named when the request named one."""
    return f"Workers scaled to {workers} for model: {name}" + (f", version: {version}" if version else "")


def unregistered(name: str) -> str:
    return f'Model "{name}" unregistered'


def default_set(name: str, version: str) -> str:
    return f'Default version successfully updated for model "{name}" to "{version}"'
