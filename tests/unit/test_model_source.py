"""Model URLs: store references, the allow-list, the address rule, redirects, caps, pinning, s3.

The HTTP tests talk to a real ``ThreadingHTTPServer`` on 127.0.0.1 that records every request, so
"refused without a connection" is checked by the server having seen nothing.
"""
from __future__ import annotations

import datetime
import hashlib
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from modelpool.cluster.url_patterns import parse_allowed_urls

from modelpool.management import url_checks
from modelpool.deployments.archive import build_archive
from modelpool.deployments.archive_formats import read_manifest
from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import Manifest
from modelpool.management.model_source import resolve_model_url
from modelpool.management.url_checks import UrlPolicy, check_address, is_public_address, resolve_checked_address
from modelpool.management.url_download import archive_basename

CAP = 64 * 1024
SLOW_TIMEOUT = 0.6


# ------------------------------------------------------------------------------------ fixtures


def make_archive(directory: Path) -> Path:
    src = directory / "src"
    src.mkdir(parents=True)
    (src / "toy.py").write_text("def predict(x):\n    return x[:, 0]\n")
    manifest = Manifest(name="toy", version="1", handler="toy:predict")
    return build_archive([src / "toy.py"], manifest, directory / "toy-1.zip")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "RecordingServer"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        route = self.path.split("?", 1)[0]
        try:
            self._route(route)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client hung up on purpose (size cap, timeout)

    def _route(self, route: str) -> None:
        base = f"http://127.0.0.1:{self.server.server_port}"
        if route.startswith("/models/"):
            self._send(200, self.server.archive)
        elif route == "/redirect-ok":
            self._redirect("/models/toy-1.zip")
        elif route == "/redirect-absolute":
            self._redirect(f"{base}/models/toy-1.zip")
        elif route == "/redirect-away":
            self._redirect(f"{base}/forbidden/toy-1.zip")
        elif route == "/redirect-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif route == "/redirect-file":
            self._redirect("file:///etc/passwd")
        elif route.startswith("/loop/"):
            self._redirect(f"/loop/{int(route.rsplit('/', 1)[1]) + 1}")
        elif route == "/huge-declared":
            self._send(200, b"x" * 10, length=CAP + 1)
        elif route == "/huge-chunked":
            self._chunked(b"y" * 4096, count=4 * CAP // 4096)
        elif route == "/slow":
            self._slow()
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunked(self, piece: bytes, count: int) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(count):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def _slow(self) -> None:
        """One byte every 0.1 s: each read is quick, only the total time is too long."""
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(100):
            if self.server.stopping.wait(0.1):
                return
            self.wfile.write(b"z")
            self.wfile.flush()


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads: nothing outlives the fixture

    def __init__(self, archive: bytes, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.archive = archive
        self.seen: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()
        self.context = context

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


def run_server(server: RecordingServer) -> Iterator[RecordingServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def archive_bytes(tmp_path: Path) -> bytes:
    return make_archive(tmp_path / "built").read_bytes()


@pytest.fixture
def server(archive_bytes: bytes) -> Iterator[RecordingServer]:
    yield from run_server(RecordingServer(archive_bytes))


@pytest.fixture
def base(server: RecordingServer) -> str:
    return f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def dirs(tmp_path: Path) -> dict:
    store = tmp_path / "store"
    store.mkdir()
    return {"model_store": store, "download_dir": tmp_path / "downloads"}


def local_policy(base: str, **overrides) -> UrlPolicy:
    """Allows the test server's /models, /redirect-*, /loop, /huge-*, /slow and /missing paths."""
    fields = dict(
        allowed_urls=(re.escape(base) + r"/(models/.*|redirect-.*|loop/\d+|huge-.*|slow|missing)",),
        allow_private_networks=True,
        max_bytes=CAP,
        timeout_s=5.0,
    )
    fields.update(overrides)
    return UrlPolicy(**fields)


def refused(status: int, call, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        call(*args, **kwargs)
    assert info.value.status == status, info.value
    assert info.value.field == "url"
    return info.value


@pytest.fixture
def loopback_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat 127.0.0.1 as public so the address rule can be tested against the local server."""
    real = url_checks.is_public_address
    monkeypatch.setattr(url_checks, "is_public_address", lambda a: a == "127.0.0.1" or real(a))


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Names ending in '.test' resolve through this table (a list of answers per name, popped)."""
    table: dict[str, list[str]] = {}
    calls: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".test"):
            calls.append(host)
            answers = table.get(host)
            if not answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return {"table": table, "calls": calls}


# ------------------------------------------------------------------------------ store and forms


def test_store_reference_resolves_inside_the_store(dirs: dict, tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a")
    (dirs["model_store"] / "toy-1.zip").write_bytes(archive.read_bytes())
    for ref in ("toy-1.zip", "toy-1"):
        path = resolve_model_url(ref, policy=UrlPolicy(), **dirs)
        assert path == (dirs["model_store"] / "toy-1.zip").resolve()


@pytest.mark.parametrize("ref", ["../secret.zip", "/etc/passwd", "a/../../b.zip"])
def test_store_escape_is_refused(dirs: dict, ref: str) -> None:
    refused(400, resolve_model_url, ref, policy=UrlPolicy(), **dirs)


def test_missing_store_reference_is_404(dirs: dict) -> None:
    refused(404, resolve_model_url, "nope.zip", policy=UrlPolicy(), **dirs)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "FILE:/tmp/x.zip", "file://host/share/m.zip"])
def test_file_urls_are_refused(dirs: dict, url: str) -> None:
    error = refused(400, resolve_model_url, url, policy=UrlPolicy(allowed_urls=(".*",)), **dirs)
    assert "model store" in error.message


@pytest.mark.parametrize("url", ["ftp://example.com/m.zip", "gopher://x/", "gs://b/k.zip", "c:/m.zip"])
def test_unknown_schemes_are_refused(dirs: dict, url: str) -> None:
    error = refused(400, resolve_model_url, url, policy=UrlPolicy(allowed_urls=(".*",)), **dirs)
    assert "s3://bucket/key" in error.message and "http" in error.message


# ------------------------------------------------------------------------------- allow-list


def test_url_not_on_allow_list_is_refused_without_connecting(dirs, server, base, fake_dns) -> None:
    policy = local_policy(base)
    error = refused(403, resolve_model_url, f"{base}/forbidden/toy-1.zip", policy=policy, **dirs)
    assert "--allowed-urls" in error.message and "MODELPOOL_ALLOWED_URLS" in error.message
    refused(403, resolve_model_url, "http://elsewhere.test/models/x.zip", policy=policy, **dirs)
    assert server.seen == [] and fake_dns["calls"] == []  # no DNS lookup either


def test_empty_allow_list_refuses_every_remote_url(dirs, server, base) -> None:
    refused(403, resolve_model_url, f"{base}/models/toy-1.zip", policy=UrlPolicy(), **dirs)
    assert server.seen == []


def test_allow_list_needs_a_full_match(dirs, server, base) -> None:
    policy = UrlPolicy(allowed_urls=(re.escape(base) + "/models",), allow_private_networks=True)
    refused(403, resolve_model_url, f"{base}/models/toy-1.zip", policy=policy, **dirs)
    assert server.seen == []


@pytest.mark.parametrize("url", ["http://127.0.0.1@evil.test/models/x.zip",
                                 "http://127.0.0.1/models/a b.zip",
                                 "http://127.0.0.1\\@evil.test/models/x.zip",
                                 "http://127.0.0.1:99999/models/x.zip"])
def test_malformed_or_credentialed_urls_are_refused(dirs: dict, url: str) -> None:
    refused(400, resolve_model_url, url, policy=UrlPolicy(allowed_urls=(".*",)), **dirs)


def test_parse_allowed_urls() -> None:
    text = r"https://models\.example\.com/.*, http://10\.0\.0\.[0-9]{1,3}/m/.*" + "\n\n  s3://bucket/.*  \n"
    assert parse_allowed_urls(text) == (
        r"https://models\.example\.com/.*",
        r"http://10\.0\.0\.[0-9]{1,3}/m/.*",
        "s3://bucket/.*",
    )
    assert parse_allowed_urls("") == ()
    with pytest.raises(ValueError, match=r"\(unclosed"):
        parse_allowed_urls("https://ok/.*,(unclosed")


def test_policy_rejects_bad_patterns_up_front() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        UrlPolicy(allowed_urls=("[",))


# ----------------------------------------------------------------------------- address rule


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1",
    "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::", "2001:db8::1", "not-an-ip",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)
    with pytest.raises(RequestError) as info:
        check_address(address, "models.example.com")
    assert info.value.status == 403 and info.value.field == "url"
    assert "MODELPOOL_ALLOW_PRIVATE_NETWORKS" in info.value.message


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(address)
    check_address(address)


def test_every_resolved_address_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 443))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(RequestError) as info:
        resolve_checked_address("mixed.example", 443, UrlPolicy())
    assert info.value.status == 403 and "169.254.169.254" in info.value.message
    assert resolve_checked_address("mixed.example", 443, UrlPolicy(allow_private_networks=True)) == "8.8.8.8"


def test_loopback_is_refused_even_when_allow_listed(dirs, server, base) -> None:
    policy = local_policy(base, allow_private_networks=False)
    error = refused(403, resolve_model_url, f"{base}/models/toy-1.zip", policy=policy, **dirs)
    assert "127.0.0.1" in error.message
    assert server.seen == []


def test_name_resolving_to_metadata_address_is_refused(dirs, server, fake_dns) -> None:
    fake_dns["table"]["metadata.test"] = ["169.254.169.254"]
    policy = UrlPolicy(allowed_urls=(r"http://metadata\.test/.*",))
    refused(403, resolve_model_url, "http://metadata.test/latest/meta-data/", policy=policy, **dirs)


# ---------------------------------------------------------------------------------- downloads


def test_allowed_download_with_private_networks_flag(dirs, server, base, archive_bytes) -> None:
    path = resolve_model_url(f"{base}/models/toy-1.zip?sig=abc", policy=local_policy(base), **dirs)
    digest = hashlib.sha256(archive_bytes).hexdigest()[:16]
    assert path == dirs["download_dir"] / f"{digest}-toy-1.zip"
    assert path.read_bytes() == archive_bytes
    assert read_manifest(path).name == "toy"
    assert sorted(p.name for p in dirs["download_dir"].iterdir()) == [path.name]  # no temp left
    again = resolve_model_url(f"{base}/models/toy-1.zip", policy=local_policy(base), **dirs)
    assert again == path  # content-addressed: same bytes, same file


def test_http_error_status_is_reported(dirs, server, base) -> None:
    error = refused(400, resolve_model_url, f"{base}/missing", policy=local_policy(base), **dirs)
    assert "404" in error.message
    assert list(dirs["download_dir"].glob("*")) == []


@pytest.mark.parametrize("route", ["/redirect-ok", "/redirect-absolute"])
def test_redirect_to_allowed_url_is_followed(dirs, server, base, archive_bytes, route) -> None:
    path = resolve_model_url(base + route, policy=local_policy(base), **dirs)
    assert path.read_bytes() == archive_bytes
    assert server.paths() == [route, "/models/toy-1.zip"]
    assert path.name.endswith(f"-{route[1:]}.zip")  # named after the URL that was asked for


def test_redirect_to_disallowed_url_is_refused(dirs, server, base) -> None:
    refused(403, resolve_model_url, f"{base}/redirect-away", policy=local_policy(base), **dirs)
    assert server.paths() == ["/redirect-away"]  # the forbidden target was never requested


def test_redirect_to_private_address_is_refused(dirs, server, base, loopback_is_public) -> None:
    policy = local_policy(base, allowed_urls=(r"http://(127\.0\.0\.1|169\.254\.169\.254)(:\d+)?/.*",),
                          allow_private_networks=False)
    error = refused(403, resolve_model_url, f"{base}/redirect-metadata", policy=policy, **dirs)
    assert "169.254.169.254" in error.message
    assert server.paths() == ["/redirect-metadata"]


def test_redirect_to_file_url_is_refused(dirs, server, base) -> None:
    policy = local_policy(base, allowed_urls=(".*",))
    refused(400, resolve_model_url, f"{base}/redirect-file", policy=policy, **dirs)


def test_redirect_chain_longer_than_the_limit_is_refused(dirs, server, base) -> None:
    policy = local_policy(base, max_redirects=3)
    error = refused(400, resolve_model_url, f"{base}/loop/0", policy=policy, **dirs)
    assert "more than 3" in error.message
    assert server.paths() == [f"/loop/{i}" for i in range(4)]


def test_declared_size_over_the_cap_is_refused(dirs, server, base) -> None:
    refused(413, resolve_model_url, f"{base}/huge-declared", policy=local_policy(base), **dirs)
    assert list(dirs["download_dir"].glob("*")) == []


def test_chunked_body_over_the_cap_is_refused(dirs, server, base) -> None:
    refused(413, resolve_model_url, f"{base}/huge-chunked", policy=local_policy(base), **dirs)
    assert list(dirs["download_dir"].glob("*")) == []  # the partial temp file is gone


def test_chunked_body_under_the_cap_is_fine(dirs, server, base) -> None:
    path = resolve_model_url(f"{base}/huge-chunked", policy=local_policy(base, max_bytes=8 * CAP), **dirs)
    assert path.stat().st_size == 4 * CAP and path.name.endswith("-huge-chunked.zip")


def test_slow_body_hits_the_total_timeout(dirs, server, base) -> None:
    started = time.monotonic()
    error = refused(408, resolve_model_url, f"{base}/slow", policy=local_policy(base, timeout_s=SLOW_TIMEOUT),
                    **dirs)
    elapsed = time.monotonic() - started
    assert SLOW_TIMEOUT <= elapsed < SLOW_TIMEOUT + 1.0, elapsed
    assert "0.6s" in error.message
    assert list(dirs["download_dir"].glob("*")) == []


def test_connection_refused_is_a_client_error(dirs) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    refused(400, resolve_model_url, f"{base}/models/x.zip", policy=local_policy(base), **dirs)


# ------------------------------------------------------------------------------ DNS pinning


def test_connection_goes_to_the_checked_address(dirs, server, fake_dns, loopback_is_public,
                                                archive_bytes) -> None:
    """The name is resolved once: a rebinding answer afterwards never gets used."""
    port = server.server_port
    fake_dns["table"]["models.test"] = ["127.0.0.1", "169.254.169.254"]
    policy = UrlPolicy(allowed_urls=(rf"http://models\.test:{port}/models/.*",), max_bytes=CAP)
    path = resolve_model_url(f"http://models.test:{port}/models/toy-1.zip", policy=policy, **dirs)
    assert path.read_bytes() == archive_bytes
    assert fake_dns["calls"] == ["models.test"]
    assert server.seen == [("/models/toy-1.zip", f"models.test:{port}")]  # Host header keeps the name


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path, archive_bytes: bytes, monkeypatch) -> Iterator[RecordingServer]:
    cert, key = _self_signed(tmp_path, "models.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    yield from run_server(RecordingServer(archive_bytes, context))


def test_https_keeps_sni_and_certificate_check_on_the_name(dirs, tls_server, fake_dns, archive_bytes) -> None:
    port = tls_server.server_port
    fake_dns["table"]["models.test"] = ["127.0.0.1"]
    policy = UrlPolicy(allowed_urls=(r"https://models\.test:\d+/models/.*",), allow_private_networks=True)
    path = resolve_model_url(f"https://models.test:{port}/models/toy-1.zip", policy=policy, **dirs)
    assert path.read_bytes() == archive_bytes
    assert tls_server.seen == [("/models/toy-1.zip", f"models.test:{port}")]


def test_https_certificate_for_another_name_is_refused(dirs, tls_server, fake_dns) -> None:
    port = tls_server.server_port
    fake_dns["table"]["other.test"] = ["127.0.0.1"]
    policy = UrlPolicy(allowed_urls=(r"https://other\.test:\d+/models/.*",), allow_private_networks=True)
    error = refused(400, resolve_model_url, f"https://other.test:{port}/models/toy-1.zip", policy=policy, **dirs)
    assert "SSLError" in error.message
    assert tls_server.seen == []


# ------------------------------------------------------------------------------------------ s3


def test_s3_uses_the_injected_fetcher(dirs, archive_bytes) -> None:
    calls = []

    def fetch_s3(url: str, dest: Path) -> None:
        calls.append(url)
        dest.write_bytes(archive_bytes)

    policy = UrlPolicy(allowed_urls=(r"s3://models/.*",))
    path = resolve_model_url("s3://models/team/toy-1.mar", policy=policy, fetch_s3=fetch_s3, **dirs)
    assert calls == ["s3://models/team/toy-1.mar"]
    assert path.name == hashlib.sha256(archive_bytes).hexdigest()[:16] + "-toy-1.mar"
    assert path.read_bytes() == archive_bytes
    assert [p.name for p in dirs["download_dir"].iterdir()] == [path.name]


def test_s3_must_be_allow_listed(dirs) -> None:
    def fetch_s3(url: str, dest: Path) -> None:
        raise AssertionError("must not be called")

    policy = UrlPolicy(allowed_urls=(r"s3://models/.*",))
    refused(403, resolve_model_url, "s3://other/toy.zip", policy=policy, fetch_s3=fetch_s3, **dirs)


def test_s3_without_fetcher_is_refused(dirs) -> None:
    policy = UrlPolicy(allowed_urls=(r"s3://models/.*",))
    error = refused(400, resolve_model_url, "s3://models/toy-1.zip", policy=policy, **dirs)
    assert "no object store is configured" in error.message


def test_s3_errors_and_size_cap(dirs) -> None:
    policy = UrlPolicy(allowed_urls=(r"s3://models/.*",), max_bytes=10)

    def missing(url: str, dest: Path) -> None:
        raise FileNotFoundError(url)

    def big(url: str, dest: Path) -> None:
        dest.write_bytes(b"x" * 11)

    refused(404, resolve_model_url, "s3://models/a.zip", policy=policy, fetch_s3=missing, **dirs)
    refused(413, resolve_model_url, "s3://models/a.zip", policy=policy, fetch_s3=big, **dirs)
    refused(400, resolve_model_url, "s3://models/", policy=policy, fetch_s3=big, **dirs)
    assert list(dirs["download_dir"].glob("*")) == []


# ---------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("url, name", [
    ("https://h/m/iris-1.zip", "iris-1.zip"),
    ("https://h/m/iris.MAR?x=1", "iris.MAR"),
    ("https://h/m/iris", "iris.zip"),
    ("https://h/m/", "model.zip"),
    ("https://h/m/..%2F..%2Fetc%2Fpasswd", "passwd.zip"),
    ("https://h/m/.hidden.zip", "hidden.zip"),
    ("https://h/m/a%20b%3B.zip", "a_b_.zip"),
    ("https://h/m/" + "a" * 300 + ".zip", "a" * 100 + ".zip"),
])
def test_archive_basename(url: str, name: str) -> None:
    assert archive_basename(url) == name


# ------------------------------------------------------------ exact answers (issue 7, "Hostile input")

PRIVATE_RULE = ("a loopback, private, link-local or reserved address; model downloads only go to public addresses "
                "unless an operator sets --allow-private-networks / MODELPOOL_ALLOW_PRIVATE_NETWORKS")


def not_allowed(url: str) -> str:
    return (f"{url!r} is not allowed: it matches none of the allowed URL patterns; an operator can add a regular "
            "expression for it with --allowed-urls / MODELPOOL_ALLOWED_URLS")


def test_refused_model_urls_get_exact_statuses_and_messages(dirs, server, base, fake_dns, monkeypatch) -> None:
    def answer(url: str, policy: UrlPolicy) -> tuple[int, str]:
        with pytest.raises(RequestError) as info:
            resolve_model_url(url, policy=policy, **dirs)
        assert info.value.field == "url"
        return info.value.status, info.value.message

    fake_dns["table"]["metadata.test"] = ["169.254.169.254"]
    fake_dns["table"]["intranet.test"] = ["10.0.0.5"]
    anything = UrlPolicy(allowed_urls=(".*",), timeout_s=5.0)
    assert answer("https://models.example/m.zip", UrlPolicy()) == (403, not_allowed("https://models.example/m.zip"))
    assert answer("http://metadata.test/latest/", anything) == (
        403, f"host 'metadata.test' resolves to 169.254.169.254, {PRIVATE_RULE}")
    assert answer("http://intranet.test/m.zip", anything) == (403, f"host 'intranet.test' resolves to 10.0.0.5, "
                                                                   f"{PRIVATE_RULE}")
    assert answer(f"{base}/models/toy-1.zip", anything) == (403, f"address 127.0.0.1, {PRIVATE_RULE}")
    assert answer("file:///etc/passwd", anything) == (
        400, "file: URLs are refused (they would let callers read the server's disks); copy the archive into the "
             "model store and register it by name, e.g. 'iris-1.zip'")
    assert answer(f"{base}/redirect-away", local_policy(base)) == (403, not_allowed(f"{base}/forbidden/toy-1.zip"))
    assert answer(f"{base}/huge-declared", local_policy(base)) == (
        413, f"'{base}/huge-declared' is larger than the 65536-byte download limit (65537 bytes); ship a smaller "
             "archive or copy it into the model store")
    assert answer(f"{base}/huge-chunked", local_policy(base)) == (
        413, f"'{base}/huge-chunked' is larger than the 65536-byte download limit; ship a smaller archive or copy it "
             "into the model store")
    assert answer(f"{base}/slow", local_policy(base, timeout_s=SLOW_TIMEOUT)) == (
        408, f"downloading '{base}/slow' took longer than the 0.6s limit; use a faster or closer store, or copy the "
             "archive into the model store")
    monkeypatch.setattr(url_checks, "is_public_address", lambda a: a == "127.0.0.1")  # the local server is "public"
    assert answer(f"{base}/redirect-metadata", local_policy(base, allow_private_networks=False,
                                                            allowed_urls=(".*",))) == (
        403, f"address 169.254.169.254, {PRIVATE_RULE}")
    assert server.paths()[-1] == "/redirect-metadata", "the redirect was checked, not followed"
