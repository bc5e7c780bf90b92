"""Bearer tokens compared by digest, for routes whose expected token travels in Serve's user_config.

Serve shows every deployment's ``user_config`` to whoever can read its status (the Ray dashboard,
``serve status``/``GET /api/serve/applications/``) and a replica may log it at DEBUG, so the
inference token never travels itself: replicas receive its SHA-256 and compare the digest of what
a request presents, in constant time. A digest is only as strong as the token behind it, which is
why the inference token has a minimum length (modelpool.cluster.settings).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token: what replicas hold instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_matches(authorization: str, digests: Iterable[str]) -> bool:
    """True when an ``Authorization: Bearer <token>`` header carries a token with one of ``digests``.

    Every digest is compared (no early exit) with ``hmac.compare_digest``, so the answer's timing
    says nothing about how close a guess came.
    """
    scheme, _, presented = authorization.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return False
    digest = token_digest(presented)
    matched = False
    for expected in digests:
        matched |= hmac.compare_digest(digest, expected)
    return matched
