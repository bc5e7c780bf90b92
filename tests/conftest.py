"""Fixtures shared by unit and integration tests: a real S3-compatible server on 127.0.0.1."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.s3server import S3Server, running_s3_server


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
