"""Object storage for batches, artifacts and the registry: a local directory or an S3 bucket.

Everything goes through :mod:`pyarrow.fs`, so the same code (and pyarrow.parquet / datasets)
works on a laptop directory and on S3, and no S3 client is hand-written here.

Guarantees callers rely on:

* Keys are checked once (:func:`check_key`): '/'-separated, relative, no ``.``/``..``/empty
  segments, no ``\\`` or NUL. No key can name anything outside the store root.
* Whole-object writes are atomic: locally a temp file in the same directory is renamed over the
  target; on S3 one PUT (objects >= 10 MiB: one multipart upload, also committed atomically).
  Streaming writes (:meth:`ObjectStore.open_output`, :meth:`ObjectStore.upload_file`) go to a temp
  object that is moved into place only when the stream closes without error.
* Whole-object reads (:meth:`ObjectStore.read_bytes`, ``read_json``, ``download_file``) never
  return a torn object. Locally the open file is a snapshot of one inode. On S3, pyarrow reads
  with HEAD (size) then ranged GETs, which mix two versions when a write lands in between; such
  reads are detected and retried. The check is exact when the ETag is the object's MD5 (any
  single PUT, so everything this store writes below 10 MiB); for multipart or SSE-KMS ETags it
  is a second HEAD showing the same version, which misses a version replaced *and restored*
  within one read.
* Temp objects (``.tmp-<hex>...``) left behind by a crash are never listed.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Optional

import pyarrow.fs as pafs

from modelpool.cluster.object_locations import TEMP_PREFIX, check_key, is_temp, parse_uri, s3_filesystem, temp_sibling

_CHUNK = 8 * 1024 * 1024
_PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")
#: How long a reader keeps retrying an S3 object that is rewritten during every read.
_READ_RETRY_S = 30.0
#: A plain ETag that is not the MD5 (SSE-KMS) is trusted after this many identical reads in a row.
_STABLE_MISMATCHES = 3
#: Writes that check (one HEAD each) whether the bucket's ETags are MD5s, until one proves it.
_ETAG_PROBES = 3


class ObjectNotFound(KeyError):
    """No object at ``key`` (a KeyError so ``except KeyError`` callers keep working)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


# ---------------------------------------------------------------------------------------- store


class ObjectStore:
    """Keys -> bytes on a local directory or S3, with atomic whole-object writes."""

    def __init__(self, uri: str, *, s3_endpoint: Optional[str] = None,
                 s3_region: Optional[str] = None) -> None:
        scheme, root = parse_uri(uri)
        self.is_s3 = scheme == "s3"
        self.root = root
        #: S3 only: set once an ETag proved to be the MD5 of the object; then a mismatch is torn.
        self._md5_etags = False
        self._etag_probes_left = _ETAG_PROBES
        if self.is_s3:
            self.uri = f"s3://{root}"
            self.filesystem: pafs.FileSystem = s3_filesystem(s3_endpoint, s3_region)
        else:
            self.uri = Path(root).as_uri()
            self.filesystem = pafs.LocalFileSystem()
            self.filesystem.create_dir(root, recursive=True)

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    def path(self, key: str) -> str:
        """Full path of ``key`` inside :attr:`filesystem` (for pyarrow.parquet, datasets ...)."""
        return f"{self.root}/{check_key(key)}"

    def _prefix_path(self, prefix: str) -> str:
        """Like :meth:`path`, but ``""`` means the store root (for listings)."""
        check_key(prefix, allow_root=True)
        return f"{self.root}/{prefix}" if prefix else self.root

    # ------------------------------------------------------------------------------- writing

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object at ``key`` in one atomic step; readers see old or new, never a mix."""
        path = self.path(key)
        if self.is_s3:
            with self.filesystem.open_output_stream(path, compression=None) as out:
                out.write(data)  # committed by one PUT (or multipart completion) on close
            if not self._md5_etags and self._etag_probes_left > 0:
                self._learn_etag_style(path, data)
            return
        with self._atomic_output(path) as out:
            out.write(data)

    def write_json(self, key: str, value: Any) -> None:
        """Serialize first (a TypeError leaves the old object untouched), then write atomically."""
        self.write_bytes(key, json.dumps(value, indent=2).encode("utf-8"))

    def open_output(self, key: str) -> "AtomicOutput":
        """A writable stream whose object appears at ``key`` only on a clean ``close()``.

        Use as a context manager: leaving the block with an exception discards everything.
        """
        return self._atomic_output(self.path(key))

    def upload_file(self, local_path: str | os.PathLike, key: str) -> None:
        """Stream a local file to ``key`` (atomically, in chunks: any size, little memory)."""
        with open(local_path, "rb") as source, self.open_output(key) as out:
            shutil.copyfileobj(source, out, _CHUNK)

    def _atomic_output(self, path: str) -> "AtomicOutput":
        temp = temp_sibling(path)
        if not self.is_s3:
            self.filesystem.create_dir(path.rpartition("/")[0], recursive=True)
        raw = self.filesystem.open_output_stream(temp, compression=None)
        return AtomicOutput(self.filesystem, raw, temp, path)

    # ------------------------------------------------------------------------------- reading

    def read_bytes(self, key: str) -> bytes:
        """The whole object at ``key`` (one complete version); ObjectNotFound if missing."""
        sink = io.BytesIO()
        self._copy_object(key, sink)
        return sink.getvalue()

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def open_input(self, key: str) -> Any:
        """A seekable pyarrow input file (zip, parquet ...); ObjectNotFound if missing.

        Unlike :meth:`read_bytes` this is not checked against concurrent overwrites on S3: use it
        for objects written once (results, artifacts, archives).
        """
        path = self.path(key)
        try:
            return self.filesystem.open_input_file(path)
        except OSError as exc:
            self._raise_if_missing(key, path, exc)
            raise

    def download_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Stream ``key`` to ``local_path``, which is replaced atomically (never left half-written)."""
        target = Path(local_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name[:150]}")
        try:
            with open(temp, "wb") as sink:
                self._copy_object(key, sink)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def _copy_object(self, key: str, sink: BinaryIO) -> None:
        """Copy one complete version of ``key`` into ``sink``, retrying reads that saw a rewrite."""
        path = self.path(key)
        deadline = time.monotonic() + _READ_RETRY_S
        unproven: Optional[tuple[str, str]] = None  # (ETag, MD5) of the last unprovable read
        repeats = 0
        for attempt in itertools.count():
            sink.seek(0)
            sink.truncate()
            meta, nbytes, digest = self._copy_once(key, path, sink)
            if not self.is_s3:
                return
            verdict = self._check_version(path, meta, nbytes, digest)
            if verdict == "ok":
                return
            if verdict == "unproven":
                seen = (_meta_text(meta, "ETag"), digest)
                repeats = repeats + 1 if seen == unproven else 1
                unproven = seen
                if repeats >= _STABLE_MISMATCHES:
                    return  # the same bytes under the same ETag, read after read
            else:
                unproven, repeats = None, 0
            if time.monotonic() > deadline:
                raise OSError(f"object {key!r} in {self.uri} changed during every read for "
                              f"{_READ_RETRY_S:.0f}s; giving up")
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))

    def _copy_once(self, key: str, path: str, sink: BinaryIO) -> tuple[dict, int, str]:
        """One read pass: (HEAD metadata, bytes copied, their MD5)."""
        digest = hashlib.md5(usedforsecurity=False)
        nbytes = 0
        try:
            with self.filesystem.open_input_file(path) as source:
                meta = dict(source.metadata() or {}) if self.is_s3 else {}
                while chunk := source.read(_CHUNK):
                    if self.is_s3:
                        digest.update(chunk)
                    sink.write(chunk)
                    nbytes += len(chunk)
        except OSError as exc:
            self._raise_if_missing(key, path, exc)
            raise
        return meta, nbytes, digest.hexdigest()

    def _check_version(self, path: str, meta: dict, nbytes: int, digest: str) -> str:
        """Did one S3 read see one version? ``"ok"``, ``"changed"`` (retry) or ``"unproven"``.

        A plain ETag is the MD5 of the object (single PUT, no SSE-KMS), which proves the bytes
        exactly. Otherwise (multipart or KMS ETags) the best check is a second HEAD showing the
        same version as the one before the read; it cannot see a version that was replaced and
        then restored within one read.
        """
        etag = _meta_text(meta, "ETag").strip('"')
        if nbytes != int(_meta_text(meta, "Content-Length") or -1):
            return "changed"
        if etag == digest:
            self._md5_etags = True
            return "ok"
        if self._head_version(path) != _version_of(meta):
            return "changed"
        if not _PLAIN_ETAG.match(etag):
            return "ok"  # multipart ETag: not a content hash, and stable across the read
        # A plain ETag that is not our MD5: torn, unless this store's ETags are not MD5s (KMS).
        return "changed" if self._md5_etags else "unproven"

    def _learn_etag_style(self, path: str, data: bytes) -> None:
        """A HEAD after one of the first writes: does this bucket give a PUT its MD5 as ETag?

        Knowing it early lets the very first reads reject torn data outright. Limited to a few
        probes so a KMS bucket (ETags are never MD5s) does not pay a HEAD on every write.
        """
        self._etag_probes_left -= 1
        version = self._head_version(path)
        expected = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if version is not None and version[0].strip('"') == expected:
            self._md5_etags = True

    def _head_version(self, path: str) -> Optional[tuple[str, str, str]]:
        try:
            with self.filesystem.open_input_file(path) as source:
                return _version_of(dict(source.metadata() or {}))
        except FileNotFoundError:
            return None

    def _raise_if_missing(self, key: str, path: str, exc: OSError) -> None:
        """Turn 'no such object' (missing, a directory, under a file) into ObjectNotFound."""
        if isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(key) from None
        try:
            kind = self.filesystem.get_file_info(path).type
        except OSError:
            return
        if kind != pafs.FileType.File:
            raise ObjectNotFound(key) from None

    # ------------------------------------------------------------------------- other queries

    def exists(self, key: str) -> bool:
        """True if an object (not a 'directory') is stored at ``key``."""
        return self.filesystem.get_file_info(self.path(key)).type == pafs.FileType.File

    def delete(self, key: str) -> None:
        """Delete the object at ``key``; a missing one is fine (deletes are idempotent)."""
        try:
            self.filesystem.delete_file(self.path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object at or under ``prefix`` (a whole 'directory'); missing is fine."""
        path = self._prefix_path(check_key(prefix))
        kind = self.filesystem.get_file_info(path).type
        try:
            if kind == pafs.FileType.Directory:
                self.filesystem.delete_dir(path)
            elif kind == pafs.FileType.File:
                self.filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> list[str]:
        """Keys of every object under ``prefix`` (recursive, relative to the root, sorted)."""
        base = self._prefix_path(prefix)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self.filesystem.get_file_info(selector)
        except NotADirectoryError:
            return []  # prefix names an object, not a directory
        start = len(self.root) + 1
        keys = (info.path[start:] for info in infos if info.type == pafs.FileType.File)
        return sorted(key for key in keys if not is_temp(key))

    def list_children(self, prefix: str = "") -> list[str]:
        """Immediate child names under ``prefix``: objects and 'directories' that hold objects.

        Derived from the recursive listing so that directories emptied by deletes (kept as empty
        dirs locally, as marker objects on S3) do not show up.
        """
        strip = len(prefix) + 1 if prefix else 0
        return sorted({key[strip:].split("/", 1)[0] for key in self.list(prefix)})


def _version_of(meta: dict) -> tuple[str, str, str]:
    """What identifies one S3 object version in HEAD metadata."""
    return tuple(_meta_text(meta, name) for name in ("ETag", "Content-Length", "Last-Modified"))


def _meta_text(meta: dict, name: str) -> str:
    value = meta.get(name, b"")
    return value.decode() if isinstance(value, bytes) else str(value)


class AtomicOutput:
    """A pyarrow output stream on a temp object, moved to its key when closed cleanly.

    pyarrow streams always commit on close (even from ``__exit__`` after an error), and S3
    uploads cannot be aborted from Python; writing to a temp name and moving it on success is the
    one way to make a failed write leave nothing behind. Other stream methods are delegated.
    """

    def __init__(self, filesystem: pafs.FileSystem, raw: Any, temp: str, target: str) -> None:
        self._filesystem = filesystem
        self._raw = raw
        self._temp = temp
        self._target = target
        self._done = False

    def write(self, data: Any) -> int:
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    @property
    def closed(self) -> bool:
        return self._done

    def close(self) -> None:
        """Finish the temp object and move it over the target (rename locally, copy on S3)."""
        if self._done:
            return
        self._done = True
        try:
            self._raw.close()
            self._filesystem.move(self._temp, self._target)
        except BaseException:
            self._discard_temp()
            raise

    def abort(self) -> None:
        """Drop everything written; the target keeps its previous content (or stays absent)."""
        if self._done:
            return
        self._done = True
        try:
            self._raw.close()
        finally:
            self._discard_temp()

    def _discard_temp(self) -> None:
        try:
            self._filesystem.delete_file(self._temp)
        except OSError:
            pass

    def __enter__(self) -> "AtomicOutput":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def object_store_from_settings(uri: str, s3_endpoint: Optional[str] = None,
                               s3_region: Optional[str] = None) -> ObjectStore:
    """Build the store from settings values (empty strings from env vars mean 'not set')."""
    return ObjectStore(uri, s3_endpoint=s3_endpoint or None, s3_region=s3_region or None)
