"""Keys and locations of the object store: which keys are safe, where a store URI points, S3 access.

Apart from :mod:`modelpool.cluster.object_store` (which reads and writes objects) because these are rules, not
I/O: a key is checked once here for every caller, so none can name anything outside the store root,
and ``file://``, plain-path and ``s3://`` URIs are parsed to one root form before a filesystem opens.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{32}(-|$)")
#: Attempts per S3 request (pyarrow's default is 3).
_S3_ATTEMPTS = 6


# ------------------------------------------------------------------------------------------ keys


def check_key(key: str, *, allow_root: bool = False) -> str:
    """Return ``key`` if it is a safe relative object key; ValueError naming it otherwise."""
    if allow_root and key == "":
        return key
    problem = _key_problem(key)
    if problem:
        raise ValueError(f"invalid object key {key!r}: {problem}")
    return key


def _key_problem(key: Any) -> Optional[str]:
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in key or "\x00" in key:
        return "must not contain '\\' or NUL"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must not have empty, '.' or '..' segments"
    if _TEMP_NAME.match(parts[-1]):
        return f"names starting with {TEMP_PREFIX!r} + hex are reserved for temp objects"
    return None


def is_temp(key: str) -> bool:
    return bool(_TEMP_NAME.match(key.rsplit("/", 1)[-1]))


def temp_sibling(path: str) -> str:
    """A unique hidden name next to ``path``: same directory, so a local rename is atomic."""
    parent, _, name = path.rpartition("/")
    return f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name[:150]}"


# ------------------------------------------------------------------------------------ locations


def parse_uri(uri: str) -> tuple[str, str]:
    """``(scheme, root)``: ``("file", "/abs/dir")`` or ``("s3", "bucket/prefix")``."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("object store URI must be a non-empty string")
    uri = uri.strip()
    if uri.startswith("s3://"):
        return "s3", _s3_root(uri)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} must not name a host; use file:///abs/dir")
        return "file", _local_root(unquote(parsed.path))
    if "://" in uri:
        raise ValueError(f"object store URI {uri!r}: use file:///dir, a local path or s3://bucket/prefix")
    return "file", _local_root(uri)


def _local_root(path: str) -> str:
    if not path:
        raise ValueError("local object store path is empty")
    return Path(os.path.abspath(os.path.expanduser(path))).as_posix()


def _s3_root(uri: str) -> str:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket; use s3://bucket/prefix")
    if prefix:
        check_key(prefix)
    return f"{bucket}/{prefix}" if prefix else bucket


def s3_filesystem(endpoint: Optional[str], region: Optional[str]) -> pafs.S3FileSystem:
    """S3 via pyarrow; credentials come from the standard AWS env vars / config files."""
    options: dict[str, Any] = {
        # Delayed open lets objects < 10 MiB go up as one PutObject (ETag = MD5, 1 request).
        "allow_delayed_open": True,
        # S3 asks clients to retry 500/503; 3 attempts (the default) gives up too early when
        # many writers share one key (moto's server also answers 500 to some concurrent PUTs).
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_S3_ATTEMPTS),
    }
    if region:
        options["region"] = region
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parsed.netloc or parsed.path.strip("/"):
            raise ValueError(f"S3 endpoint {endpoint!r} must look like http://host:port")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**options)
