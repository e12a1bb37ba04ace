"""The Job table: idempotent creation, state transitions under the optimistic counter, inline runs with retries."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import exc as sa_exc

from memory.errors import IngestError, NotFoundError, ValidationError
from memory.jobs import JobStore, TransientJobError, backoff_seconds, classify, execute, run_inline


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> JobStore:
    if request.param == "sqlite":
        return JobStore.for_url(f"sqlite:///{tmp_path / 'jobs.db'}")
    from memory.db import migrate

    url = request.getfixturevalue("pg_url")
    migrate.upgrade(url)
    return JobStore.for_url(url)


def test_create_is_idempotent_by_key(store):
    a, created_a = store.create("internalize", {"version_id": 1}, namespace="hr", idempotency_key="k1")
    b, created_b = store.create("internalize", {"version_id": 1}, namespace="hr", idempotency_key="k1")
    c, created_c = store.create("internalize", {"version_id": 2}, namespace="hr", idempotency_key="k2")
    assert (created_a, created_b, created_c) == (True, False, True)
    assert a.id == b.id != c.id
    assert a.state == "queued" and a.attempts == 0
    # jobs without a key are never merged
    d, _ = store.create("refresh", {})
    e, _ = store.create("refresh", {})
    assert d.id != e.id


def test_concurrent_creates_with_one_key_give_one_job(store):
    ids, errors = [], []

    def make() -> None:
        try:
            ids.append(store.create("internalize", {"v": 1}, idempotency_key="same")[0].id)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 1 and len(ids) == 6
    assert len(store.list(kind="internalize")) == 1


def test_rejects_unknown_kind_and_state(store):
    with pytest.raises(ValidationError, match="unknown job kind"):
        store.create("bake", {})
    with pytest.raises(ValidationError, match="unknown job state"):
        store.list(state="sleeping")
    with pytest.raises(NotFoundError):
        store.get(12345)


def test_transitions_and_redelivery(store):
    job, _ = store.create("internalize", {"version_id": 1}, idempotency_key="k")
    running = store.start(job.id, celery_id="c1")
    assert running.state == "running" and running.attempts == 1 and running.started_at is not None
    # the worker died; the message is redelivered: the job starts again and counts the attempt
    again = store.start(job.id, celery_id="c1")
    assert again.state == "running" and again.attempts == 2
    done = store.succeed(job.id, {"adapter_id": 9})
    assert done.state == "succeeded" and done.result == {"adapter_id": 9} and done.finished_at is not None
    # a late duplicate neither restarts nor overwrites a finished job
    assert store.start(job.id).state == "succeeded"
    assert store.succeed(job.id, {"adapter_id": 10}).result == {"adapter_id": 9}
    assert store.fail(job.id, "late").state == "succeeded"


def test_failed_job_can_be_requeued(store):
    job, _ = store.create("ingest", {"spec": "x"})
    store.start(job.id)
    failed = store.fail(job.id, "IngestError: x: no such file")
    assert failed.state == "failed" and "no such file" in failed.error
    again = store.requeue(job.id)
    assert again.state == "queued" and again.attempts == 1
    # requeue leaves non-failed jobs alone
    store.start(job.id)
    store.succeed(job.id, {})
    assert store.requeue(job.id).state == "succeeded"


def test_optimistic_counter_bumps_on_every_write(store):
    from memory.db import Job

    job, _ = store.create("refresh", {})
    sessions = store._sessions
    with sessions() as s:
        v0 = s.get(Job, job.id).row_version
    store.start(job.id)
    store.succeed(job.id, {})
    with sessions() as s:
        assert s.get(Job, job.id).row_version == v0 + 2


def test_stale_writer_loses_and_rereads(store):
    """Two sessions hold the same row; the second writer's stale UPDATE fails instead of overwriting."""
    from sqlalchemy.orm.exc import StaleDataError

    from memory.db import Job, JobState

    job, _ = store.create("refresh", {})
    s1, s2 = store._sessions(), store._sessions()
    try:
        # Read in two transactions (SQLite takes its write lock at BEGIN, so end each read with a commit).
        r1 = s1.get(Job, job.id)
        s1.commit()
        r2 = s2.get(Job, job.id)
        s2.commit()
        assert r1.row_version == r2.row_version
        r1.state = JobState.running
        s1.commit()
        r2.state = JobState.failed
        with pytest.raises(StaleDataError):
            s2.commit()
    finally:
        s1.close()
        s2.close()
    assert store.get(job.id).state == "running"


def test_classify_and_backoff():
    assert classify(sa_exc.OperationalError("SELECT 1", {}, Exception("database is locked"))) == "transient"
    assert classify(ConnectionRefusedError()) == "transient"
    assert classify(ValidationError("empty")) == "permanent"
    assert classify(IngestError("bad pdf")) == "permanent"
    assert classify(RuntimeError("boom")) == "permanent"
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert classify(KombuOperationalError("broker down")) == "transient"
    assert classify(RedisConnectionError("reset")) == "transient"
    delays = [backoff_seconds(i, base=1.0, cap=8.0, jitter=False) for i in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for i in range(5):
        d = backoff_seconds(i, base=1.0, cap=100.0)
        assert 2**i / 2 <= d <= 2**i


def test_execute_records_permanent_failure_once(store):
    job, _ = store.create("ingest", {})
    calls = []

    def body(j):
        calls.append(j.attempts)
        raise IngestError("report.pdf: the PDF is corrupt (no trailer)")

    out = run_inline(store, job.id, body, max_retries=3, base_delay=0.001)
    assert out.state == "failed" and out.attempts == 1 and calls == [1]
    assert out.error == "IngestError: report.pdf: the PDF is corrupt (no trailer)"


def test_run_inline_retries_transient_faults_with_backoff(store):
    job, _ = store.create("internalize", {})
    seen = []

    def body(j):
        seen.append(store.get(j.id).state)
        if len(seen) < 3:
            raise sa_exc.OperationalError("UPDATE", {}, Exception("database is locked"))
        return {"adapter_id": 1}

    out = run_inline(store, job.id, body, max_retries=3, base_delay=0.001)
    assert out.state == "succeeded" and out.attempts == 3 and out.result["adapter_id"] == 1
    assert seen == ["running", "running", "running"] and out.result["seconds"] >= 0


def test_retries_are_bounded(store):
    job, _ = store.create("internalize", {})

    def body(j):
        raise ConnectionResetError("broker went away")

    out = run_inline(store, job.id, body, max_retries=2, base_delay=0.001)
    assert out.state == "failed" and out.attempts == 3
    assert "gave up after 3 attempts" in out.error


def test_execute_marks_retrying_and_raises(store):
    job, _ = store.create("internalize", {})
    with pytest.raises(TransientJobError):
        execute(store, job.id, lambda j: (_ for _ in ()).throw(TimeoutError("slow")), last_attempt=False)
    j = store.get(job.id)
    assert j.state == "retrying" and j.error == "TimeoutError: slow"


def test_partial_failure_keeps_result_and_error(store):
    job, _ = store.create("ingest", {})
    out = execute(store, job.id, lambda j: ({"files": 3}, "empty.txt: the file is empty"))
    assert out.state == "succeeded" and out.result["files"] == 3 and "empty.txt" in out.error


def test_list_filters(store):
    a, _ = store.create("ingest", {}, namespace="hr")
    b, _ = store.create("internalize", {}, namespace="legal")
    store.start(b.id)
    assert [j.id for j in store.list()] == [b.id, a.id]
    assert [j.id for j in store.list(namespace="hr")] == [a.id]
    assert [j.id for j in store.list(state="running")] == [b.id]
    assert [j.id for j in store.list(kind="ingest")] == [a.id]
    assert store.list(limit=1)[0].id == b.id
