"""One test body for both clients: the sync :class:`Client`, and the asyncio :class:`AsyncClient` seen through
blocking calls on the test's own event loop.

The ``flavour`` fixture (``sync`` / ``async``) gives ``flavour.connect(url, **options)``; with ``async``
every awaitable a method returns is run to its end, and the objects it answers (services, batches) are
viewed the same way, so ``batch.start() is batch``, ``isinstance(svc, flavour.Service)`` and ``with client:``
read alike for both. ``AsyncBatch.state()`` (a method: reading it is a request) reads as the sync
property ``state``.
"""
from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd
import pytest
import requests

from modelpool.async_client import AsyncBatch, AsyncClient, AsyncService
from modelpool.client import Batch, Client, Service

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class Blocking:
    """An asyncio client object whose awaitables are run to their end on ``loop``."""

    def __init__(self, target: Any, views: "AsyncViews") -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_views", views)

    @property
    def __class__(self) -> type:  # isinstance() sees the viewed object's class
        return type(self._target)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name == "state" and isinstance(self._target, AsyncBatch):
            return self._views.run(value())
        if callable(value) and not isinstance(value, type):
            def call(*args: Any, **kwargs: Any) -> Any:
                return self._views.view(self._views.run(value(*args, **kwargs)))
            return call
        return self._views.view(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __repr__(self) -> str:
        return repr(self._target)

    def __enter__(self) -> "Blocking":
        self._views.run(self._target.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._views.run(self._target.__aexit__(*exc))


@dataclass
class AsyncViews:
    """One event loop per test, and one view per object (so identities hold: ``batch.start() is batch``)."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    views: dict[int, Blocking] = field(default_factory=dict)

    def run(self, value: Any) -> Any:
        return self.loop.run_until_complete(value) if inspect.isawaitable(value) else value

    def view(self, value: Any) -> Any:
        if not isinstance(value, (AsyncClient, AsyncService, AsyncBatch)):
            return value
        if id(value) not in self.views:
            self.views[id(value)] = Blocking(value, self)
        return self.views[id(value)]

    def unwrap(self, value: Any) -> Any:
        return object.__getattribute__(value, "_target") if type(value) is Blocking else value


@dataclass
class Flavour:
    """What differs between the two clients, for the tests that must say so."""

    name: str
    Client: type
    Service: type
    Batch: type
    connect_error: type[BaseException]  # what a refused connection raises
    views: AsyncViews | None = None

    def connect(self, url: str, **options: Any) -> Any:
        client = self.Client(url, **options)
        return self.views.view(client) if self.views else client

    def service(self, client: Any, name: str, version: str) -> Any:
        """A service built by hand (no request), as a caller may do."""
        if self.views is None:
            return Service(client, name, version)
        return self.views.view(AsyncService(self.views.unwrap(client), name, version))


@pytest.fixture(name="flavour", params=["sync", "async"])
def flavour_fixture(request: pytest.FixtureRequest):
    if request.param == "sync":
        yield Flavour("sync", Client, Service, Batch, requests.ConnectionError)
        return
    views = AsyncViews()
    try:
        yield Flavour("async", AsyncClient, AsyncService, AsyncBatch, httpx.ConnectError, views)
    finally:
        views.loop.run_until_complete(views.loop.shutdown_asyncgens())
        views.loop.close()


@pytest.fixture(name="no_token_env")
def no_token_env_fixture(monkeypatch, tmp_path):
    """A home with no token anywhere; each test adds the source it checks."""
    monkeypatch.delenv("MODELPOOL_MANAGEMENT_TOKEN", raising=False)
    monkeypatch.delenv("MODELPOOL_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def iris_frame(rows: int = 3) -> pd.DataFrame:
    data = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 5.1, 1.9], [4.9, 3.0, 1.4, 0.2]]
    return pd.DataFrame(data[:rows], columns=IRIS_COLUMNS)
