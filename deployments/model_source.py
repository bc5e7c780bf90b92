"""Turn the ``url`` of a model registration into a local archive, without becoming an SSRF proxy.

TorchServe's management API fetched model URLs from anywhere ("ShellTorch", CVE-2023-43654): anyone
who could reach it could make the server read cloud metadata (169.254.169.254) or internal services.
So here a remote URL is refused unless

* it fully matches one of the operator's ``allowed_urls`` regexes (default: none, so remote URLs are
  off until an operator opts in), checked before any DNS lookup or connection;
* every address its host resolves to is public (no loopback, RFC 1918, link-local/metadata,
  multicast, reserved, unspecified, nor IPv6 forms that embed such an IPv4), unless the operator
  sets ``allow_private_networks`` for an on-prem store;
* each redirect target passes both checks again (redirects are followed by hand, never by requests).

DNS rebinding is closed by pinning: the host is resolved once, the checked address is the one we
connect to (:class:`_PinnedAdapter`), while the ``Host`` header, TLS SNI and certificate check keep
using the name. Residual risks, accepted and documented:

* environment proxies (``HTTP(S)_PROXY``) and ``.netrc`` are ignored (``trust_env=False``): a proxy
  would resolve and connect on its own, and netrc would hand credentials to whatever host a URL
  names. Only ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` are honoured, for stores with a private CA;
* the total time cap is enforced between socket reads and by shrinking each read's timeout to the
  time left, but while *headers* are being received a server trickling bytes can overrun it by a
  bounded amount (http.client caps header size);
* of several resolved addresses, all must be public and the first is used (no fallback);
* a DNS lookup counts against the time cap but cannot be interrupted (the resolver's own timeout
  applies);
* ``s3://`` URLs are checked against the allow-list only: the object-store endpoint is operator
  configuration inside ``fetch_s3``, not something the URL can point elsewhere.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager

from cluster.url_patterns import compile_pattern as _compile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from deployments.archive import find_in_store, file_sha256
from deployments.archive_formats import ARCHIVE_SUFFIXES
from deployments.errors import RequestError

ALLOWED_URLS_SETTING = "--allowed-urls / MODELPOOL_ALLOWED_URLS"
PRIVATE_NETWORKS_SETTING = "--allow-private-networks / MODELPOOL_ALLOW_PRIVATE_NETWORKS"
ACCEPTED_FORMS = (
    "a model-store archive name such as 'iris-1.zip', an http:// or https:// URL matching "
    f"{ALLOWED_URLS_SETTING}, or s3://bucket/key"
)
FALLBACK_NAME = "model.zip"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1024 * 1024
_MAX_NAME = 100
#: Characters never legitimate in a URL we fetch; refusing them removes parser-differential tricks.
_BAD_URL_CHARS = re.compile(r"[^\x21-\x7e]|\\")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
FetchS3 = Callable[[str, Path], None]


@dataclass(frozen=True)
class UrlPolicy:
    """What remote model URLs may be fetched, and how much of them.

    ``allowed_urls`` are regular expressions that must match the *whole* URL (like TorchServe's
    ``allowed_urls``); empty means no remote URL is accepted at all.
    """

    allowed_urls: tuple[str, ...] = ()
    allow_private_networks: bool = False
    max_bytes: int = 2 << 30
    timeout_s: float = 60.0
    max_redirects: int = 5

    def __post_init__(self) -> None:
        # Fail at startup on a bad pattern, not on the first registration that needs it.
        object.__setattr__(self, "allowed_urls", tuple(self.allowed_urls))
        for pattern in self.allowed_urls:
            _compile(pattern)
        if self.max_bytes <= 0 or self.timeout_s <= 0 or self.max_redirects < 0:
            raise ValueError("max_bytes and timeout_s must be positive and max_redirects >= 0")

    def allows(self, url: str) -> bool:
        return any(_compile(pattern).fullmatch(url) for pattern in self.allowed_urls)


# ------------------------------------------------------------------------------------ entry point


def resolve_model_url(
    url: str,
    *,
    model_store: Path,
    download_dir: Path,
    policy: UrlPolicy,
    fetch_s3: Optional[FetchS3] = None,
) -> Path:
    """The local archive (file or directory) a registration ``url`` names, downloading if remote.

    Raises :class:`RequestError` (field ``url``): 400 bad form, 403 not allowed, 404 missing from
    the store, 408 download too slow, 413 too large.
    """
    scheme = _scheme(url)
    if not scheme:
        return find_in_store(Path(model_store), url)
    if scheme == "file":
        raise RequestError(
            "file: URLs are refused (they would let callers read the server's disks); copy the "
            "archive into the model store and register it by name, e.g. 'iris-1.zip'",
            field="url",
        )
    if scheme in ("http", "https"):
        return _download_http(url, Path(download_dir), policy)
    if scheme == "s3":
        return _download_s3(url, Path(download_dir), policy, fetch_s3)
    raise RequestError(f"unsupported URL scheme {scheme!r}; use {ACCEPTED_FORMS}", field="url")


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError as exc:
        raise RequestError(f"{url!r} is not a valid URL ({exc}); use {ACCEPTED_FORMS}", field="url") from None


# -------------------------------------------------------------------------------- URL checks


def _check_remote_url(url: str, policy: UrlPolicy, schemes: tuple[str, ...]) -> SplitResult:
    """Syntax, then allow-list: both without touching the network."""
    if _BAD_URL_CHARS.search(url):
        raise RequestError(
            f"{url!r} contains spaces, control, non-ASCII or '\\' characters; percent-encode the "
            "path and use the punycode form of the host",
            field="url",
        )
    try:
        split = urlsplit(url)
        split.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise RequestError(f"{url!r} is not a valid URL ({exc})", field="url") from None
    if split.scheme not in schemes:
        raise RequestError(f"{url!r} is refused: only {'/'.join(schemes)} URLs are fetched here", field="url")
    if not split.hostname:
        raise RequestError(f"{url!r} has no host", field="url")
    if "@" in split.netloc:
        # Credentials in URLs end up in logs, and 'allowed.com@evil.com' fools loose patterns.
        raise RequestError(f"{url!r} carries credentials; URLs with 'user@' are not supported", field="url")
    if not policy.allows(url):
        raise RequestError(
            f"{url!r} is not allowed: it matches none of the allowed URL patterns; an operator can "
            f"add a regular expression for it with {ALLOWED_URLS_SETTING}",
            status=403,
            field="url",
        )
    return split


def is_public_address(address: str) -> bool:
    """True if ``address`` is a globally routable unicast IP, including any IPv4 embedded in it.

    IPv4-mapped (``::ffff:127.0.0.1``), NAT64, 6to4 and Teredo addresses are judged by the IPv4
    they carry, because that is where a connection to them ends up.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return all(_is_public(candidate) for candidate in _with_embedded_ipv4(ip))


def _with_embedded_ipv4(ip: IPAddress) -> list[IPAddress]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return [ip]
    embedded: list[IPAddress] = []
    if ip.ipv4_mapped is not None:
        embedded.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)
    if ip in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    # An embedded IPv4 decides: the outer prefix itself is "not global" by registry, yet routes out.
    return embedded or [ip]


def _is_public(ip: IPAddress) -> bool:
    special = (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
               or ip.is_reserved or ip.is_unspecified)
    if isinstance(ip, ipaddress.IPv6Address):
        special = special or ip.is_site_local
    return ip.is_global and not special


def resolve_checked_address(host: str, port: int, policy: UrlPolicy) -> str:
    """Resolve ``host`` once and return the address to connect to, refusing non-public targets.

    Every resolved address must pass, not just the first: otherwise a name with one public and one
    internal record would be a coin flip an attacker can retry.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RequestError(f"cannot resolve host {host!r} ({exc})", field="url") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise RequestError(f"host {host!r} resolves to no address", field="url")
    if not policy.allow_private_networks:
        for address in addresses:
            check_address(address, host)
    return addresses[0]


def check_address(address: str, host: str = "") -> None:
    """Refuse (403) a non-public address; ``host`` only improves the message."""
    if not is_public_address(address):
        shown = f"host {host!r} resolves to {address}" if host and host != address else f"address {address}"
        raise RequestError(
            f"{shown}, a loopback, private, link-local or reserved address; model downloads only go "
            f"to public addresses unless an operator sets {PRIVATE_NETWORKS_SETTING}",
            status=403,
            field="url",
        )


# ---------------------------------------------------------------------------------- http(s)


class _PinnedAdapter(HTTPAdapter):
    """Connect to one checked address while Host, SNI and certificate checks use the name.

    Without this, requests would resolve the name again and a rebinding DNS server could answer
    with 169.254.169.254 the second time.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(max_retries=0)
        self._host = host
        self._address = address

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> Any:
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        if host_params["host"] != self._host:  # the session is built for one URL; never reuse it
            raise RuntimeError(f"session pinned to {self._host!r} was asked for {request.url!r}")
        host_params["host"] = self._address
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self._host
            pool_kwargs["assert_hostname"] = self._host
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)


def _pinned_session(host: str, address: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no env proxies or .netrc; see the module docstring
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = _PinnedAdapter(host, address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _download_http(url: str, download_dir: Path, policy: UrlPolicy) -> Path:
    """Follow redirects by hand so that every hop is checked like the first one."""
    deadline = time.monotonic() + policy.timeout_s
    name = archive_basename(url)
    current = url
    for _ in range(policy.max_redirects + 1):
        split = _check_remote_url(current, policy, ("http", "https"))
        port = split.port or (443 if split.scheme == "https" else 80)
        address = resolve_checked_address(split.hostname or "", port, policy)
        with _pinned_session(split.hostname or "", address) as session:
            with _get(session, current, split, deadline, policy) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    current = _redirect_target(current, response)
                    continue
                _check_status(response, current)
                return _save_response(response, download_dir, name, deadline, policy)
    raise RequestError(
        f"{url!r} redirected more than {policy.max_redirects} times; give the final URL", field="url"
    )


def _get(session: requests.Session, url: str, split: SplitResult, deadline: float,
         policy: UrlPolicy) -> requests.Response:
    left = _time_left(deadline, url, policy)
    headers = {"Host": split.netloc, "Accept-Encoding": "identity", "User-Agent": "modelpool"}
    with _network_errors(url, policy):
        return session.get(url, headers=headers, stream=True, allow_redirects=False, timeout=(left, left))


def _redirect_target(current: str, response: requests.Response) -> str:
    location = response.headers.get("Location")
    if not location:
        raise RequestError(
            f"{current!r} answered {response.status_code} without a Location header", field="url"
        )
    return urljoin(current, location).split("#", 1)[0]


def _check_status(response: requests.Response, url: str) -> None:
    if not 200 <= response.status_code < 300:
        raise RequestError(
            f"downloading {url!r} failed: the server answered {response.status_code} "
            f"{response.reason or ''}".rstrip(),
            field="url",
        )


def _save_response(response: requests.Response, download_dir: Path, name: str, deadline: float,
                   policy: UrlPolicy) -> Path:
    _check_declared_size(response, response.url, policy.max_bytes)
    download_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tmp", dir=download_dir)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in _body_chunks(response, deadline, policy):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise too_large(response.url, policy.max_bytes)
                digest.update(chunk)
                out.write(chunk)
        return _finish(tmp, digest.hexdigest(), download_dir, name)
    finally:
        tmp.unlink(missing_ok=True)


def _check_declared_size(response: requests.Response, url: str, max_bytes: int) -> None:
    """Refuse before reading a byte when the server says up front that the body is too big."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(url, max_bytes, declared=int(declared))


def _body_chunks(response: requests.Response, deadline: float, policy: UrlPolicy) -> Iterator[bytes]:
    """The body as it arrives; each socket read may only wait for the time left overall.

    ``read1`` returns after one read, so a server trickling bytes cannot hold us past the deadline.
    """
    raw = response.raw
    while True:
        left = _time_left(deadline, response.url, policy)
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(left)
        with _network_errors(response.url, policy):
            chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _time_left(deadline: float, url: str, policy: UrlPolicy) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timed_out(url, policy)
    return left


@contextmanager
def _network_errors(url: str, policy: UrlPolicy) -> Iterator[None]:
    """Turn transport failures into client errors: the URL was the caller's choice."""
    try:
        yield
    except RequestError:
        raise
    except (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout):
        raise _timed_out(url, policy) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise RequestError(f"downloading {url!r} failed ({type(exc).__name__}: {exc})", field="url") from None


def _timed_out(url: str, policy: UrlPolicy) -> RequestError:
    return RequestError(
        f"downloading {url!r} took longer than the {policy.timeout_s:g}s limit; use a faster or "
        "closer store, or copy the archive into the model store",
        status=408,
        field="url",
    )


def too_large(url: str, max_bytes: int, declared: Optional[int] = None) -> RequestError:
    size = f" ({declared} bytes)" if declared is not None else ""
    return RequestError(
        f"{url!r} is larger than the {max_bytes}-byte download limit{size}; ship a smaller archive "
        "or copy it into the model store",
        status=413,
        field="url",
    )


# ------------------------------------------------------------------------------------------- s3


def _download_s3(url: str, download_dir: Path, policy: UrlPolicy, fetch_s3: Optional[FetchS3]) -> Path:
    split = _check_remote_url(url, policy, ("s3",))
    if not split.path.strip("/"):
        raise RequestError(f"{url!r} names no object; use s3://bucket/key", field="url")
    if fetch_s3 is None:
        raise RequestError(
            f"{url!r} cannot be fetched: no object store is configured for s3:// URLs; copy the "
            "archive into the model store or use an http(s) URL",
            field="url",
        )
    download_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tmp", dir=download_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _call_fetch_s3(fetch_s3, url, tmp)
        if tmp.stat().st_size > policy.max_bytes:
            raise too_large(url, policy.max_bytes, declared=tmp.stat().st_size)
        return _finish(tmp, file_sha256(tmp), download_dir, archive_basename(url))
    finally:
        tmp.unlink(missing_ok=True)


def _call_fetch_s3(fetch_s3: FetchS3, url: str, dest: Path) -> None:
    try:
        fetch_s3(url, dest)
    except RequestError:
        raise
    except FileNotFoundError:
        raise RequestError(f"no object at {url!r}", status=404, field="url") from None
    except OSError as exc:  # pyarrow.fs reports S3 errors as OSError
        raise RequestError(f"fetching {url!r} failed ({exc})", field="url") from None


# ------------------------------------------------------------------------------------- naming


def archive_basename(url: str) -> str:
    """A safe local file name from the URL's last path segment, ending in .zip or .mar.

    Only ``[A-Za-z0-9._-]`` survive, a leading dot or dash is dropped (no hidden files, nothing
    that reads as an option), and the length is capped; an empty result becomes ``model.zip``.
    """
    segment = urlsplit(url).path.rsplit("/", 1)[-1]  # "" for ".../": no name given
    segment = unquote(segment).replace("\\", "/").rsplit("/", 1)[-1]  # "..%2Fx" names just "x"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", segment).lstrip(".-")
    if not name:
        return FALLBACK_NAME
    stem, suffix = name, ".zip"
    for known in ARCHIVE_SUFFIXES:
        if name.lower().endswith(known):
            stem, suffix = name[: -len(known)], name[-len(known):]
    return (stem[: _MAX_NAME] or "model") + suffix


def _finish(tmp: Path, sha256_hex: str, download_dir: Path, name: str) -> Path:
    """Rename into ``<sha256[:16]>-<name>``: the same bytes always land on the same path, and a
    concurrent download of them simply replaces an identical file."""
    final = download_dir / f"{sha256_hex[:16]}-{name}"
    os.replace(tmp, final)
    return final



