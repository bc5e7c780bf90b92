"""Model archives: manifest validation, building, safe unpacking, the model store."""
import json
import logging
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from modelpool.deployments import archive as archive_mod
from modelpool.deployments.archive import (
    LoadedArchive,
    build_archive,
    find_in_store,
    list_store,
    unpack_archive,
)
from modelpool.deployments.archive_formats import read_manifest
from modelpool.deployments.errors import RequestError
from modelpool.deployments.manifest import MANIFEST_NAME, Manifest


def manifest(**overrides) -> Manifest:
    fields = {"name": "toy", "version": "1", "handler": "toy:predict"}
    fields.update(overrides)
    return Manifest(**fields)


def toy_archive(tmp_path: Path, name: str = "toy", version: str = "1", out: Path = None,
                weights: str = "1 2 3\n") -> Path:
    src = tmp_path / f"src-{name}-{version}"
    src.mkdir(exist_ok=True)
    (src / "toy.py").write_text("def predict(x):\n    return x[:, 0]\n")
    (src / "weights.txt").write_text(weights)
    out = out or tmp_path / f"{name}-{version}.zip"
    return build_archive([src / "toy.py", src / "weights.txt"], manifest(name=name, version=version), out)


def raw_zip(path: Path, entries: list, manifest_data: dict = None) -> Path:
    """A zip with exactly the given (ZipInfo or name, bytes) entries plus a manifest."""
    manifest_data = manifest_data or {"name": "evil", "handler": "toy:predict", "files": []}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest_data))
        zf.writestr("toy.py", "def predict(x):\n    return x\n")
        for name_or_info, data in entries:
            zf.writestr(name_or_info, data)
    return path


def all_files(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------ manifest


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "..", "a..b", ".hidden", "-x", "", "x" * 65,
                                 "iris\n", "/abs", "a b"])
@pytest.mark.parametrize("field", ["name", "version"])
def test_unsafe_names_and_versions_are_refused(bad, field):
    with pytest.raises(RequestError) as exc:
        manifest(**{field: bad})
    assert exc.value.status == 400
    assert exc.value.field == f"manifest.{field}"
    assert "letters, digits" in exc.value.message


@pytest.mark.parametrize("good", ["iris", "iris_report", "v1.2-rc1", "A" * 64, "2"])
def test_safe_names_pass(good):
    assert manifest(name=good, version=good).name == good


def test_manifest_defaults_and_roundtrip():
    m = manifest(inputs=[{"name": "x", "datatype": "fp64", "shape": [-1, 4]}])
    assert (m.version, m.runtime, m.description, m.files, m.outputs, m.extra) == ("1", "python", "", [], [], {})
    assert m.inputs[0].datatype == "FP64"
    assert Manifest.parse(m.to_json()) == m


@pytest.mark.parametrize("overrides, field", [
    ({"handler": "toy"}, "manifest.handler"),
    ({"handler": "toy.py:predict"}, "manifest.handler"),
    ({"handler": "sklearn"}, "manifest.model_file"),
    ({"model_file": "../model.joblib"}, "manifest.model_file"),
    ({"files": ["/etc/passwd"]}, "manifest.files"),
    ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}, "manifest.inputs.0.datatype"),
    ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [-2]}]}, "manifest.outputs.0.shape"),
    ({"unknown_key": 1}, "manifest.unknown_key"),
])
def test_manifest_errors_name_the_field(overrides, field):
    with pytest.raises(RequestError) as exc:
        manifest(**overrides)
    assert exc.value.field == field


def test_manifest_parse_rejects_bad_json():
    with pytest.raises(RequestError) as exc:
        Manifest.parse(b"{not json")
    assert exc.value.field == "manifest"


# ------------------------------------------------------------------------------ building


def test_build_archive_writes_files_by_base_name_and_fills_manifest(tmp_path):
    path = toy_archive(tmp_path)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == sorted([MANIFEST_NAME, "toy.py", "weights.txt"])
    m = read_manifest(path)
    assert m.files == ["toy.py", "weights.txt"]
    assert (m.name, m.version, m.handler) == ("toy", "1", "toy:predict")


def test_build_archive_is_reproducible(tmp_path):
    a = toy_archive(tmp_path, out=tmp_path / "a.zip")
    b = toy_archive(tmp_path, out=tmp_path / "b.mar")
    assert a.read_bytes() == b.read_bytes()


def test_build_archive_into_a_directory_names_the_zip(tmp_path):
    out_dir = tmp_path / "store"
    out_dir.mkdir()
    assert toy_archive(tmp_path, out=out_dir) == out_dir / "toy-1.zip"
    assert [p.name for p in out_dir.iterdir()] == ["toy-1.zip"]  # no temp file left


def test_build_archive_refuses_missing_file(tmp_path):
    with pytest.raises(RequestError) as exc:
        build_archive([tmp_path / "nope.joblib"], manifest(), tmp_path / "x.zip")
    assert exc.value.field == "files"
    assert "does not exist" in exc.value.message
    assert not (tmp_path / "x.zip").exists()


def test_build_archive_refuses_manifest_naming_absent_files(tmp_path):
    (tmp_path / "other.py").write_text("")
    with pytest.raises(RequestError) as exc:
        build_archive([tmp_path / "other.py"], manifest(), tmp_path / "x.zip")
    assert exc.value.field == "manifest.handler"
    (tmp_path / "m.joblib").write_text("")
    with pytest.raises(RequestError) as exc:
        build_archive([tmp_path / "m.joblib"], manifest(handler="sklearn", model_file="model.joblib"),
                      tmp_path / "x.zip")
    assert exc.value.field == "manifest.model_file"


def test_build_archive_refuses_bad_output_suffix(tmp_path):
    with pytest.raises(RequestError) as exc:
        toy_archive(tmp_path, out=tmp_path / "toy.tar")
    assert exc.value.field == "out"


# ------------------------------------------------------------------------------ reading


def test_read_manifest_of_dir_and_zip(tmp_path):
    path = toy_archive(tmp_path)
    directory = tmp_path / "dir"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(directory)
    assert read_manifest(directory) == read_manifest(path)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(RequestError) as exc:
        read_manifest(tmp_path / "missing.zip")
    assert (exc.value.status, exc.value.field) == (404, "url")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(RequestError) as exc:
        read_manifest(tmp_path / "junk.zip")
    assert (exc.value.status, exc.value.field) == (400, "url")
    with zipfile.ZipFile(tmp_path / "bare.zip", "w") as zf:
        zf.writestr("toy.py", "")
    with pytest.raises(RequestError, match=MANIFEST_NAME):
        read_manifest(tmp_path / "bare.zip")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(RequestError, match=MANIFEST_NAME):
        read_manifest(tmp_path / "emptydir")


# ------------------------------------------------------------------------------ unpacking


def test_directory_archive_is_used_in_place(tmp_path):
    directory = tmp_path / "toy"
    with zipfile.ZipFile(toy_archive(tmp_path)) as zf:
        zf.extractall(directory)
    loaded = unpack_archive(directory, tmp_path / "cache")
    assert isinstance(loaded, LoadedArchive)
    assert loaded.model_dir == directory.resolve()
    assert loaded.source == directory
    assert not (tmp_path / "cache").exists()


def test_zip_is_extracted_once_into_content_addressed_cache(tmp_path):
    path = toy_archive(tmp_path)
    cache = tmp_path / "cache"
    loaded = unpack_archive(path, cache)
    assert loaded.model_dir.parent == (cache / "toy" / "1").resolve()
    assert len(loaded.model_dir.name) == 16
    assert (loaded.model_dir / "weights.txt").read_text() == "1 2 3\n"
    marker = loaded.model_dir / "marker"
    marker.write_text("kept")
    again = unpack_archive(path, cache)
    assert again.model_dir == loaded.model_dir and marker.exists()  # reused, not re-extracted
    assert [p.name for p in cache.iterdir()] == ["toy"]  # no temp dirs left


def test_changed_zip_gets_a_new_cache_dir(tmp_path):
    path = toy_archive(tmp_path)
    first = unpack_archive(path, tmp_path / "cache").model_dir
    toy_archive(tmp_path, weights="4 5 6\n")
    second = unpack_archive(path, tmp_path / "cache").model_dir
    assert first != second and (second / "weights.txt").read_text() == "4 5 6\n"


def test_concurrent_unpacks_share_one_directory(tmp_path):
    path = toy_archive(tmp_path)
    cache = tmp_path / "cache"
    results, errors = [], []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        try:
            results.append(unpack_archive(path, cache).model_dir)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert [p.name for p in cache.iterdir()] == ["toy"]


def test_losing_the_extraction_race_reuses_the_winner(tmp_path, monkeypatch):
    path = toy_archive(tmp_path)
    cache = tmp_path / "cache"
    real_extract = archive_mod._extract

    def extract_while_someone_else_wins(zf, dest):
        real_extract(zf, dest)
        winner = cache / "toy" / "1" / archive_mod.file_sha256(path)[:16]
        real_extract(zf, winner)  # a concurrent replica finished first
        (winner / "winner").write_text("")

    monkeypatch.setattr(archive_mod, "_extract", extract_while_someone_else_wins)
    loaded = unpack_archive(path, cache)
    assert (loaded.model_dir / "winner").exists()
    assert [p.name for p in cache.iterdir()] == ["toy"]


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry", [
    "../evil", "/abs", "a/../../evil", "..\\evil", "C:/evil", _symlink_info("link"),
])
def test_unsafe_entries_are_refused_before_writing(tmp_path, entry):
    bad = raw_zip(tmp_path / "bad.zip", [(entry, "/etc/passwd" if isinstance(entry, zipfile.ZipInfo) else "x")])
    cache = tmp_path / "store" / "cache"
    with pytest.raises(RequestError) as exc:
        unpack_archive(bad, cache)
    assert (exc.value.status, exc.value.field) == (400, "url")
    assert "refused" in exc.value.message
    assert not cache.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.zip"]


def test_size_cap_is_enforced_before_writing(tmp_path):
    big = raw_zip(tmp_path / "big.zip", [("data.bin", b"\0" * 10_000)])
    cache = tmp_path / "cache"
    with pytest.raises(RequestError) as exc:
        unpack_archive(big, cache, max_bytes=5_000)
    assert (exc.value.status, exc.value.field) == (400, "url")
    assert "limit" in exc.value.message
    assert not cache.exists()
    assert unpack_archive(big, cache, max_bytes=1_000_000).model_dir.is_dir()


def test_manifest_files_missing_from_zip_are_refused(tmp_path):
    data = {"name": "evil", "handler": "toy:predict", "files": ["toy.py", "weights.bin"]}
    bad = raw_zip(tmp_path / "bad.zip", [], manifest_data=data)
    with pytest.raises(RequestError) as exc:
        unpack_archive(bad, tmp_path / "cache")
    assert exc.value.field == "manifest.files" and "weights.bin" in exc.value.message
    assert not (tmp_path / "cache").exists()


def test_invalid_manifest_inside_zip_is_refused(tmp_path):
    bad = raw_zip(tmp_path / "bad.zip", [], manifest_data={"name": "../../etc", "handler": "toy:predict"})
    with pytest.raises(RequestError) as exc:
        unpack_archive(bad, tmp_path / "cache")
    assert exc.value.field == "manifest.name"
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ model store


def test_list_store_finds_archives_sorted_and_skips_broken(tmp_path, caplog):
    store = tmp_path / "store"
    store.mkdir()
    toy_archive(tmp_path, "toy", "10", out=store / "toy-10.zip")
    toy_archive(tmp_path, "toy", "2", out=store / "toy-2.mar")
    toy_archive(tmp_path, "alpha", "1", out=store / "alpha.zip")
    with zipfile.ZipFile(store / "alpha.zip") as zf:
        zf.extractall(store / "beta_dir")
    (store / "beta_dir" / MANIFEST_NAME).write_text(
        (store / "beta_dir" / MANIFEST_NAME).read_text().replace('"alpha"', '"beta"'))
    (store / "broken.zip").write_bytes(b"garbage")
    (store / "notes.txt").write_text("not an archive")
    (store / "plain_dir").mkdir()
    with caplog.at_level(logging.WARNING, logger="modelpool.deployments.archive"):
        found = list_store(store)
    assert [(m.name, m.version, p.name) for m, p in found] == [
        ("alpha", "1", "alpha.zip"), ("beta", "1", "beta_dir"),
        ("toy", "2", "toy-2.mar"), ("toy", "10", "toy-10.zip"),
    ]
    assert "broken.zip" in caplog.text


def test_list_store_of_missing_dir_is_empty(tmp_path):
    assert list_store(tmp_path / "nope") == []


def test_find_in_store_resolves_references(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    toy_archive(tmp_path, out=store / "toy-1.zip")
    toy_archive(tmp_path, out=store / "toy.mar")
    assert find_in_store(store, "toy-1.zip") == store.resolve() / "toy-1.zip"
    assert find_in_store(store, "toy-1") == store.resolve() / "toy-1.zip"
    assert find_in_store(store, "toy") == store.resolve() / "toy.mar"


@pytest.mark.parametrize("reference", ["../outside.zip", "/etc/passwd", "a/../../outside.zip",
                                       "..\\outside.zip", "", "link.zip"])
def test_find_in_store_refuses_escapes(tmp_path, reference):
    store = tmp_path / "store"
    store.mkdir()
    outside = toy_archive(tmp_path, out=tmp_path / "outside.zip")
    (store / "link.zip").symlink_to(outside)
    with pytest.raises(RequestError) as exc:
        find_in_store(store, reference)
    assert (exc.value.status, exc.value.field) == (400, "url")


def test_find_in_store_missing_is_404_and_lists_available(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    toy_archive(tmp_path, out=store / "toy-1.zip")
    with pytest.raises(RequestError) as exc:
        find_in_store(store, "iris-1.zip")
    assert (exc.value.status, exc.value.field) == (404, "url")
    assert "toy-1.zip" in exc.value.message


@pytest.mark.parametrize("entry, message", [
    ("../evil", "archive entry '../evil' is refused: '..' path segments are not allowed"),
    ("a/../../evil", "archive entry 'a/../../evil' is refused: '..' path segments are not allowed"),
    ("/etc/cron.d/evil", "archive entry '/etc/cron.d/evil' is refused: absolute paths are not allowed"),
    ("C:/evil", "archive entry 'C:/evil' is refused: absolute paths are not allowed"),
    ("..\\evil", "archive entry '..\\\\evil' is refused: '\\' is not a valid separator in zip entries; use '/'"),
    (_symlink_info("link"), "archive entry 'link' is refused: symbolic links are not allowed"),
])
def test_unsafe_entries_get_an_exact_400_before_anything_is_written(tmp_path, entry, message):
    """Issue 7: the exact answer a registration of such an archive gets (field url, status 400)."""
    bad = raw_zip(tmp_path / "bad.zip", [(entry, "/etc/passwd" if isinstance(entry, zipfile.ZipInfo) else "x")])
    with pytest.raises(RequestError) as exc:
        unpack_archive(bad, tmp_path / "cache")
    assert (exc.value.status, exc.value.field, exc.value.message) == (400, "url", message)
    assert not (tmp_path / "cache").exists()


def test_an_over_long_store_reference_is_a_400_not_a_file_system_error(tmp_path):
    """Found by schemathesis: a 300-byte name made the file system raise ENAMETOOLONG (a 500)."""
    from modelpool.deployments.archive import find_in_store
    from modelpool.deployments.errors import RequestError

    for reference in ("a" * 300, "Ṱ̺̺o͞" * 60, "ok/" + "b" * 256):
        with pytest.raises(RequestError) as raised:
            find_in_store(tmp_path, reference)
        assert (raised.value.status, raised.value.field) == (400, "url")
        assert "longer than 255 bytes" in raised.value.message


def test_a_manifest_declares_its_role_and_typed_parameters() -> None:
    base = {"name": "scaler", "handler": "scale:Scale"}
    assert Manifest(**base).service_type == "MODEL" and Manifest(**base).typed_parameters == {}
    declared = Manifest(**base, service_type="transformer",
                        parameters=[{"name": "factor", "type": "FLOAT", "value": "2.5"}])
    assert declared.service_type == "TRANSFORMER" and declared.typed_parameters == {"factor": 2.5}
    assert Manifest.parse(declared.to_json()) == declared
    with pytest.raises(RequestError) as caught:
        Manifest(**base, service_type="SPLITTER")
    assert caught.value.field == "manifest.service_type"
    with pytest.raises(RequestError) as caught:
        Manifest(**base, parameters=[{"name": "factor", "type": "FLOAT", "value": "big"}])
    assert caught.value.field == "manifest.parameters" and "parameters[0]" in caught.value.message
