"""Model archives: a directory or a zip (``.zip``/``.mar``) with a manifest, built, unpacked, found in the store.

Which kind of archive a path is and how its manifest is read (modelpool's ``MANIFEST.json`` or a
``.mar``'s ``MAR-INF/MANIFEST.json``, with register's ``handler=`` override) is
:mod:`modelpool.deployments.archive_formats`'s; this module builds archives, unpacks them for loading and
lists the model store.

Zips come from users, so every entry is checked (no absolute paths, no ``..``, no symlinks, a cap on
the uncompressed size) *before* anything is written. Extraction goes to a content-addressed cache
directory through a temp dir + ``os.rename``, so concurrent replicas loading the same archive never
see a half-written model and reuse each other's work.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from modelpool.deployments.archive_formats import (ARCHIVE_SUFFIXES, check_required_files, directory_manifest, is_archive,
                                         open_zip, read_manifest, zip_manifest)
from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import MANIFEST_NAME, Manifest

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 1024**3
#: Fixed entry timestamp so that the same inputs give the same zip (and the same cache dir).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LoadedArchive:
    """An archive ready to load: where its files are, and what its manifest says."""

    model_dir: Path
    manifest: Manifest
    source: Path


# --------------------------------------------------------------------------------------- building


def build_archive(files: list[Path], manifest: Manifest, out: Path) -> Path:
    """Zip ``files`` (by base name) with the manifest; ``out`` may be a directory.

    The manifest's ``files`` is filled in from ``files``. The zip is written next to ``out`` and
    renamed into place, so a reader never sees a partial archive.
    """
    paths = [Path(f) for f in files]
    names = _check_build_inputs(paths)
    manifest = Manifest(**{**manifest.model_dump(), "files": names})
    check_required_files(manifest, set(names))
    out = _archive_path(Path(out), manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path, name in zip(paths, names):
                _write_entry(zf, name, path)
            zf.writestr(_zip_info(MANIFEST_NAME, 0), manifest.to_json())
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def _check_build_inputs(paths: list[Path]) -> list[str]:
    """Every file must exist and base names must be unique; returns the base names."""
    names: list[str] = []
    for path in paths:
        if not path.is_file():
            what = "is a directory; list the files in it" if path.is_dir() else "does not exist"
            raise RequestError(f"file {str(path)!r} {what}", field="files")
        if path.name == MANIFEST_NAME:
            raise RequestError(
                f"do not pass {MANIFEST_NAME}; the manifest is written from the options", field="files"
            )
        if path.name in names:
            raise RequestError(
                f"two files are named {path.name!r}; archive entries use base names, rename one",
                field="files",
            )
        names.append(path.name)
    return names


def _archive_path(out: Path, manifest: Manifest) -> Path:
    if out.is_dir():
        return out / f"{manifest.name}-{manifest.version}.zip"
    if out.suffix.lower() not in ARCHIVE_SUFFIXES:
        raise RequestError(
            f"output {str(out)!r} must end in .zip or .mar (or be an existing directory)", field="out"
        )
    return out


def _zip_info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size
    return info


def _write_entry(zf: zipfile.ZipFile, name: str, path: Path) -> None:
    """Stream one file into the zip (model files can be large)."""
    with path.open("rb") as src, zf.open(_zip_info(name, path.stat().st_size), "w") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


# ------------------------------------------------------------------------------------- unpacking


def unpack_archive(location: Path, cache_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                   handler: Optional[str] = None) -> LoadedArchive:
    """Make an archive loadable: a directory is used in place, a zip is extracted (once) to
    ``cache_dir/<name>/<version>/<sha256[:16]>/``. ``handler`` replaces the manifest's (register's
    ``handler=``); the extracted files are the same either way."""
    location = Path(location)
    if location.is_dir():
        return LoadedArchive(location.resolve(), directory_manifest(location, handler), location)
    with open_zip(location) as zf:
        check_entries(zf.infolist(), max_bytes)
        manifest = zip_manifest(zf, location, handler)
        target = Path(cache_dir) / manifest.name / manifest.version / file_sha256(location)[:16]
        if not target.is_dir():
            _extract_atomically(zf, Path(cache_dir), target)
    return LoadedArchive(target.resolve(), manifest, location)


def check_entries(infos: list[zipfile.ZipInfo], max_bytes: int) -> None:
    """Refuse unsafe zip entries (zip-slip, symlinks, duplicates) and oversized archives."""
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        reason = _unsafe_reason(info)
        if reason:
            raise RequestError(f"archive entry {name!r} is refused: {reason}", field="url")
        if name in seen:
            raise RequestError(f"archive entry {name!r} appears twice; rebuild the archive", field="url")
        seen.add(name)
        total += info.file_size
    if total > max_bytes:
        raise RequestError(
            f"archive unpacks to {total} bytes, more than the limit of {max_bytes}; "
            "ship a smaller model or raise the limit",
            field="url",
        )


def _unsafe_reason(info: zipfile.ZipInfo) -> Optional[str]:
    name = info.filename
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute paths are not allowed"
    if "\\" in name:
        return "'\\' is not a valid separator in zip entries; use '/'"
    if ".." in name.split("/"):
        return "'..' path segments are not allowed"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic links are not allowed"
    return None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks: archives may be gigabytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _extract_atomically(zf: zipfile.ZipFile, cache_dir: Path, target: Path) -> None:
    """Extract into a temp dir in ``cache_dir`` then rename; a concurrent winner is reused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        try:
            _extract(zf, tmp)
        except (RuntimeError, zipfile.BadZipFile, zlib.error, FileExistsError, NotADirectoryError) as exc:
            raise RequestError(
                f"archive cannot be extracted ({type(exc).__name__}: {exc}); rebuild it", field="url"
            ) from None
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            logger.debug("archive already extracted to %s by someone else; reusing it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _extract(zf: zipfile.ZipFile, dest: Path) -> None:
    """Write checked entries under ``dest`` (our own loop: paths are exactly the checked ones)."""
    for info in zf.infolist():
        target = dest.joinpath(*PurePosixPath(info.filename).parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("xb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)


# ----------------------------------------------------------------------------------- model store


def list_store(store: Path) -> list[tuple[Manifest, Path]]:
    """Every readable archive directly in ``store``, sorted by name then (natural) version."""
    store = Path(store)
    if not store.is_dir():
        logger.warning("model store %s is not a directory; it holds no models", store)
        return []
    found: list[tuple[Manifest, Path]] = []
    for path in sorted(store.iterdir()):
        if path.name.startswith(".") or not is_archive(path):
            continue  # hidden entries are temp files of build_archive and extractions
        try:
            found.append((read_manifest(path), path))
        except (RequestError, OSError) as exc:
            logger.warning("skipping unreadable archive %s: %s", path, exc)
    found.sort(key=lambda item: (item[0].name, _natural(item[0].version), item[1].name))
    return found


def _natural(text: str) -> list:
    """Sort key where "10" comes after "2"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_in_store(store: Path, reference: str) -> Path:
    """Resolve a store-relative reference ("iris-1.zip", "iris") to a path inside the store."""
    root = Path(store).resolve()
    _check_reference(reference)
    candidates = [reference]
    if Path(reference).suffix.lower() not in ARCHIVE_SUFFIXES:
        candidates += [reference + suffix for suffix in ARCHIVE_SUFFIXES]
    for candidate in candidates:
        path = root / candidate
        if not path.exists() and not path.is_symlink():
            continue
        if not path.resolve().is_relative_to(root):
            raise RequestError(
                f"{reference!r} points outside the model store; reference an archive inside it",
                field="url",
            )
        if is_archive(path):
            return path
    available = ", ".join(p.name for _, p in list_store(root)) or "none"
    raise RequestError(
        f"no archive {reference!r} in the model store (available: {available})", status=404, field="url"
    )


MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def _check_reference(reference: str) -> None:
    parts = reference.replace("\\", "/").split("/")
    if (not reference or reference.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", reference)
            or ".." in parts or "\x00" in reference):
        raise RequestError(
            f"{reference!r} is not a store-relative archive name; use e.g. 'iris-1.zip' without "
            "'..' or a leading '/'",
            field="url",
        )
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        # the file system's own limit: asking it about a longer name raises ENAMETOOLONG (a 500 otherwise)
        raise RequestError(f"the archive name is longer than {MAX_NAME_BYTES} bytes per path segment; "
                           "use the archive's file name in the model store, e.g. 'iris-1.zip'", field="url")
