"""Fixtures shared by unit and integration tests: a real S3-compatible server on 127.0.0.1.

``make test`` runs the unit tests in a pytest process of their own beside the cluster tests (tests/run_suite.py);
each process picks free ports from its own slice of the range, named by ``MODELPOOL_TEST_PORT_SHARD`` ("k/n").
"""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from modelpool.cluster import net
from tests.s3server import S3Server, running_s3_server


def pytest_configure(config: pytest.Config) -> None:
    """This process's slice of the free ports, when the suite runs in parallel processes."""
    shard = os.environ.get("MODELPOOL_TEST_PORT_SHARD", "")
    if shard:
        index, count = (int(part) for part in shard.split("/"))
        net.PORT_SHARD = (index, count)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server per session; its AWS env vars are exported (pyarrow reads them) and restored."""
    with running_s3_server() as server:
        saved = {name: os.environ.get(name) for name in server.env}
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
