"""Both clients over TLS: a cluster's own CA is trusted through ``verify=``, settled once per session."""
from __future__ import annotations

import asyncio
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from loadtests.tls_front import make_certificates
from modelpool.async_client import AsyncClient
from modelpool.client import Client


class _Ping(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"status": "Healthy"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def tls_server(tmp_path):
    files = make_certificates(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ping)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", str(files.ca)
    server.shutdown()
    server.server_close()


def test_the_sync_client_trusts_the_given_ca_inside_and_outside_a_block(tls_server, monkeypatch):
    url, ca = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")  # must not override verify=
    assert Client(url, token="t", verify=ca).ping()
    with Client(url, token="t", verify=ca) as client:
        assert client.ping() and client.ping()
    with pytest.raises(requests.exceptions.SSLError):
        Client(url, token="t")._json("GET", "/ping")


def test_the_environment_ca_bundle_is_honoured_when_no_verify_is_given(tls_server, monkeypatch):
    url, ca = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    with Client(url, token="t") as client:
        assert client.ping()


def test_the_async_client_trusts_the_given_ca(tls_server):
    url, ca = tls_server

    async def ping() -> bool:
        async with AsyncClient(url, token="t", verify=ca) as client:
            return await client.ping()

    assert asyncio.run(ping())
