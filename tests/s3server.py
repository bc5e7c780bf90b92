"""A real S3-compatible endpoint for tests: moto's standalone server in its own process.

The object store talks to it through pyarrow's S3 client exactly as it would talk to AWS, so the
S3 code path is exercised end to end. It runs as a separate process (not moto's in-process
threaded server) so it can be killed cleanly and never shares state with the code under test.
Nothing global is changed here: callers decide whether to export :attr:`S3Server.env`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import boto3
from botocore.config import Config

from modelpool.cluster.net import free_port

HOST = "127.0.0.1"
DEFAULT_BUCKET = "modelpool-test"
#: Credentials moto accepts; exported by the session fixture so pyarrow finds them.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    """A running moto server; :meth:`stop` ends it and waits for the process."""

    endpoint: str
    bucket: str
    process: subprocess.Popen
    log: IO[bytes]
    env: dict[str, str] = field(default_factory=lambda: dict(S3_ENV))

    def client(self) -> Any:
        """A boto3 client for set-up and checks, configured explicitly (no global env)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def stop(self) -> None:
        """Terminate the server and reap it, killing it if it ignores SIGTERM."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


def _die_with_parent() -> None:
    """Linux only: SIGTERM the server if the test process dies without cleaning up.

    The signal follows the thread that started the server, so start it from a thread that lives
    as long as the server (pytest's main thread does).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; stop() is the real cleanup
        pass


def _spawn(port: int) -> S3Server:
    log = tempfile.TemporaryFile()
    command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    env = {**os.environ, **S3_ENV}
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        preexec_fn=preexec,
    )
    return S3Server(endpoint=f"http://{HOST}:{port}", bucket="", process=process, log=log)


def _wait_ready(server: S3Server, timeout: float) -> bool:
    """Poll until the server answers S3 calls; False if it exited (e.g. the port was taken)."""
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            client.list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    raise TimeoutError(f"moto server at {server.endpoint} did not answer within {timeout}s:\n"
                       f"{server.log_text()}")


def start_s3_server(bucket: str = DEFAULT_BUCKET, timeout: float = 30.0,
                    attempts: int = 3) -> S3Server:
    """Start moto on a free port, wait until it answers, create ``bucket``.

    The free port can be taken between choosing and binding it, so a server that exits at once
    is retried on a new port.
    """
    detail = ""
    for _ in range(attempts):
        server = _spawn(free_port(HOST))
        try:
            ready = _wait_ready(server, timeout)
        except BaseException:
            server.stop()
            raise
        if ready:
            server.bucket = bucket
            try:
                server.client().create_bucket(Bucket=bucket)
            except BaseException:
                server.stop()
                raise
            return server
        detail = server.log_text()
        server.stop()
    raise RuntimeError(f"moto server failed to start after {attempts} attempts:\n{detail}")


@contextlib.contextmanager
def running_s3_server(bucket: str = DEFAULT_BUCKET, timeout: float = 30.0) -> Iterator[S3Server]:
    """``with running_s3_server() as s3:`` — a moto server that is always stopped afterwards."""
    server = start_s3_server(bucket, timeout)
    try:
        yield server
    finally:
        server.stop()
