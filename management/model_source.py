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
  configuration inside ``url_download.s3_fetcher``, not something the URL can point elsewhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from modelpool.deployments.archive import find_in_store
from modelpool.deployments.errors import RequestError
from modelpool.management.url_checks import ALLOWED_URLS_SETTING, UrlPolicy
from modelpool.management.url_download import FetchS3, download_http, download_s3

ACCEPTED_FORMS = (
    "a model-store archive name such as 'iris-1.zip', an http:// or https:// URL matching "
    f"{ALLOWED_URLS_SETTING}, or s3://bucket/key"
)


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
        return download_http(url, Path(download_dir), policy)
    if scheme == "s3":
        return download_s3(url, Path(download_dir), policy, fetch_s3)
    raise RequestError(f"unsupported URL scheme {scheme!r}; use {ACCEPTED_FORMS}", field="url")


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError as exc:
        raise RequestError(f"{url!r} is not a valid URL ({exc}); use {ACCEPTED_FORMS}", field="url") from None

