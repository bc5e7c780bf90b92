"""modelpool: a model-serving cluster on Ray Serve; this package is its public face and client side.

    from modelpool import Client, NotFound
    with Client("http://127.0.0.1:8000") as c:
        print(c.get_service("iris").predict([[5.1, 3.5, 1.4, 0.2]]))

``Client`` (requests) and ``AsyncClient`` (httpx, asyncio) are imported on first use, so
``import modelpool`` (what the ``modelpool`` command does first) stays light: the errors and
``__version__`` need neither numpy nor an HTTP library.
"""
from __future__ import annotations

from typing import Any

from modelpool.cluster.version import __version__
from modelpool.errors import BadRequest, Conflict, ModelpoolError, NotFound, Overloaded, Unauthorized

__all__ = ["AsyncClient", "BadRequest", "Client", "Conflict", "ModelpoolError", "NotFound", "Overloaded", "Unauthorized",
           "__version__"]

_LAZY = {"Client": "modelpool.client", "AsyncClient": "modelpool.async_client"}


def __getattr__(name: str) -> Any:
    """``modelpool.Client`` and ``modelpool.AsyncClient``, imported when first asked for (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelpool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
