"""The status page's session: a stateless signed cookie, and the CSRF token that goes with it.

Logging in at ``/ui`` with the management token sets the cookie ``modelpool_session`` to
``{expiry}.{hmac_sha256(token, expiry)}``. Any management replica can check it with the token it already
holds, nothing is stored, and a new management token ends every session. The cookie is HttpOnly (the
page's script cannot read it, so neither can an injected one), SameSite=Strict and Path=/, so the page's
actions can call the management API itself (``PUT /models/...``) with it.

A browser sends cookies with any request to the site, also a form another site submits; so a
cookie-authenticated request that changes something (any method but GET, HEAD, OPTIONS) must also carry
the header ``x-modelpool-csrf`` with the ``csrfToken`` that ``GET /ui/state`` answers: an HMAC of the
cookie, which a cross-site form can neither read nor set. The ``Authorization: Bearer`` header works
everywhere as before and needs no CSRF token (a browser never adds it by itself).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Optional

from modelpool.deployments.errors import RequestError

SESSION_COOKIE = "modelpool_session"
CSRF_HEADER = "x-modelpool-csrf"
SESSION_TTL_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_EXPIRY = re.compile(r"[0-9]{1,12}")


def _mac(token: str, purpose: str, text: str) -> str:
    """HMAC-SHA256 keyed by the management token; ``purpose`` keeps a session's MAC from being a CSRF token."""
    return hmac.new(token.encode(), f"modelpool-ui-{purpose}\n{text}".encode(), hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def new_session(token: str, now: float) -> str:
    """A cookie value good until ``now`` + :data:`SESSION_TTL_S`."""
    expiry = str(int(now) + SESSION_TTL_S)
    return f"{expiry}.{_mac(token, 'session', expiry)}"


def session_valid(value: Optional[str], token: str, now: float) -> bool:
    """The value was made by :func:`new_session` with this token and has not expired.

    Without a management token nothing is valid: an HMAC keyed by "" is one anybody can compute.
    """
    if not token or not value:
        return False
    expiry, dot, mac = value.partition(".")
    if not dot or not _EXPIRY.fullmatch(expiry) or int(expiry) <= now:
        return False
    return _same(mac, _mac(token, "session", expiry))


def csrf_token(session: str, token: str) -> str:
    """The CSRF token of a session (``csrfToken`` in ``GET /ui/state``)."""
    return _mac(token, "csrf", session)


def check_session(method: str, session: str, csrf_header: Optional[str], token: str, now: float) -> None:
    """401 unless ``session`` is valid; 403 when it is but an unsafe method lacks the right CSRF header."""
    if not session_valid(session, token, now):
        raise RequestError("the status page's session has expired or is not valid; log in again at /ui, or send "
                           "'Authorization: Bearer <token>'", status=401, field=SESSION_COOKIE)
    if method.upper() in SAFE_METHODS:
        return
    if not csrf_header or not _same(csrf_header, csrf_token(session, token)):
        raise RequestError(f"a request authenticated by the status page's session cookie must carry the header "
                           f"{CSRF_HEADER} with the csrfToken of GET /ui/state", status=403, field=CSRF_HEADER)
