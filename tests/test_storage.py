"""The content-addressed blob store: integrity on every read, atomic writes, sweeping."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memory.errors import IntegrityError, NotFoundError, ValidationError
from memory.storage import TEMP_GRACE_S, BlobStore, sha256_hex


@pytest.fixture(params=["local", "fsspec-memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield BlobStore(tmp_path / "blobs")
        return
    import fsspec

    url = f"memory://pmem-test-{tmp_path.name}"
    yield BlobStore(url)
    fs = fsspec.filesystem("memory")
    if fs.exists(url.removeprefix("memory://")):
        fs.rm(url.removeprefix("memory://"), recursive=True)


def test_put_get_roundtrip_and_name_is_sha256(store):
    data = b"\x00\x01 adapter bytes \xff" * 100
    name = store.put(data)
    assert name == sha256_hex(data)
    assert store.get(name) == data
    assert store.exists(name)
    assert store.size(name) == len(data)
    assert store.put(data) == name  # idempotent
    assert list(store) == [name]


def test_missing_blob_is_not_found(store):
    with pytest.raises(NotFoundError, match="missing"):
        store.get("0" * 64)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "a" * 63, "g" * 64, "", "a" * 64 + "/"])
def test_invalid_names_are_refused_before_touching_disk(store, bad):
    with pytest.raises(ValidationError, match="invalid blob name"):
        store.get(bad)
    with pytest.raises(ValidationError):
        store.delete(bad)


def test_tampered_and_truncated_blobs_are_refused(tmp_path):
    store = BlobStore(tmp_path / "b")
    name = store.put(b"A" * 1000)
    path = next((tmp_path / "b").glob(f"??/??/{name}"))
    path.write_bytes(b"A" * 999 + b"B")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get(name)
    path.write_bytes(b"A" * 500)
    with pytest.raises(IntegrityError, match="truncated"):
        store.get(name)


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "b")
    import os

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"payload")
    assert [p for p in (tmp_path / "b").rglob("*") if p.is_file()] == []


def test_sweep_removes_only_unreferenced(store):
    keep = store.put(b"keep me")
    drop = store.put(b"drop me")
    assert store.sweep([keep], dry_run=True) == [drop]
    assert store.exists(drop)
    assert store.sweep([keep]) == [drop]
    assert store.exists(keep) and not store.exists(drop)


def test_sweep_removes_stale_temporary_files_but_not_a_write_in_flight(tmp_path):
    import os

    store = BlobStore(tmp_path / "b")
    name = store.put(b"x")
    stale = Path(tmp_path / "b" / name[:2] / name[2:4] / ".tmp-crashed")
    stale.write_bytes(b"partial")
    old = time.time() - 2 * TEMP_GRACE_S
    os.utime(stale, (old, old))
    fresh = Path(tmp_path / "b" / name[:2] / name[2:4] / ".tmp-writing")
    fresh.write_bytes(b"being written by another process")
    store.sweep([name])
    assert not stale.exists() and store.exists(name)
    assert fresh.exists()  # another writer renames it in a moment


def test_put_repairs_a_corrupt_copy(store):
    name = store.put(b"intact bytes")
    path = store._path(name)
    if store._local is not None:
        Path(path).write_bytes(b"damaged")
    else:
        store._fs.pipe_file(path, b"damaged")
    with pytest.raises(IntegrityError):
        store.get(name)
    assert store.put(b"intact bytes") == name
    assert store.get(name) == b"intact bytes"


def test_put_syncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    import os

    store = BlobStore(tmp_path / "b")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    name = store.put(b"durable")
    assert str(Path(store._path(name)).parent) in synced


def test_rejects_non_bytes(store):
    with pytest.raises(ValidationError):
        store.put("text")  # type: ignore[arg-type]
