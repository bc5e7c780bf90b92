"""Downloading a checked model URL into the download folder: http(s) with pinned addresses, or s3.

Every hop of an http(s) download is checked again (``modelpool.management.url_checks``), the connection goes to the
address that was checked, and the size and time caps of the policy hold while the bytes arrive. The
file lands content-addressed, so the same bytes always land on the same path.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from modelpool.cluster.object_store import ObjectStore
from modelpool.cluster.settings import Settings
from modelpool.deployments.archive import file_sha256
from modelpool.deployments.archive_formats import ARCHIVE_SUFFIXES
from modelpool.deployments.errors import RequestError
from modelpool.management.url_checks import UrlPolicy, check_remote_url, resolve_checked_address

FALLBACK_NAME = "model.zip"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1024 * 1024
_MAX_NAME = 100

FetchS3 = Callable[[str, Path], None]


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


def download_http(url: str, download_dir: Path, policy: UrlPolicy) -> Path:
    """Follow redirects by hand so that every hop is checked like the first one."""
    deadline = time.monotonic() + policy.timeout_s
    name = archive_basename(url)
    current = url
    for _ in range(policy.max_redirects + 1):
        split = check_remote_url(current, policy, ("http", "https"))
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


def download_s3(url: str, download_dir: Path, policy: UrlPolicy, fetch_s3: Optional[FetchS3]) -> Path:
    split = check_remote_url(url, policy, ("s3",))
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


def s3_fetcher(settings: Settings) -> FetchS3:
    """The fetcher of s3:// model URLs: through the configured endpoint (allow-listed before it is called).

    The object's size is asked first: a download past --max-download-bytes would fill the disk
    before the size cap (checked on the file) could refuse it.
    """
    def fetch_s3(url: str, dest: Path) -> None:
        bucket, _, key = url[len("s3://"):].partition("/")
        store = ObjectStore(f"s3://{bucket}", s3_endpoint=settings.s3_endpoint, s3_region=settings.s3_region)
        size = store.filesystem.get_file_info(store.path(key)).size
        if size is not None and size > settings.max_download_bytes:
            raise too_large(url, settings.max_download_bytes, declared=size)
        store.download_file(key, dest)

    return fetch_s3


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
