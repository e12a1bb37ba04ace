"""Issue 14.6 and the Redis fault test: internalizations are never lost to a broker blip or restart.

A private ``redis-server`` per test (never the shared one on 6379), real Celery worker processes, the
real Job table on SQLite; only the internalization's compute is the stub of ``_fixtures_workers``.
"""

from __future__ import annotations

import time
import uuid

import pytest
from _fixtures_workers import (
    RedisServer,
    WorkerProcess,
    markers,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.services

STUB = "_fixtures_workers:stub_internalize"
FLAKY = "_fixtures_workers:flaky_internalize"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def cluster(redis_server, tmp_path, monkeypatch):
    """A home on SQLite, a private Redis, and the workers the test starts (stopped afterwards)."""
    home = tmp_path / "pmem-home"
    prefix = f"pmem-rel-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setenv("PMEM_BROKER_URL", redis_server.url)
    monkeypatch.setenv("PMEM_BROKER_KEYPREFIX", prefix)
    workers: list[WorkerProcess] = []

    class Cluster:
        redis = redis_server

        def worker(self, **extra: str) -> WorkerProcess:
            env = worker_env(home, redis_server.url, prefix, **extra)
            w = WorkerProcess(env, tmp_path / f"worker{len(workers)}.log")
            workers.append(w)
            return w

        def memory(self):
            from memory.api import ParametricMemory

            return ParametricMemory(home=home, broker_url=redis_server.url)

    yield Cluster()
    for w in workers:
        w.stop()


def _ready_documents(mem) -> set[str]:
    return {a.document_id for a in mem.adapters(status="ready")}


def test_a_broker_blip_while_ingest_publishes_is_resent_by_the_retried_ingest(cluster, tmp_path):
    """The child job whose publish failed is failed 'could not publish'; the ingest's retry sends it."""
    from memory.jobs import JobStore, classify
    from workers.tasks import UNPUBLISHED, run_body, submit_ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Refunds are paid within 14 days.\n")
    mem = cluster.memory()
    store = JobStore.for_memory(mem)
    ingest = submit_ingest(mem, str(docs), internalize=True)  # queued in Redis; run here instead of a worker
    cluster.redis.stop()  # the blip
    with pytest.raises(Exception) as blip:  # noqa: PT011 - any type: classify() decides below
        run_body(mem, store.get(ingest.id))
    assert classify(blip.value) == "transient"  # so the ingest job itself is retried
    [child] = store.list(kind="internalize")
    assert child.state == "failed" and child.error.startswith(UNPUBLISHED)

    cluster.redis.start()  # the broker is back; the ingest job's retry runs its body again
    result, _ = run_body(mem, store.get(ingest.id))
    assert result["unchanged"] and result["internalize_jobs"] == [child.id]
    assert store.get(child.id).state == "queued"
    cluster.worker(PMEM_WORKER_INTERNALIZER=STUB, PMEM_TEST_SLEEP_S="0").wait_ready()
    wait_for(lambda: store.get(child.id).state == "succeeded", 60, "the re-sent internalization")
    assert _ready_documents(mem) == {"a.txt"}


def test_redis_restart_with_internalizations_queued_running_and_retrying(cluster, tmp_path):
    """Fault test: one job retrying (its countdown held by the worker), one running, the rest queued, then
    the worker dies and Redis restarts empty. ``resubmit_stale`` sends every unfinished job again, and
    every document ends with a ready adapter, once."""
    from memory.jobs import JobStore
    from memory.refresh import version_id_for
    from workers.tasks import resubmit_stale, submit_internalize

    mem = cluster.memory()
    store = JobStore.for_memory(mem)
    names = [f"doc{i}" for i in range(4)]
    for i, name in enumerate(names):
        mem.add(f"Fact number {i}: locker {i} opens with code {1000 + i}.", document_id=name)
    marks = tmp_path / "marks"
    first = cluster.worker(
        PMEM_WORKER_INTERNALIZER=FLAKY, PMEM_TEST_SLEEP_S="600", PMEM_RETRY_BASE_S="60", PMEM_TEST_MARKERS=str(marks)
    ).wait_ready()
    jobs = [submit_internalize(mem, version_id_for(mem, "default", n, 1)) for n in names]

    def states() -> list[str]:
        return [store.get(j.id).state for j in jobs]

    wait_for(
        lambda: "retrying" in states() and "running" in states() and markers(marks),
        90,
        "one job retrying and one running",
    )
    first.kill()
    cluster.redis.restart()  # queued, unacknowledged and scheduled messages: all gone
    assert sorted(states()) == ["queued", "queued", "retrying", "running"]

    cluster.worker(PMEM_WORKER_INTERNALIZER=STUB, PMEM_TEST_SLEEP_S="0").wait_ready()
    time.sleep(2.0)
    assert _ready_documents(mem) == set()  # nothing left in the broker: nothing runs by itself
    sent = resubmit_stale(mem, 1.0)
    assert sorted(j.id for j in sent) == sorted(j.id for j in jobs)
    wait_for(lambda: set(states()) == {"succeeded"}, 120, f"every job to succeed ({states()})")
    assert _ready_documents(mem) == set(names)
    assert len(mem.adapters()) == len(names)  # one adapter per document: the re-sent jobs did not duplicate
    assert mem.gc(dry_run=True) == []


def test_worker_ingests_only_under_its_allowed_roots(cluster, tmp_path):
    import os

    from memory.jobs import JobStore
    from workers.tasks import submit_ingest

    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "a.txt").write_text("Visitors park on level two.\n")
    (secret / "key.txt").write_text("The signing key is 0xDEADBEEF.\n")
    os.symlink(secret, allowed / "escape")
    mem = cluster.memory()
    store = JobStore.for_memory(mem)
    cluster.worker(PMEM_WORKER_INTERNALIZER=STUB, PMEM_TEST_SLEEP_S="0", PMEM_INGEST_ROOTS=str(allowed)).wait_ready()
    jobs = {
        spec: submit_ingest(mem, spec, internalize=False)
        for spec in (str(allowed), str(secret / "key.txt"), str(allowed / "escape"), str(allowed / ".." / "secret"))
    }

    def done():
        return all(store.get(j.id).state in ("succeeded", "failed") for j in jobs.values())

    wait_for(done, 90, "the ingest jobs")
    states = {spec: (store.get(j.id).state, store.get(j.id).error or "") for spec, j in jobs.items()}
    assert states[str(allowed)][0] == "succeeded"
    for spec in list(jobs)[1:]:
        assert states[spec][0] == "failed" and "outside" in states[spec][1], states
    assert [d.id for d in mem.list()] == ["a.txt"]
