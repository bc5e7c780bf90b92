"""ObjectStore on a local directory and on a real S3 endpoint (moto): same tests, both backends."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from modelpool.cluster import object_store as object_store_mod
from modelpool.cluster.object_store import ObjectNotFound, ObjectStore, check_key, object_store_from_settings

BAD_KEYS = [
    "", "/abs", "../up", "a/../../up", "a/..", "./a", "a/./b", "a/.", "a//b", "a/", "a\\..\\b",
    "a\x00b", ".tmp-0123456789abcdef0123456789abcdef-x",
]


# ------------------------------------------------------------------------------ uris and keys


def test_local_uri_forms_are_normalized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a dir" / "store"
    plain = ObjectStore(str(target))
    assert target.is_dir()  # created when missing
    assert plain.uri == target.as_uri() and plain.root == target.as_posix()
    assert ObjectStore(plain.uri).root == plain.root  # the normalized URI round-trips
    assert ObjectStore(plain.uri + "/").root == plain.root
    monkeypatch.chdir(tmp_path)
    assert ObjectStore("rel").root == (tmp_path / "rel").as_posix()
    assert isinstance(plain.filesystem, pafs.LocalFileSystem)


def test_s3_uri_is_normalized_without_connecting() -> None:
    store = ObjectStore("s3://bucket/some/prefix/", s3_endpoint="http://127.0.0.1:1", s3_region="eu-west-1")
    assert store.uri == "s3://bucket/some/prefix"
    assert store.path("k/v.json") == "bucket/some/prefix/k/v.json"
    assert isinstance(store.filesystem, pafs.S3FileSystem)
    assert store.filesystem.region == "eu-west-1"
    assert ObjectStore("s3://bucket").path("k") == "bucket/k"


@pytest.mark.parametrize("uri", ["", "http://x/y", "s3://", "s3:///prefix", "s3://b/../x",
                                 "file://host/dir"])
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        ObjectStore(uri)


def test_bad_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        ObjectStore("s3://b/p", s3_endpoint="http://host:1/some/path")


def test_factory_treats_empty_settings_as_unset(tmp_path: Path) -> None:
    store = object_store_from_settings(str(tmp_path), "", "")
    assert store.root == tmp_path.as_posix()


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_refuses_escapes(key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        check_key(key)


def test_every_method_refuses_bad_keys(object_store: ObjectStore, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(b"x")
    calls = {
        "path": lambda k: object_store.path(k),
        "read_bytes": lambda k: object_store.read_bytes(k),
        "write_bytes": lambda k: object_store.write_bytes(k, b"x"),
        "read_json": lambda k: object_store.read_json(k),
        "write_json": lambda k: object_store.write_json(k, 1),
        "exists": lambda k: object_store.exists(k),
        "delete": lambda k: object_store.delete(k),
        "delete_prefix": lambda k: object_store.delete_prefix(k),
        "open_input": lambda k: object_store.open_input(k),
        "open_output": lambda k: object_store.open_output(k),
        "upload_file": lambda k: object_store.upload_file(local, k),
        "download_file": lambda k: object_store.download_file(k, tmp_path / "out"),
    }
    for name, call in calls.items():
        for key in BAD_KEYS:
            with pytest.raises(ValueError, match="invalid object key") as info:
                call(key)
            assert repr(key) in str(info.value), (name, key)
    for key in BAD_KEYS[1:]:  # "" is the root for listings
        with pytest.raises(ValueError):
            object_store.list(key)
        with pytest.raises(ValueError):
            object_store.list_children(key)
    assert object_store.list() == []  # nothing was written anywhere
    if not object_store.is_s3:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["local.bin", "store"]


# ---------------------------------------------------------------------------- bytes and json


def test_bytes_round_trip_and_overwrite(object_store: ObjectStore) -> None:
    object_store.write_bytes("a/b/c.bin", b"\x00\x01binary\xff")
    assert object_store.read_bytes("a/b/c.bin") == b"\x00\x01binary\xff"
    object_store.write_bytes("a/b/c.bin", b"")
    assert object_store.read_bytes("a/b/c.bin") == b""
    object_store.write_bytes("a/b/c.bin", b"new")
    assert object_store.read_bytes("a/b/c.bin") == b"new"


def test_compression_is_never_guessed_from_the_name(object_store: ObjectStore) -> None:
    object_store.write_bytes("x.gz", b"not gzip")
    assert object_store.read_bytes("x.gz") == b"not gzip"


def test_json_round_trip_and_failed_serialization_keeps_old(object_store: ObjectStore) -> None:
    value = {"name": "toy", "n": [1, 2.5, None], "unicode": "héllo"}
    object_store.write_json("r/toy.json", value)
    assert object_store.read_json("r/toy.json") == value
    with pytest.raises(TypeError):
        object_store.write_json("r/toy.json", {"bad": object()})
    assert object_store.read_json("r/toy.json") == value


def test_missing_objects_raise_object_not_found(object_store: ObjectStore, tmp_path: Path) -> None:
    object_store.write_bytes("dir/file", b"x")
    for key in ["nope", "dir/nope", "dir", "dir/file/below"]:
        with pytest.raises(ObjectNotFound) as info:
            object_store.read_bytes(key)
        assert info.value.key == key and isinstance(info.value, KeyError)
        with pytest.raises(ObjectNotFound):
            object_store.read_json(key)
        with pytest.raises(ObjectNotFound):
            object_store.open_input(key)
        with pytest.raises(ObjectNotFound):
            object_store.download_file(key, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_exists_delete_and_delete_prefix(object_store: ObjectStore) -> None:
    for key in ["a/b/1", "a/b/2", "a/bc/3", "a/x", "z"]:
        object_store.write_bytes(key, b"x")
    assert object_store.exists("a/b/1") and not object_store.exists("a/b") and not object_store.exists("q")
    object_store.delete("a/b/1")
    object_store.delete("a/b/1")  # missing is fine
    assert not object_store.exists("a/b/1")
    object_store.delete_prefix("a/b")  # not "a/bc": prefixes are whole segments
    assert object_store.list() == ["a/bc/3", "a/x", "z"]
    object_store.delete_prefix("a/x")  # an object is deleted too
    object_store.delete_prefix("missing/prefix")
    assert object_store.list() == ["a/bc/3", "z"]


# --------------------------------------------------------------------------------- listings


def test_list_is_recursive_sorted_and_relative(object_store: ObjectStore) -> None:
    for key in ["b/2", "b/10", "a", "b/c/d/e.json", "bz"]:
        object_store.write_bytes(key, b"x")
    assert object_store.list() == ["a", "b/10", "b/2", "b/c/d/e.json", "bz"]
    assert object_store.list("b") == ["b/10", "b/2", "b/c/d/e.json"]
    assert object_store.list("b/c") == ["b/c/d/e.json"]
    assert object_store.list("missing") == []
    assert object_store.list("a") == []  # an object is not a directory


def test_list_children_only_shows_non_empty_directories(object_store: ObjectStore) -> None:
    for key in ["m/one/1.json", "m/one/2.json", "m/two/1.json", "m/file"]:
        object_store.write_bytes(key, b"x")
    assert object_store.list_children("m") == ["file", "one", "two"]
    assert object_store.list_children("") == ["m"]
    object_store.delete("m/two/1.json")  # leaves an empty dir locally / a marker on S3
    assert object_store.list_children("m") == ["file", "one"]
    assert object_store.list_children("missing") == []


def test_leftover_temp_objects_are_never_listed(object_store: ObjectStore) -> None:
    object_store.write_bytes("d/real", b"x")
    temp = f"{object_store.root}/d/.tmp-{'a' * 32}-real"
    with object_store.filesystem.open_output_stream(temp) as out:  # as a crashed writer leaves it
        out.write(b"half")
    assert object_store.list() == ["d/real"]
    assert object_store.list_children("d") == ["real"]


# ---------------------------------------------------------------------------------- streams


def test_streams_work_with_pyarrow_parquet(object_store: ObjectStore) -> None:
    table = pa.table({"x": list(range(100)), "y": [str(i) for i in range(100)]})
    with object_store.open_output("results/part-0.parquet") as out:
        pq.write_table(table, out)
    with object_store.open_input("results/part-0.parquet") as source:
        assert pq.read_table(source).equals(table)
    pq.write_table(table, object_store.path("results/part-1.parquet"), filesystem=object_store.filesystem)
    assert pq.read_table(object_store.path("results"), filesystem=object_store.filesystem).num_rows == 200


def test_failed_stream_write_leaves_the_old_object(object_store: ObjectStore) -> None:
    object_store.write_bytes("k", b"old")
    with pytest.raises(RuntimeError):
        with object_store.open_output("k") as out:
            out.write(b"partial new")
            raise RuntimeError("writer died")
    assert object_store.read_bytes("k") == b"old"
    with pytest.raises(RuntimeError):
        with object_store.open_output("fresh") as out:
            out.write(b"partial")
            raise RuntimeError("writer died")
    assert object_store.list() == ["k"]


def test_stream_object_appears_only_on_close(object_store: ObjectStore) -> None:
    out = object_store.open_output("s/obj")
    out.write(b"part one, ")
    assert not object_store.exists("s/obj")
    out.write(b"part two")
    out.close()
    assert out.closed and object_store.read_bytes("s/obj") == b"part one, part two"


def test_upload_and_download_stream_in_chunks(object_store: ObjectStore, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_store_mod, "_CHUNK", 64 * 1024)
    data = os.urandom(1024 * 1024 + 17)
    source = tmp_path / "model.zip"
    source.write_bytes(data)
    object_store.upload_file(source, "archives/model.zip")
    assert object_store.read_bytes("archives/model.zip") == data
    target = tmp_path / "new" / "dir" / "copy.zip"
    object_store.download_file("archives/model.zip", target)
    assert target.read_bytes() == data
    object_store.write_bytes("archives/model.zip", b"replaced")
    object_store.download_file("archives/model.zip", target)  # replaces the local file
    assert target.read_bytes() == b"replaced"
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.zip"]  # no temp left


def test_store_pickles_for_ray(object_store: ObjectStore) -> None:
    object_store.write_bytes("p", b"shipped")
    clone = pickle.loads(pickle.dumps(object_store))
    assert clone.uri == object_store.uri and clone.read_bytes("p") == b"shipped"


# ------------------------------------------------------------------------------ concurrency


def _value(writer: int, seq: int) -> dict:
    """Distinct and of varying size, so a torn read can be neither valid JSON nor a known value."""
    repeats = 2000 + 397 * ((writer * 50 + seq) % 23)
    return {"writer": writer, "seq": seq, "pad": f"{writer}-{seq}-" * repeats}


def test_concurrent_overwrites_are_never_torn(object_store: ObjectStore) -> None:
    writers, writes = 8, 50
    object_store.write_json("hot.json", _value(-1, 0))
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for seq in range(writes):
                object_store.write_json("hot.json", _value(writer, seq))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    reads = 0
    while any(thread.is_alive() for thread in threads) or reads < 5:
        value = json.loads(object_store.read_bytes("hot.json"))  # must always parse
        assert value == _value(value["writer"], value["seq"])
        reads += 1
    for thread in threads:
        thread.join()
    assert not errors, errors
    final = object_store.read_json("hot.json")
    assert final["seq"] == writes - 1 and final == _value(final["writer"], final["seq"])
    assert object_store.list() == ["hot.json"]  # no temp objects left behind


# ------------------------------------------------------------------- S3 read verification logic


@pytest.fixture
def s3_store(s3_server) -> ObjectStore:
    uri = f"s3://{s3_server.bucket}/v-{os.urandom(8).hex()}"
    return ObjectStore(uri, s3_endpoint=s3_server.endpoint)


def _fake_reads(monkeypatch: pytest.MonkeyPatch, forge) -> list[int]:
    """Replace what one read pass saw with ``forge(call_number, real_bytes)``; returns the calls."""
    real = ObjectStore._copy_once
    calls: list[int] = []

    def copy_once(self, key, path, sink):
        meta, nbytes, _ = real(self, key, path, sink)
        calls.append(1)
        data = forge(len(calls), sink.getvalue())
        sink.seek(0)
        sink.truncate()
        sink.write(data)
        return meta, len(data), hashlib.md5(data).hexdigest()

    monkeypatch.setattr(ObjectStore, "_copy_once", copy_once)
    return calls


def test_s3_torn_read_is_retried(s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_store.write_bytes("k", b"0123456789")
    assert s3_store._md5_etags  # learned from the first write
    calls = _fake_reads(monkeypatch, lambda n, data: b"01234\x00\x00\x00\x00\x00" if n == 1 else data)
    assert s3_store.read_bytes("k") == b"0123456789" and len(calls) == 2


def test_s3_non_md5_etags_are_trusted_when_stable(s3_store: ObjectStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """SSE-KMS ETags are not MD5s: stable identical reads are accepted, unless MD5s were proven."""
    s3_store.write_bytes("k", b"payload")
    s3_store._md5_etags = False  # as on a KMS bucket, where no ETag ever matches
    calls = _fake_reads(monkeypatch, lambda n, data: data.upper())  # never the ETag's MD5
    assert s3_store.read_bytes("k") == b"PAYLOAD" and len(calls) == 3
    s3_store._md5_etags = True  # proven MD5 ETags: a mismatch can only be a torn read
    monkeypatch.setattr(object_store_mod, "_READ_RETRY_S", 0.3)
    with pytest.raises(OSError, match="changed during every read"):
        s3_store.read_bytes("k")
