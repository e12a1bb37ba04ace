"""Blobs on object storage (issue 16): the fsspec path against a real S3-compatible server.

moto's server mode runs as its own process on 127.0.0.1 (a free port); s3fs talks HTTP to it exactly as
to S3. Checked: integrity on every read and repair on put, gc (with another process writing), and two
processes writing the same content.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import subprocess
import sys
import time
import uuid

import pytest

from memory.api import ParametricMemory
from memory.errors import IntegrityError, NotFoundError
from memory.storage import BlobStore, sha256_hex

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"moto server did not start: {proc.poll()}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=15)
    log.close()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; credentials and endpoint through the standard AWS variables (inherited by children)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    name = f"pmem-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}/blobs"


def test_s3_blobs_roundtrip_integrity_and_repair(bucket):
    store = BlobStore(bucket)
    data = b"adapter bytes \x00\xff" * 1000
    name = store.put(data)
    assert name == sha256_hex(data) and store.get(name) == data and store.exists(name)
    assert store.size(name) == len(data) and list(store) == [name]
    assert store.put(data) == name and list(store) == [name]  # idempotent
    other = BlobStore(bucket)  # a second handle (another process would be the same)
    other._fs.pipe_file(other._path(name), b"tampered")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get(name)
    assert store.put(data) == name and store.get(name) == data  # re-putting repairs it
    with pytest.raises(NotFoundError):
        store.get("0" * 64)
    assert store.delete(name) and not store.exists(name) and not store.delete(name)
    with pytest.raises(NotFoundError):
        other.get(name)  # no stale listing cache in the other handle


def test_s3_memory_add_delete_gc_and_temporaries(bucket, tmp_path):
    mem = ParametricMemory(home=tmp_path / "h", blob_url=bucket)
    text = "Refunds are accepted within 30 days."
    sha = mem.add(text, document_id="policy").document.version.content_sha256
    assert mem.get("policy", with_text=True).text == text
    orphan = mem.blobs.put(b"left behind by a crashed writer")
    crashed = f"{mem.blobs._path(orphan)}.tmp-{uuid.uuid4().hex}"
    mem.blobs._fs.pipe_file(crashed, b"partial")
    assert mem.gc(dry_run=True) == [orphan]
    assert mem.gc() == [orphan] and mem.blobs.exists(sha) and mem.blobs._fs.exists(crashed)  # fresh: kept
    mem.blobs.sweep_temporaries(grace_s=-60)  # once it is older than the grace period, it goes
    mem.blobs._fs.invalidate_cache()
    assert not mem.blobs._fs.exists(crashed)
    assert mem.delete("policy").blobs_removed == 1 and list(mem.blobs) == []


def _writer(settings, text: str, doc_id: str, rounds: int, out) -> None:
    mem = ParametricMemory(settings)
    try:
        for i in range(rounds):
            mem.add(text, document_id=doc_id)
            if i % 3 == 2:
                mem.delete(doc_id)
        mem.add(text, document_id=doc_id)
        out.put(("ok", doc_id))
    except BaseException as e:  # noqa: BLE001
        out.put(("error", f"{doc_id}: {type(e).__name__}: {e}"))


def _collector(settings, seconds: float, out) -> None:
    mem = ParametricMemory(settings)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        mem.gc()
        n += 1
    out.put(("gc", n))


def test_two_processes_write_the_same_content_while_a_third_collects(bucket, backend_settings):
    settings = backend_settings.with_(blob_url=bucket)
    text = "Both processes store exactly these bytes: the badge office opens at nine."
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(settings, text, f"copy{i}", 9, out)) for i in range(2)]
    procs.append(ctx.Process(target=_collector, args=(settings, 15.0, out)))
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert not [r for r in results if r[0] == "error"], results
    mem = ParametricMemory(settings)
    assert sorted(d.id for d in mem.list()) == ["copy0", "copy1"]
    for d in ("copy0", "copy1"):
        assert mem.get(d, with_text=True).text == text
    assert list(mem.blobs) == [sha256_hex(text.encode())]
    assert mem.gc(dry_run=True) == []
