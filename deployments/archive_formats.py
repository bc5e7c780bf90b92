"""Which kind of archive a path is, and how its manifest is read without extracting anything.

An archive is a directory or a zip (``.zip``, or a ``.mar`` of TorchServe or MMS; a tar.gz ``.mar`` is
recognized and refused with what to do instead). Its manifest is modelpool's ``MANIFEST.json`` at the
root, or the ``MAR-INF/MANIFEST.json`` of an MMS/TorchServe archive read as modelpool's
(:mod:`modelpool.deployments.mar`; MAR-INF wins when both are there, as in MMS). Both kinds are read through one
:class:`~modelpool.deployments.handler_refs.ArchiveFiles` view, so the manifest checks, the handler override
(:func:`with_handler`) and the handler references see a zip and a directory alike. Building, unpacking
and the model store are :mod:`modelpool.deployments.archive`'s.
"""
from __future__ import annotations

import json

import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

from modelpool.deployments.errors import RequestError
from modelpool.deployments.handler_refs import ArchiveFiles, resolve_handler
from modelpool.deployments.manifest import MANIFEST_NAME, SKLEARN_HANDLER, Manifest, split_handler
from modelpool.deployments.mar import MAR_MANIFEST_NAME, manifest_from_mar

ARCHIVE_SUFFIXES = (".zip", ".mar")
MAX_MANIFEST_BYTES = 1024**2


def is_archive(path: Path) -> bool:
    """A directory with a manifest (modelpool's or a .mar's), or a file with an archive suffix."""
    if path.is_dir():
        return (path / MANIFEST_NAME).is_file() or (path / MAR_MANIFEST_NAME).is_file()
    return path.is_file() and path.suffix.lower() in ARCHIVE_SUFFIXES


def required_files(manifest: Manifest) -> list[str]:
    """Files the manifest needs: its ``files``, the model file and the handler module."""
    needed = list(manifest.files)
    if manifest.model_file and manifest.model_file not in needed:
        needed.append(manifest.model_file)
    if manifest.handler != SKLEARN_HANDLER:
        module_file = split_handler(manifest.handler)[0] + ".py"
        if module_file not in needed:
            needed.append(module_file)
    return needed


def check_required_files(manifest: Manifest, present: Iterable[str]) -> None:
    """Refuse a manifest that names files the archive does not hold."""
    have = set(present)
    for name in required_files(manifest):
        if name in have:
            continue
        if name == manifest.model_file:
            field = "manifest.model_file"
        elif name in manifest.files:
            field = "manifest.files"
        else:
            field = "manifest.handler"
        raise RequestError(
            f"archive {manifest.name}:{manifest.version} lacks {name!r} named by its manifest; "
            "rebuild it with that file included",
            field=field,
        )


def read_manifest(location: Path, handler: Optional[str] = None) -> Manifest:
    """Read (and check) the manifest of a directory or zip archive without extracting it.

    ``handler`` (a registration's ``handler=``) replaces the manifest's handler; see :func:`with_handler`.
    """
    location = Path(location)
    if location.is_dir():
        return directory_manifest(location, handler)
    with open_zip(location) as zf:
        return zip_manifest(zf, location, handler)


def with_handler(manifest: Manifest, handler: str, files: ArchiveFiles) -> Manifest:
    """The manifest running ``handler`` instead of its own (MMS's ``handler`` register parameter).

    ``handler`` is taken in any of TorchServe's and MMS's forms and checked like the manifest's own:
    its module must be a file of the archive and the manifest must still hold (``sklearn`` needs a
    model file). Every refusal names the field ``handler``. Whether it fits the handler contract is
    known only once it is imported, which the registration's load check does.
    """
    resolved = resolve_handler(handler, files, field="handler")
    if resolved == manifest.handler:
        return manifest
    try:
        return Manifest(**{**manifest.model_dump(), "handler": resolved})
    except RequestError as exc:
        raise RequestError(f"handler {handler!r} does not fit archive {manifest.name}:{manifest.version}: "
                           f"{exc.message}", field="handler") from None


def _manifest_of(files: ArchiveFiles, label: str, handler: Optional[str]) -> Manifest:
    """The archive's manifest (MAR-INF first, as MMS reads it), the handler override, and the files it needs."""
    if files.exists(MAR_MANIFEST_NAME):  # the override replaces model.handler before it is resolved
        manifest = manifest_from_mar(files.read(MAR_MANIFEST_NAME, MAX_MANIFEST_BYTES), files, handler)
    elif files.exists(MANIFEST_NAME):
        manifest = Manifest.parse(files.read(MANIFEST_NAME, MAX_MANIFEST_BYTES))
    else:
        raise RequestError(
            f"{label!r} has no {MANIFEST_NAME} (nor the {MAR_MANIFEST_NAME} of a TorchServe or MMS archive); "
            "build an archive with `modelpool archive` or torch-model-archiver",
            field="url",
        )
    if files.exists(REGISTERED_NAME):  # what register set over the manifest (service_type, parameters)
        manifest = with_registered(manifest, files.read(REGISTERED_NAME, MAX_MANIFEST_BYTES))
    if handler is not None:
        manifest = with_handler(manifest, handler, files)
    check_required_files(manifest, (n for n in required_files(manifest) if files.exists(n)))
    return manifest


#: The entry register writes into the stored copy of an archive when it overrides the manifest (Seldon's
#: --service-type and --parameters given at register): every reader of the archive (replicas, the generic pool,
#: batch workers, the load check) sees the same manifest without being told.
REGISTERED_NAME = "MODELPOOL-REGISTERED.json"
REGISTERED_KEYS = ("service_type", "parameters")


def with_registered(manifest: Manifest, overrides: bytes | dict) -> Manifest:
    """The manifest with register's ``service_type`` and ``parameters`` over its own; 400s name the field."""
    try:
        values = json.loads(overrides) if isinstance(overrides, (bytes, str)) else dict(overrides)
    except ValueError:
        raise RequestError(f"{REGISTERED_NAME} is not JSON; rebuild the archive", field="url") from None
    if not isinstance(values, dict) or set(values) - set(REGISTERED_KEYS):
        raise RequestError(f"{REGISTERED_NAME} holds only {', '.join(REGISTERED_KEYS)}", field="url")
    try:
        return Manifest(**{**manifest.model_dump(), **values})
    except RequestError as exc:  # "manifest.service_type: ..." -> the register parameter at fault
        field = exc.field.split(".", 1)[1].split(".")[0] if exc.field and "." in exc.field else exc.field
        raise RequestError(exc.message.replace("invalid manifest: manifest.", "invalid "), field=field) from None


def directory_manifest(directory: Path, handler: Optional[str] = None) -> Manifest:
    return _manifest_of(_DirFiles(directory), directory.name, handler)


def open_zip(location: Path) -> zipfile.ZipFile:
    if not location.exists():
        raise RequestError(f"no model archive {location.name!r}", status=404, field="url")
    try:
        return zipfile.ZipFile(location)
    except (zipfile.BadZipFile, OSError) as exc:
        if _is_gzip(location):
            raise RequestError(
                f"{location.name!r} is a tar.gz archive (torch-model-archiver --archive-format tgz); modelpool reads "
                "zip archives: rebuild it with the default format, or unpack it into the model store as a directory",
                field="url",
            ) from None
        raise RequestError(
            f"{location.name!r} is not a directory or a readable zip archive ({exc})", field="url"
        ) from None


def _is_gzip(location: Path) -> bool:
    try:
        with location.open("rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def zip_manifest(zf: zipfile.ZipFile, location: Path, handler: Optional[str] = None) -> Manifest:
    return _manifest_of(_ZipFiles(zf, location.name), location.name, handler)


class _ZipFiles:
    """The files of an open zip, for manifests and handler references (nothing is extracted)."""

    def __init__(self, zf: zipfile.ZipFile, label: str) -> None:
        self._zf = zf
        self._label = label
        self._files = {info.filename: info for info in zf.infolist() if not info.is_dir()}

    def exists(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str, limit: int) -> bytes:
        info = self._files[name]
        if info.file_size > limit:
            raise RequestError(f"{name} in {self._label!r} is larger than {limit // 1024**2} MiB", field="url")
        try:
            return self._zf.read(info)
        except (zipfile.BadZipFile, zlib.error, RuntimeError, OSError) as exc:
            raise RequestError(f"{name} in {self._label!r} cannot be read ({exc}); rebuild the archive",
                               field="url") from None

    def names(self) -> list[str]:
        return sorted(self._files)


class _DirFiles:
    """The files of a directory archive; paths that resolve outside it do not exist."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._resolved = self._root.resolve()

    def _path(self, name: str) -> Optional[Path]:
        path = self._root.joinpath(*PurePosixPath(name).parts)
        return path if path.resolve().is_relative_to(self._resolved) else None

    def exists(self, name: str) -> bool:
        path = self._path(name)
        return path is not None and path.is_file()

    def read(self, name: str, limit: int) -> bytes:
        path = self._path(name)
        if path is None or not path.is_file():
            raise RequestError(f"{name} is not in {self._root.name!r}", field="url")
        if path.stat().st_size > limit:
            raise RequestError(f"{name} in {self._root.name!r} is larger than {limit // 1024**2} MiB", field="url")
        return path.read_bytes()

    def names(self) -> list[str]:
        return sorted(p.relative_to(self._root).as_posix() for p in self._root.rglob("*")
                      if p.is_file() and not p.is_symlink())
