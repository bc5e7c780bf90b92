"""A batch job keeps its model's archive in object storage until it ends, even if the model is unregistered.

On both backends (local directory and S3): the archive outlives an unregister while a job holds it, is
deleted by the last job to end, and is deleted at once when no job holds it.
"""
from __future__ import annotations

from modelpool.management import archive_leases as leases

SOURCE = "objects://models/iris/1/abcd-iris-1.zip"
KEY = "models/iris/1/abcd-iris-1.zip"


def test_unregister_keeps_a_held_archive_and_the_last_job_to_end_deletes_it(object_store):
    object_store.write_bytes(KEY, b"archive")
    leases.take(object_store, SOURCE, "job1")
    leases.take(object_store, SOURCE, "job2")
    assert leases.holders(object_store, SOURCE) == ["job1", "job2"]

    assert leases.delete_archive_unless_held(object_store, SOURCE) == ["job1", "job2"]  # the unregister
    assert object_store.exists(KEY)

    leases.release(object_store, SOURCE, "job1", still_registered=lambda: False)
    assert object_store.exists(KEY), "job2 still scores with it"
    leases.release(object_store, SOURCE, "job2", still_registered=lambda: False)
    assert not object_store.exists(KEY)
    assert leases.holders(object_store, SOURCE) == []


def test_a_job_ending_leaves_the_archive_of_a_registered_model(object_store):
    object_store.write_bytes(KEY, b"archive")
    leases.take(object_store, SOURCE, "job1")
    leases.release(object_store, SOURCE, "job1", still_registered=lambda: True)
    leases.release(object_store, SOURCE, "job1", still_registered=lambda: True)  # twice: harmless
    assert object_store.exists(KEY)
    assert leases.holders(object_store, SOURCE) == []


def test_an_archive_no_job_holds_is_deleted_at_unregister(object_store):
    object_store.write_bytes(KEY, b"archive")
    leases.take(object_store, "objects://models/other/1/ef-other-1.zip", "job1")  # another model's lease
    assert leases.delete_archive_unless_held(object_store, SOURCE) == []
    assert not object_store.exists(KEY)


def test_local_paths_are_never_leased_or_deleted(tmp_path, object_store):
    archive = tmp_path / "iris-1.zip"
    archive.write_bytes(b"archive")
    leases.take(object_store, str(archive), "job1")
    assert leases.holders(object_store, str(archive)) == []
    assert leases.delete_archive_unless_held(object_store, str(archive)) == []
    leases.release(object_store, str(archive), "job1", still_registered=lambda: False)
    assert archive.exists()
