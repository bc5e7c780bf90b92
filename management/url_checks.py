"""Which remote model URLs may be fetched: the operator's allow-list and the public-address rule.

Both are checked before a byte is fetched (the allow-list before any DNS lookup), and again for each
redirect target by ``modelpool.management.url_download``; why the rules are what they are is told in
``modelpool.management.model_source``.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Union
from urllib.parse import SplitResult, urlsplit

from modelpool.cluster.url_patterns import compile_pattern as _compile
from modelpool.deployments.errors import RequestError

ALLOWED_URLS_SETTING = "--allowed-urls / MODELPOOL_ALLOWED_URLS"
PRIVATE_NETWORKS_SETTING = "--allow-private-networks / MODELPOOL_ALLOW_PRIVATE_NETWORKS"
#: Characters never legitimate in a URL we fetch; refusing them removes parser-differential tricks.
_BAD_URL_CHARS = re.compile(r"[^\x21-\x7e]|\\")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


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


def check_remote_url(url: str, policy: UrlPolicy, schemes: tuple[str, ...]) -> SplitResult:
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

