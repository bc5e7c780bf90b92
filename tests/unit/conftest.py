"""Shared unit-test fixtures: a real S3 endpoint (moto, own process) and a store on each backend."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from modelpool.cluster.object_store import ObjectStore
from tests.s3server import S3Server


@pytest.fixture(params=["local", "s3"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests on a local directory and on S3 (a fresh prefix per test: no cross-talk)."""
    if request.param == "local":
        return ObjectStore(str(tmp_path / "store"))
    server: S3Server = request.getfixturevalue("s3_server")
    return ObjectStore(f"s3://{server.bucket}/t-{uuid.uuid4().hex}", s3_endpoint=server.endpoint)
