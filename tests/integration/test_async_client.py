"""The asyncio client against the real cluster: services, scoring, models, pools, errors and a batch.

Each test runs its scenario with asyncio.run (pytest-asyncio is not installed) inside one
``async with AsyncClient(...)`` block, so every call rides one httpx connection pool, as a caller's
would.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from modelpool.async_client import AsyncClient, BadRequest, NotFound, Unauthorized

pytestmark = pytest.mark.integration

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETOSA = [[5.1, 3.5, 1.4, 0.2]]  # the first iris row: class 0 for every example model
NAME = "async_pool"


def iris_frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame(load_iris().data[:rows], columns=COLUMNS)


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 120, step: float = 0.5) -> Any:
    """The first truthy answer of ``check`` within ``timeout_s`` (else its last answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(step)


def test_async_services_scoring_and_models(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.url, token=cluster.token) as c:
            assert await c.ping() is True
            services = {(s["name"], s["version"]) for s in await c.list_services()}
            assert {("iris", "1"), ("iris", "2"), ("diabetes", "1"), ("iris_report", "1")} <= services

            svc = await c.get_service("iris", "1")
            assert (svc.name, svc.version) == ("iris", "1")
            assert await svc.predict(SETOSA) == [0]
            together = await asyncio.gather(*(svc.predict(SETOSA) for _ in range(20)))  # concurrent, one pool
            assert together == [[0]] * 20

            answer = await svc.infer(SETOSA)
            assert answer["predict"].tolist() == [0]
            proba = (await svc.infer(iris_frame(3), outputs=["predict_proba"]))["predict_proba"]
            assert proba.shape == (3, 3) and abs(float(proba.sum()) - 3.0) < 1e-6

            described = await c.describe_model("iris", "1")
            assert [(d["modelName"], d["modelVersion"]) for d in described] == [("iris", "1")]
            assert described[0]["isDefault"] is False

            names = [m["modelName"] for m in await c.list_models(limit=1)]  # a model a page: pages followed
            assert {"iris", "diabetes", "iris_report"} <= set(names) and len(names) == len(set(names))
            every = [m["modelName"] for m in await c.list_models()]
            assert sorted(names) == sorted(every)

    asyncio.run(scenario())


def test_async_errors_are_typed(cluster):
    async def scenario() -> None:
        async with AsyncClient(cluster.url, token=cluster.token) as c:
            with pytest.raises(NotFound) as missing:
                await c.describe_model("no_such_model")
            assert (missing.value.status, missing.value.field) == (404, "model_name")
            assert missing.value.message == "model 'no_such_model' is not registered"
            with pytest.raises(NotFound):
                await c.get_service("no_such_model")
        with pytest.raises(Unauthorized) as denied:
            await AsyncClient(cluster.url, token="not-the-token").list_services()
        assert denied.value.field == "authorization" and cluster.token not in str(denied.value)

    asyncio.run(scenario())


def test_async_register_pool_and_unregister(cluster):
    async def pool_is(c: AsyncClient, version: str, status: str) -> bool:
        nodes = await c.get_service_pool_status(NAME, version)
        return bool(nodes) and all(n["status"] == status for n in nodes)

    async def scenario() -> None:
        async with AsyncClient(cluster.url, token=cluster.token) as c:
            registered = await c.register_model(url="iris-2.zip", model_name=NAME, synchronous=True)
            assert registered == {"status": f'Model "{NAME}" Version: 2 registered with 0 initial workers. '
                                            "Use scale workers API to add workers for the model."}  # TorchServe's
            try:
                described = await c.describe_model(NAME)
                version = described[0]["modelVersion"]
                assert (described[0]["modelName"], version) == (NAME, "2")
                assert await (await c.get_service(NAME, version)).predict(SETOSA) == [0]

                created = await c.create_or_update_service_pool(NAME, version, initial_pool_size=1, max_pool_size=2)
                assert created == {"status": f'Pool for "{NAME}" version "{version}" set to 1..2 replicas'}
                assert await eventually(lambda: pool_is(c, version, "Success")), "the dedicated pool never came up"
                services = {(s["name"], s["version"]): s for s in await c.list_services()}
                assert services[(NAME, version)]["pool"] == "dedicated"

                with pytest.raises(BadRequest) as bad:
                    await c.create_or_update_service_pool(NAME, version, initial_pool_size=3, max_pool_size=2)
                assert bad.value.status == 400 and "must not exceed max_pool_size" in bad.value.message

                deleted = await c.delete_service_pool(NAME, version)
                assert deleted["status"].endswith("served by the generic pool")
                assert await pool_is(c, version, "NotFound")
            finally:
                removed = await c.unregister_model(NAME, "2")
            assert removed == {"status": f'Model "{NAME}" unregistered'}
            with pytest.raises(NotFound) as missing:
                await c.describe_model(NAME)
            assert missing.value.field == "model_name"

    asyncio.run(scenario())


def test_async_batch_workflow_with_artifacts(cluster, tmp_path):
    async def scenario() -> None:
        async with AsyncClient(cluster.url, token=cluster.token) as c:
            svc = await c.get_service("iris_report", "1")
            batch = await svc.batch(iris_frame(10), parallel_count=2).start()
            assert batch.execution_id
            progress: list[tuple[int, Any]] = []
            final = await batch.wait(timeout=300, progress=lambda done, total: progress.append((done, total)))
            assert final["state"] == "Complete" and final["completedItems"] == 10
            assert progress[-1] == (10, 10)
            assert await batch.state() == "Complete"

            rows = (await batch.results(page_size=4))["results"]  # three pages
            assert [r["index"] for r in rows] == list(range(10))
            assert (await batch.execution(3))["index"] == 3
            assert await batch.list_artifacts(3) == ["report.json"]
            report = json.loads(await batch.artifact(3, "report.json"))
            assert {"features", "class", "class_name", "confidence"} <= set(report) and len(report["features"]) == 4
            written = await batch.download(3, dest=tmp_path)
            assert written == [tmp_path / "report.json"]
            assert json.loads((tmp_path / "report.json").read_text()) == report

            assert batch.execution_id in await svc.get_batch_executions()
            assert await svc.get_batch(batch.execution_id).state() == "Complete"

    asyncio.run(scenario())
